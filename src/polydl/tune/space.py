"""The tuning space: the knobs a kernel's schedule record opens up, with legal ranges.

Every point of the space is a :class:`~polydl.schedule.Schedule` record that
``pd.compile(kernel, schedule=record)`` replays exactly; the space only offers what the
compiler replays. Per contraction (:class:`Knobs`, ranges from :class:`ContractionSpace`):

* ``bm`` rows of one call: multiples of the ISA's register-tile rows, the divisors of the row
  extent that are multiples of 8, and the whole extent, up to :data:`MAX_CALL_ROWS`; on a
  convolution whose call covers whole output rows, 1 .. the rows that keep a call within
  :data:`MAX_CALL_ROWS` pixels;
* ``bn`` columns: multiples of the vector width up to :data:`MAX_BN_VECTORS` vectors, and the
  whole extent when it is no wider;
* ``bk`` reduction per batch element: divisors of the k extent from 8 (or the extent) to
  :data:`MAX_BK`;
* ``reduce`` the batch-reduce chunking: the whole reduction in one call, a loop over ``k``
  stepping by ``kc`` (multiples of ``bk`` dividing the extent), or a loop over one batch
  iterator stepping by a divisor of its extent (a conv's input-channel blocks or filter rows);
* ``tiles``: at most one tile loop per row, column or outer iterator, its step a multiple of the
  point loop's (``optimize.search.candidate_tiles``: divisors and non-divisors);
* ``order``: the loops outermost first, any permutation with each tile loop above its point
  loop; one-trip loops go last, as the ranking writes them;
* ``n_parallel``: how many outermost loops run in parallel (only loops over iterators that
  carry no dependence; with one thread, 0); how they split over the threads then follows
  (``transform/threads.py`` collapses them);
* ``pack``: whether widely strided B blocks are copied into dense buffers (offered only when B's
  rows are far enough apart for ``transform/pack.py`` to consider it);
* the microkernel's: ``register_tile`` (rows, vectors) instead of the blocking rule's (None),
  every tile of :data:`TILE_ROWS` rows by 1 .. :data:`MAX_TILE_VECTORS` vectors with at least
  :data:`MIN_TILE_ACCS` accumulators that fits the register file (``kernels/isa.tile_problem``);
  ``k_unroll``, the rule's (None) or one of ``kernels/isa.K_UNROLLS``; ``prefetch``, B prefetched
  for the next call (1, the default), the one after (2) or not (0), where B is widely strided
  (``transform/prefetch.py`` prefetches what is not packed); ``nontemporal`` stores of C, where
  the contraction zeroes C, its rows are whole vectors apart and no reduction loop splits the
  reduction (C is then written once per call). The cost model's pick is the defaults.

Per kernel: ``lowering``, split guards or gather the operand, when a guarded contraction offers
both. A point is legal when the microkernel accepts its blocks and the loop order breaks no
dependence (``analysis/deps.check_schedule``, reductions relaxed), which is what replay checks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import TuneError
from ..ir.nodes import DTYPE_BYTES
from ..optimize.plan import MAX_BN_VECTORS, fewer_calls
from ..schedule import ContractionSchedule, Schedule
from .builder import Workload

MAX_CALL_ROWS = 256
MAX_BK = 256
MIN_BK = 8
TILE_OPTIONS = 8
TILE_ROWS = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 30)
MAX_TILE_VECTORS = 6
MIN_TILE_ACCS = 4
PREFETCH_CALLS = (1, 0, 2)  # calls ahead, the default first
# the sweep's knob groups (ContractionSpace.sweep_group), in the order it measures them: the
# ones that won most often first (the whole reduction per call with non-temporal stores,
# packing off and narrower or wider calls on the NCHW ResNet-50 layers and GEMM 1024^3)
SWEEP = ("stores", "pack", "columns", "tile", "unroll", "prefetch", "bk")
SWEEP_UNROLLS = (4, 1)  # the k unrolls the sweep measures (4 the tuned picks' most often, then 1)


@dataclass(frozen=True, kw_only=True)
class Knobs:
    """One contraction's point of the space (see the module docstring)."""

    bm: int
    bn: int
    bk: int
    reduce: tuple[str, int] | None  # (iterator, step) of the reduction loop; None: no loop
    tiles: tuple[tuple[str, int], ...]  # (iterator, tile step), sorted
    order: tuple[tuple[str, bool], ...]  # the loops, outermost first: (iterator, is a tile)
    n_parallel: int = 0
    pack: bool = True
    register_tile: tuple[int, int] | None = None  # (rows, vectors); None: the rule's
    k_unroll: int | None = None
    prefetch: int = 1
    nontemporal: bool = False


@dataclass(frozen=True, kw_only=True)
class Point:
    """A kernel's point: the lowering and each contraction's knobs, in contraction order."""

    lowering: str
    knobs: tuple[Knobs, ...]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _near(options: Sequence[int], value: int) -> int:
    return min(options, key=lambda o: (abs(o - value), o))


class ContractionSpace:
    """The knobs of one contraction and their legal ranges, read off the contraction."""

    def __init__(self, c, nest, *, target, threads: int, what: str = "") -> None:
        from ..optimize.search import free_iterators
        from ..transform.pack import WIDE_ROW_BYTES

        self.c, self.nest, self.target, self.threads = c, nest, target, threads
        self.stmt, self.what = c.stmt, what or f"{c.c} += {c.a} x {c.b}"
        self.ext = {v: hi - lo + 1 for v, (lo, hi) in c.extents}
        self.work = math.prod(self.ext.values())
        self.scanned = (*c.outer, c.m, c.n)
        lanes = target.lanes()
        mr = target.register_tile[0]
        ext_m, ext_n = self.ext[c.m], self.ext[c.n]
        if c.rows_per_m > 1:
            self.bm_range = tuple(range(1, max(1, min(ext_m, MAX_CALL_ROWS // c.rows_per_m)) + 1))
        else:
            cap = min(ext_m, MAX_CALL_ROWS)
            rows = {mr * i for i in range(1, cap // mr + 1)}
            rows |= {d for d in _divisors(ext_m) if d <= cap and d % 8 == 0}
            rows |= {ext_m} if ext_m <= cap else set()
            self.bm_range = tuple(sorted(rows))
        cols = {lanes * i for i in range(1, MAX_BN_VECTORS + 1) if lanes * i <= ext_n}
        cols |= {ext_n} if ext_n <= MAX_BN_VECTORS * lanes else set()
        self.bn_range = tuple(sorted(cols))
        ext_k = self.ext[c.k] if c.k else 1
        self.bk_range = tuple(d for d in _divisors(ext_k) if min(ext_k, MIN_BK) <= d <= MAX_BK)
        self.bk_range = self.bk_range or (ext_k,)
        if c.b_vnni:  # a call's k covers whole VNNI-2 pairs of B
            self.bk_range = tuple(d for d in self.bk_range if d % 2 == 0) or (ext_k,)
        self.free = free_iterators(nest, c.stmt) if threads > 1 else frozenset()
        ldb = c.linear("B").coef(c.k) if c.k else 0
        eb = DTYPE_BYTES[nest.arg(c.b).dtype]
        self.packable = bool(c.k) and ldb * eb >= WIDE_ROW_BYTES
        self.regtile_range, self.unroll_range = _micro_ranges(target)
        self.prefetch_range = PREFETCH_CALLS if self.packable else (1,)
        self.nt_range = (False, True) if _nt_offered(c, nest, target) else (False,)
        self._legal: dict[tuple, str | None] = {}

    # ------------------------------------------------------------ ranges that depend on knobs

    def reduce_range(self, bk: int) -> tuple[tuple[str, int] | None, ...]:
        """None, ``(k, kc)`` for every ``kc`` below the extent, ``(b, d)`` per batch iterator."""
        c, out = self.c, [None]
        if c.k:
            ext = self.ext[c.k]
            out += [(c.k, kc) for kc in range(bk, ext, bk) if ext % kc == 0]
        for b in c.batch:
            out += [(b, d) for d in _divisors(self.ext[b])[:-1]]
        return tuple(out)

    def step(self, kn: Knobs, v: str) -> int:
        """The point loop's step over ``v``: its block in one call."""
        if kn.reduce and v == kn.reduce[0]:
            return kn.reduce[1]
        return {self.c.m: kn.bm, self.c.n: kn.bn}.get(v, 1)

    def looped(self, kn: Knobs) -> tuple[str, ...]:
        """The iterators that need a point loop (more than one trip), in source order."""
        vs = [v for v in self.scanned if self.ext[v] > self.step(kn, v)]
        return tuple(vs + ([kn.reduce[0]] if kn.reduce else []))

    def tile_range(self, kn: Knobs, v: str) -> tuple[int, ...]:
        from ..optimize.search import candidate_tiles

        if v not in self.scanned:
            return ()
        return tuple(candidate_tiles(self.ext[v], self.step(kn, v), limit=TILE_OPTIONS))

    def max_parallel(self, kn: Knobs) -> int:
        """Outermost loops over iterators free of dependences (0 with one thread)."""
        n = 0
        for v, _ in kn.order:
            if v not in self.free:
                break
            n += 1
        return n

    # ------------------------------------------------------------ records

    def loops(self, kn: Knobs) -> tuple[tuple[str, int], ...]:
        """The loops with more than one trip, outermost first."""
        tiles = dict(kn.tiles)
        return tuple((v, tiles[v] if tile else self.step(kn, v)) for v, tile in kn.order)

    def record(self, kn: Knobs) -> ContractionSchedule:
        done = {v for v, _ in kn.order}
        rest = tuple((v, self.step(kn, v)) for v in self.scanned if v not in done)
        return ContractionSchedule(
            stmt=self.stmt,
            bm=kn.bm,
            bn=kn.bn,
            bk=kn.bk,
            loops=self.loops(kn) + rest,
            n_parallel=kn.n_parallel,
            what=self.what,
            pack=kn.pack,
            register_tile=kn.register_tile,
            k_unroll=kn.k_unroll,
            prefetch=kn.prefetch,
            nontemporal=kn.nontemporal,
        )

    def knobs(self, cs: ContractionSchedule) -> Knobs:
        """The knobs of a record (a ranked variant's, a stored trial's); one-trip loops may be
        anywhere in it (the point writes them last, the same code). TuneError when the record
        is outside the space (two tile loops over one iterator, a loop over another iterator)."""
        c = self.c
        last = {v: i for i, (v, _) in enumerate(cs.loops)}
        reduce, tiles, order, kept, n_par = None, {}, [], [], 0
        for i, (v, b) in enumerate(cs.loops):
            tile = last[v] != i
            if v not in self.ext or (tile and (v in tiles or v not in self.scanned)):
                raise TuneError(f"{self.stmt}: loops {cs.order} are outside the tuning space")
            if tile:
                tiles[v] = b
            elif b >= self.ext[v] and v not in tiles:
                continue  # one trip
            elif v == c.k or v in c.batch:
                reduce = (v, b)
            order.append((v, tile))
            kept.append((v, b))
            n_par += i < cs.n_parallel
        kn = Knobs(
            bm=cs.bm,
            bn=cs.bn,
            bk=cs.bk,
            reduce=reduce,
            tiles=tuple(sorted(tiles.items())),
            order=tuple(order),
            n_parallel=n_par if self.threads > 1 else 0,
            pack=cs.pack or not self.packable,
            register_tile=cs.register_tile,
            k_unroll=cs.k_unroll,
            prefetch=cs.prefetch if self.packable else 1,
            nontemporal=cs.nontemporal,
        )
        if self.loops(kn) != tuple(kept):  # steps other than the blocks
            raise TuneError(f"{self.stmt}: loops {cs.order} are outside the tuning space")
        return kn

    # ------------------------------------------------------------ legality

    def problem(self, kn: Knobs) -> str | None:
        """Why ``kn`` is not a legal point (None: it is)."""
        if kn.bm not in self.bm_range or kn.bn not in self.bn_range or kn.bk not in self.bk_range:
            return f"blocks {kn.bm}x{kn.bn}x{kn.bk} outside the ranges"
        if kn.reduce not in self.reduce_range(kn.bk):
            return f"reduction loop {kn.reduce} not offered with bk={kn.bk}"
        slots = [v for v, tile in kn.order if not tile]
        if sorted(slots) != sorted(self.looped(kn)):
            return f"point loops {slots} do not scan {self.looped(kn)}"
        if sorted(v for v, tile in kn.order if tile) != sorted(v for v, _ in kn.tiles):
            return f"tile loops {kn.order} and tiles {kn.tiles} differ"
        for v, t in kn.tiles:
            if t not in self.tile_range(kn, v) or kn.order.index((v, True)) > kn.order.index(
                (v, False)
            ):
                return f"tile {v}/{t} not offered, or below its point loop"
        if not 0 <= kn.n_parallel <= self.max_parallel(kn) or (kn.n_parallel and self.threads < 2):
            return f"n_parallel={kn.n_parallel} outside 0..{self.max_parallel(kn)}"
        if not kn.pack and not self.packable:
            return "pack=False where nothing is packed"
        if kn.register_tile not in self.regtile_range or kn.k_unroll not in self.unroll_range:
            return f"microkernel tile {kn.register_tile} / k unroll {kn.k_unroll} not offered"
        if kn.prefetch not in self.prefetch_range:
            return f"prefetch={kn.prefetch} not offered (B is not widely strided)"
        if kn.nontemporal and (kn.nontemporal not in self.nt_range or kn.reduce is not None):
            return "non-temporal stores need C zeroed, whole-vector rows and no reduction loop"
        key = (kn.bm, kn.bn, kn.bk, self.loops(kn))
        if key not in self._legal:
            self._legal[key] = self._check(kn)
        return self._legal[key]

    def _check(self, kn: Knobs) -> str | None:
        from ..analysis.deps import check_schedule
        from ..optimize.plan import config_ok
        from ..optimize.search import legal_order
        from ..transform.brgemm import BlockPlan

        cs = self.record(kn)
        plan = BlockPlan(bm=cs.bm, bn=cs.bn, bk=cs.bk, loops=cs.loops)
        if not config_ok(self.c, plan):
            return f"the microkernel refuses blocks {cs.bm}x{cs.bn}x{cs.bk}"
        try:
            if not legal_order(self.nest, self.stmt, cs.loops, check_schedule):
                return f"{cs.order} breaks a dependence"
        except ValueError as e:
            return f"{cs.order}: {e}"
        return None

    # ------------------------------------------------------------ moves

    def repair(self, kn: Knobs) -> Knobs:
        """``kn`` made consistent after one knob moved: the reduction loop fits ``bk``, tiles fit
        their point steps, point loops exactly where iterators have more than one trip (a new
        one innermost), tiles above their point loops, ``n_parallel`` within range."""
        if kn.reduce not in self.reduce_range(kn.bk):
            same = [r for r in self.reduce_range(kn.bk) if r and r[0] == kn.reduce[0]]
            kn = replace(kn, reduce=min(same, key=lambda r: abs(r[1] - kn.reduce[1]), default=None))
        looped = self.looped(kn)
        tiles = {}
        for v, t in kn.tiles:
            opts = self.tile_range(kn, v) if v in looped else ()
            if opts:
                tiles[v] = _near(opts, t)
        order = [(v, t) for v, t in kn.order if v in looped and (not t or v in tiles)]
        have = {v for v, t in order if not t}
        order += [(v, False) for v in looped if v not in have]
        have_tile = {v for v, t in order if t}
        order = [(v, True) for v in tiles if v not in have_tile] + order
        for v in tiles:  # a tile loop above its point loop
            ti, pi = order.index((v, True)), order.index((v, False))
            if ti > pi:
                order[ti], order[pi] = order[pi], order[ti]
        kn = replace(kn, tiles=tuple(sorted(tiles.items())), order=tuple(order))
        kn = replace(kn, n_parallel=min(kn.n_parallel, self.max_parallel(kn)))
        return replace(
            kn,
            pack=kn.pack or not self.packable,
            prefetch=kn.prefetch if self.packable else 1,
            nontemporal=kn.nontemporal and kn.reduce is None and True in self.nt_range,
        )

    def mutate(self, kn: Knobs, rng: random.Random) -> Knobs:
        """``kn`` with one knob moved (then repaired): a block to a neighbouring value, another
        reduction loop, a tile added, changed or dropped, two loops swapped or one moved,
        another parallel count, packing flipped."""
        moves = ["bm", "bn", "bk", "reduce", "tile", "order", "order"]
        moves += ["parallel"] if self.threads > 1 else []
        moves += ["pack"] if self.packable else []
        moves += ["regtile", "regtile", "unroll"]
        moves += ["prefetch"] if len(self.prefetch_range) > 1 else []
        moves += ["nt"] if len(self.nt_range) > 1 else []
        move = rng.choice(moves)
        if move in ("bm", "bn", "bk"):
            opts = getattr(self, f"{move}_range")
            i = opts.index(getattr(kn, move)) if getattr(kn, move) in opts else 0
            j = i + rng.choice((-2, -1, 1, 2)) if rng.random() < 0.8 else rng.randrange(len(opts))
            kn = replace(kn, **{move: opts[max(0, min(len(opts) - 1, j))]})
        elif move == "reduce":
            kn = replace(kn, reduce=rng.choice(self.reduce_range(kn.bk)))
        elif move == "tile":
            vs = [v for v in self.looped(kn) if self.tile_range(kn, v)]
            if vs:
                v = rng.choice(vs)
                tiles = dict(kn.tiles)
                if v in tiles and rng.random() < 0.4:
                    del tiles[v]
                else:
                    tiles[v] = rng.choice(self.tile_range(kn, v))
                kn = replace(kn, tiles=tuple(sorted(tiles.items())))
        elif move == "order" and len(kn.order) > 1:
            order = list(kn.order)
            i = rng.randrange(len(order))
            if rng.random() < 0.5:
                j = min(len(order) - 1, i + 1) if i == 0 or rng.random() < 0.5 else i - 1
                order[i], order[j] = order[j], order[i]
            else:
                loop = order.pop(i)
                order.insert(rng.randrange(len(order) + 1), loop)
            kn = replace(kn, order=tuple(order))
        elif move == "parallel":
            kn = replace(kn, n_parallel=rng.randint(0, max(0, self.max_parallel(kn))))
        elif move == "pack":
            kn = replace(kn, pack=not kn.pack)
        elif move == "regtile":
            kn = replace(kn, register_tile=self._near_tile(kn.register_tile, rng))
        elif move == "unroll":
            kn = replace(kn, k_unroll=rng.choice(self.unroll_range))
        elif move == "prefetch":
            kn = replace(kn, prefetch=rng.choice(self.prefetch_range))
        elif move == "nt":
            kn = replace(kn, nontemporal=not kn.nontemporal)
            if kn.nontemporal:  # the whole reduction in one call
                kn = replace(kn, reduce=None)
        return self.repair(kn)

    def sweep_group(self, name: str, kn: Knobs) -> list[tuple[Knobs, str]]:
        """``kn`` with the knob (or knobs) of group ``name`` of :data:`SWEEP` changed: the
        values the sweep measures for it, legal points only, the likeliest first.

        * ``stores``: non-temporal stores toggled; where a reduction loop splits the reduction
          (non-temporal stores then are not offered), the whole reduction in one call with
          non-temporal stores (where offered) and without;
        * ``pack``: packing of B flipped (where B is widely strided);
        * ``columns``: wider calls (:meth:`wider_columns`), and half as wide;
        * ``tile``: per vector count up to what ``bn`` needs, the widest register tile that
          fits (more vectors first: fewer broadcasts per FMA; the rule's own left out), two
          at most, then the widest one-vector tile and a mid-size one (:meth:`mid_tile`);
        * ``unroll``: the k unrolls of :data:`SWEEP_UNROLLS` (the current one left out);
        * ``prefetch``: the other distances (where B is widely strided and not packed);
        * ``bk``: the reduction block halved and doubled."""
        out: list[tuple[Knobs, str]] = []
        if name == "stores":
            if kn.reduce is None:
                if True in self.nt_range:
                    why = "cached stores" if kn.nontemporal else "non-temporal stores"
                    out.append((replace(kn, nontemporal=not kn.nontemporal), why))
            else:
                whole = self.repair(replace(kn, reduce=None))
                if True in self.nt_range:
                    nt = replace(whole, nontemporal=True)
                    out.append((nt, "the whole reduction per call, non-temporal stores"))
                out.append((whole, "the whole reduction per call"))
        elif name == "pack" and self.packable:
            out.append((replace(kn, pack=not kn.pack), f"packing {'off' if kn.pack else 'on'}"))
        elif name == "columns":
            half = [b for b in self.bn_range if b <= kn.bn // 2][-1:]
            for b in [*self.wider_columns(kn), *half]:
                out.append((self.repair(replace(kn, bn=b)), f"columns {b} per call"))
        elif name == "tile":
            rule = self.rule_tile(kn)
            need = -(-min(kn.bn, self.ext[self.c.n]) // self.target.lanes())
            widest: dict[int, tuple[int, int]] = {}
            for t in self.regtile_range[1:]:
                if t[1] <= need and t[0] * t[1] > math.prod(widest.get(t[1], (0, 0))):
                    widest[t[1]] = t
            tiles = sorted((t for t in widest.values() if t != rule), key=lambda t: -t[1])
            wide = [t for t in tiles if t[1] > 1][:2] + [t for t in tiles if t[1] == 1]
            mid = self.mid_tile(widest.get(1))
            wide += [mid] if mid is not None and mid != rule else []
            out += [(replace(kn, register_tile=t), f"register tile {t[0]}x{t[1]}v") for t in wide]
        elif name == "unroll":
            unroll = [u for u in SWEEP_UNROLLS if u in self.unroll_range and u != kn.k_unroll]
            out += [(replace(kn, k_unroll=u), f"k unroll {u}") for u in unroll]
        elif name == "bk":
            for bk in (kn.bk // 2, kn.bk * 2):
                if bk in self.bk_range:
                    out.append((self.repair(replace(kn, bk=bk)), f"reduction block {bk}"))
        elif name == "prefetch":
            out += [(replace(kn, prefetch=p), f"prefetch {p}") for p in self.prefetch_range]
        return [(k, why) for k, why in out if k != kn and self.problem(k) is None]

    def mid_tile(self, widest: tuple[int, int] | None) -> tuple[int, int] | None:
        """The one-vector register tile of about half the rows of ``widest`` (the widest
        one-vector tile; the fewer rows on a tie), or None. Such a tile keeps a few
        accumulators less than the widest but splits a call's rows into more, shorter
        tiles: on the 1x1 conv of ResNet-50 layer 01 (batch 8, 128 x 80 calls, B unpacked)
        12-16 x 1 vector ran 1.04-1.06x the blocking rule's tile, 30 x 1 1.02x."""
        if widest is None:
            return None
        rows = [t[0] for t in self.regtile_range[1:] if t[1] == 1 and t[0] < widest[0]]
        return (_near(rows, widest[0] // 2), 1) if rows else None

    def wider_columns(self, kn: Knobs) -> list[int]:
        """Column blocks that cover the columns in fewer calls than ``kn.bn`` (half as many,
        then one fewer), each the narrowest of ``bn_range`` that does, so the calls stay even
        (196 pixels by 64: 4 calls, the last of 4 columns; by 112: 112 + 84). Wider calls
        stream the rows' A panel once per call fewer times, which the analytic model sees
        little of: on a 1x1 conv over 14x14 pixels (batch 8) 112 columns ran 1.18x faster."""
        return fewer_calls(self.ext[self.c.n], kn.bn, self.bn_range)

    def rule_tile(self, kn: Knobs) -> tuple[int, int]:
        """(rows, vectors) of the register tile the blocking rule gives ``kn``'s full calls."""
        from ..kernels import BrgemmConfig
        from ..kernels.isa import plan

        c = self.c
        cfg = BrgemmConfig(
            m=min(kn.bm, self.ext[c.m]) * c.rows_per_m, n=min(kn.bn, self.ext[c.n]), k=kn.bk
        )
        b = plan(cfg, self.target.family)
        return b.mr, b.nv

    def _near_tile(self, tile: tuple[int, int] | None, rng: random.Random):
        """Another register tile: mostly one of the same vectors with nearby rows (or the same
        rows with one vector more or less), sometimes any, or the rule's (None)."""
        opts = [t for t in self.regtile_range if t is not None and t != tile]
        if tile is None or rng.random() < 0.25:
            return rng.choice([*opts, None]) if tile is not None else rng.choice(opts)
        near = [t for t in opts if t[1] == tile[1] or t[0] == tile[0]]
        near.sort(key=lambda t: abs(t[0] * t[1] - tile[0] * tile[1]))
        return rng.choice(near[:4]) if near else None

    def cross(self, a: Knobs, b: Knobs, rng: random.Random) -> Knobs:
        """Blocks from one parent, the nest (reduction loop, tiles, order) from the other."""
        if rng.random() < 0.5:
            a, b = b, a
        kn = replace(
            b,
            bm=a.bm,
            bn=a.bn,
            bk=a.bk,
            pack=a.pack,
            register_tile=a.register_tile,
            k_unroll=a.k_unroll,
            prefetch=a.prefetch,
        )
        return self.repair(kn)

    def random(self, rng: random.Random) -> Knobs:
        """A random point (repaired; not necessarily legal)."""
        bk = rng.choice(self.bk_range)
        kn = Knobs(
            bm=rng.choice(self.bm_range),
            bn=rng.choice(self.bn_range),
            bk=bk,
            reduce=rng.choice(self.reduce_range(bk)),
            tiles=(),
            order=(),
            pack=self.packable and rng.random() < 0.5 or not self.packable,
            register_tile=rng.choice(self.regtile_range) if rng.random() < 0.5 else None,
            k_unroll=rng.choice(self.unroll_range),
            prefetch=rng.choice(self.prefetch_range),
            nontemporal=rng.choice(self.nt_range),
        )
        kn = self.repair(kn)
        tiles = {}
        for v in self.looped(kn):
            opts = self.tile_range(kn, v)
            if opts and rng.random() < 0.5:
                tiles[v] = rng.choice(opts)
        order = list(self.repair(replace(kn, tiles=tuple(sorted(tiles.items())))).order)
        rng.shuffle(order)
        kn = self.repair(replace(kn, tiles=tuple(sorted(tiles.items())), order=tuple(order)))
        return replace(kn, n_parallel=rng.randint(0, self.max_parallel(kn)))

    def describe(self) -> str:
        """The ranges, one line: what ``polydl tune --space`` prints per contraction."""
        c = self.c
        red = [f"{c.k}/kc" if c.k and self.ext[c.k] > 1 else None]
        red += [f"{b}/d" for b in c.batch if self.ext[b] > 1]
        return (
            f"{self.stmt} ({self.what}): bm {_span(self.bm_range)}, bn {_span(self.bn_range)},"
            f" bk {_span(self.bk_range)}, reduction loop none|{'|'.join(r for r in red if r)},"
            f" loops over {', '.join(self.scanned)} (one tile each, any order),"
            f" parallel iterators {sorted(self.free) or '-'},"
            f" pack {'on|off' if self.packable else 'n/a'},"
            f" register tile rule|{len(self.regtile_range) - 1} tiles"
            f" ({_tiles(self.regtile_range[1:])}),"
            f" k unroll {'|'.join('rule' if u is None else str(u) for u in self.unroll_range)},"
            f" prefetch {'|'.join(map(str, self.prefetch_range)) if self.packable else 'n/a'},"
            f" non-temporal stores {'off|on' if len(self.nt_range) > 1 else 'n/a'}"
        )


def _micro_ranges(target) -> tuple[tuple, tuple]:
    """The register tiles (None first: the blocking rule's) and k unrolls a family offers."""
    from ..kernels.isa import K_UNROLLS, tile_problem

    fam = target.family
    if fam.amx:
        return (None,), (None,)
    tiles = [
        (r, v)
        for v in range(1, MAX_TILE_VECTORS + 1)
        for r in TILE_ROWS
        if r * v >= MIN_TILE_ACCS and tile_problem(fam, r, v) is None
    ]
    return (None, *tiles), (None, *K_UNROLLS)


def _nt_offered(c, nest, target) -> bool:
    """Whether non-temporal stores can change the calls of ``c``: C zeroed by the
    contraction (beta = 0), f32, its rows whole vectors apart, an x86 family."""
    from ..kernels.generator import NT_FAMILIES

    ldc = c.linear("C").coef(c.row)
    return (
        bool(c.init)
        and target.family.name in NT_FAMILIES
        and nest.arg(c.c).dtype == "f32"
        and ldc % target.lanes() == 0
    )


def _tiles(tiles) -> str:
    by_v: dict[int, list[int]] = {}
    for r, v in tiles:
        by_v.setdefault(v, []).append(r)
    return ", ".join(f"{min(rs)}..{max(rs)}x{v}v" for v, rs in sorted(by_v.items()))


def _span(values: Sequence[int]) -> str:
    if len(values) <= 4:
        return "|".join(map(str, values))
    return f"{values[0]}..{values[-1]} ({len(values)} values)"


class KernelSpace:
    """The space of one workload at one thread count: a :class:`ContractionSpace` per
    contraction of each lowering, and the cost model's ranked plans to seed the search."""

    def __init__(self, workload: Workload, *, threads: int, target=None) -> None:
        from ..pipeline import lowering_choices
        from ..target import resolve
        from .builder import untuned

        self.workload, self.threads = workload, threads
        self.target = resolve(target)
        choices = lowering_choices(
            workload.ir, workload.size_map, target=self.target, threads=threads
        )
        self.spaces = {
            ch.lowering: tuple(
                ContractionSpace(c, nest, target=self.target, threads=threads)
                for c, nest in ch.nests
            )
            for ch in choices
        }
        if not any(self.spaces.values()):
            raise TuneError(
                f"pd.tune: kernel {workload.describe()} has no contraction the compiler lowers "
                "to BRGEMM calls: nothing to tune"
            )
        self.extra_cost = {ch.lowering: ch.extra_cost for ch in choices}
        self._ranked = {ch.lowering: ch.ranked for ch in choices}
        self.baseline = untuned(workload, threads=threads).schedule.choices()
        self._seeds: dict[int, list[tuple[Point, str]]] = {}

    @property
    def lowerings(self) -> tuple[str, ...]:
        return tuple(self.spaces)

    def record(self, p: Point) -> Schedule:
        spaces = self.spaces[p.lowering]
        return replace(
            self.baseline,
            lowering=p.lowering,
            contractions=tuple(s.record(k) for s, k in zip(spaces, p.knobs, strict=True)),
        )

    def point(self, record: Schedule) -> Point:
        """The point of a record (TuneError when it is outside the space)."""
        spaces = self.spaces.get(record.lowering)
        if spaces is None:
            raise TuneError(f"lowering {record.lowering!r} is not one of {self.lowerings}")
        entries = [record.entry(s.stmt) for s in spaces]
        if None in entries or len(record.contractions) != len(spaces):
            raise TuneError(
                f"record contractions {[c.stmt for c in record.contractions]} do not match "
                f"{[s.stmt for s in spaces]}"
            )
        return Point(
            lowering=record.lowering,
            knobs=tuple(s.knobs(e) for s, e in zip(spaces, entries, strict=True)),
        )

    def problem(self, p: Point) -> str | None:
        for s, k in zip(self.spaces[p.lowering], p.knobs, strict=True):
            why = s.problem(k)
            if why:
                return f"{s.stmt}: {why}"
        return None

    def seeds(self, k: int) -> list[tuple[Point, str]]:
        """The untuned pick, then the cost model's next ranks (every contraction at its rank
        r, or its last), lowerings in order of predicted cost: ``[(point, origin), ...]``."""
        if k not in self._seeds:
            self._seeds[k] = self._ranked_points(k)
        return list(self._seeds[k])

    def _ranked_points(self, k: int) -> list[tuple[Point, str]]:
        out = [(self.point(self.baseline), "untuned pick (cost model rank 1)")]
        order = sorted(self.spaces, key=lambda lw: self._ranked[lw].cost + self.extra_cost[lw])
        for r in range(max(1, k)):
            for lw in order:
                alts = dict(self._ranked[lw].alternatives)
                chosen = self._ranked[lw].chosen
                entries = []
                for c in chosen:
                    rows = alts.get(c.stmt, ())
                    entries.append(rows[min(r, len(rows) - 1)].choice() if rows else c.choice())
                try:
                    p = self.point(replace(self.baseline, lowering=lw, contractions=tuple(entries)))
                except TuneError:
                    continue
                out.append((p, f"cost model rank {r + 1}" + (f" ({lw})" if len(order) > 1 else "")))
        seen, uniq = set(), []
        for p, origin in out:
            if p not in seen and self.problem(p) is None:
                seen.add(p)
                uniq.append((p, origin))
        return uniq[:k] if k > 0 else uniq[:1]

    def sweep_group(self, name: str, p: Point) -> list[tuple[Point, str]]:
        """``p`` with the knobs of group ``name`` of its largest contraction changed
        (:meth:`ContractionSpace.sweep_group`)."""
        spaces = self.spaces[p.lowering]
        i = max(range(len(spaces)), key=lambda j: spaces[j].work)
        out = []
        for kn, why in spaces[i].sweep_group(name, p.knobs[i]):
            knobs = list(p.knobs)
            knobs[i] = kn
            out.append((replace(p, knobs=tuple(knobs)), why))
        return out

    def mutate(self, p: Point, rng: random.Random) -> Point:
        """One contraction (by its share of the work) moved, or, rarely, another lowering."""
        if len(self.spaces) > 1 and rng.random() < 0.1:
            other = rng.choice([lw for lw in self.spaces if lw != p.lowering])
            return next((q for q, _ in self.seeds(1 + len(self.spaces)) if q.lowering == other), p)
        spaces = self.spaces[p.lowering]
        i = rng.choices(range(len(spaces)), weights=[s.work for s in spaces])[0]
        knobs = list(p.knobs)
        knobs[i] = spaces[i].mutate(knobs[i], rng)
        return replace(p, knobs=tuple(knobs))

    def cross(self, a: Point, b: Point, rng: random.Random) -> Point:
        if a.lowering != b.lowering:
            return a if rng.random() < 0.5 else b
        spaces = self.spaces[a.lowering]
        if len(spaces) > 1:
            return replace(
                a, knobs=tuple(rng.choice(pair) for pair in zip(a.knobs, b.knobs, strict=True))
            )
        return replace(a, knobs=(spaces[0].cross(a.knobs[0], b.knobs[0], rng),))

    def random(self, rng: random.Random) -> Point:
        lw = rng.choice(self.lowerings)
        return Point(lowering=lw, knobs=tuple(s.random(rng) for s in self.spaces[lw]))

    def describe(self) -> str:
        return "\n".join(
            f"lowering {lw}: " + "; ".join(s.describe() for s in spaces)
            for lw, spaces in self.spaces.items()
        )
