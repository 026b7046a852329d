"""The only package that imports islpy. It speaks dimension *names*, never positions.

Everything polyhedral the rest of polydl needs goes through here: parsing the IR's isl texts
(domains, schedules) into isl objects with the kernel's size parameters fixed, access relations,
sample points and extents, dataflow (``compute_flow``), lexicographic checks in schedule space,
and the isl AST of a schedule, returned as the plain loop tree of ``ir/loops.py``.

isl contexts are not thread-safe: callers compile under one lock (``pd.compile`` does).

By isl concept: ``_base`` (isl types, texts, the kernel's context, names), ``sets`` (domains,
extents, boxes, set algebra), ``schedules`` (dimensions, padding, placing, piecewise, coalesced
dimensions), ``relations`` (accesses, images, footprints, writers), ``dataflow`` (dependences,
lexicographic checks), ``tree`` (the AST as a loop tree). Callers use ``poly.<name>``."""

from ._base import (  # noqa: F401
    _IN,
    _OUT,
    _PARAM,
    _SET,
    Map,
    Set,
    UnionMap,
    UnionSet,
    context,
    fix_names,
    iexpr,
    is_empty,
    isl_iexpr,
    map_text_info,
    names,
    params_text,
    set_text_info,
    simplify_set_text,
    to_text,
    tuple_name,
    union,
    union_set,
)
from .dataflow import (  # noqa: F401
    carried_dims,
    flow,
    in_schedule_space,
    keeps_equal,
    maps,
    not_after,
    order_violations,
    squeeze,
)
from .relations import (  # noqa: F401
    access,
    access_map,
    footprint_size,
    image,
    in_bounds,
    in_bounds_on,
    is_projection,
    output_dims,
    outside,
    range_extent,
    sample_pair,
    writers,
)
from .schedules import (  # noqa: F401
    dim_iterator,
    embed_schedule,
    fuse_dims,
    map_ndim,
    nested_schedule,
    pad_schedule,
    piecewise_schedule,
    placed_schedule,
    row_block_schedule,
    schedule,
    schedule_dim_extent,
    schedule_from_text,
    schedule_ndim,
    shared_schedule,
    top_position,
    with_constants,
)
from .sets import (  # noqa: F401
    _pw_aff_const,
    box_set,
    box_size,
    count,
    coupled,
    domain,
    domain_text,
    extent,
    extents,
    full_slices,
    is_box,
    is_disjoint,
    is_equal,
    named_text,
    project_onto,
    restrict,
    sample,
    subtract,
    tensor_box,
    unite,
)
from .tree import (  # noqa: F401
    _nodes,
    ast,
)
