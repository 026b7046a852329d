"""Schedule records: what the optimiser chose for one kernel, as data.

A :class:`Schedule` holds, for every contraction the compiler lowers to BRGEMM calls, the block
of one call (``bm`` rows, ``bn`` columns, ``bk`` of the reduction per batch element), the loops
around the call (iterator and step, outermost first: the last loop of an iterator steps by its
block, an earlier one is a tile; a loop over ``k`` or over a batch iterator chunks the
reduction), and how many outermost loops run in parallel; and which lowering the cost model
took for guarded contractions (guards split away, or the operand gathered); and the microkernel
knobs of its calls: the register tile (rows x vectors) and k unroll instead of the blocking
rule's (``kernels/isa.plan``), how many calls ahead B is prefetched (``transform/prefetch.py``)
and non-temporal stores of C (where a call writes C once). Every contraction
also lists the ranked alternatives with what the cost model predicted for them, which is what
``show("variants")`` prints.

Records are frozen, compare by value and survive JSON (:meth:`Schedule.to_json`,
:meth:`Schedule.from_json`). ``pd.compile(kernel, schedule=record)`` replays one exactly: no
ranking, each plan checked for legality against the kernel's dependences (``ScheduleError``
otherwise), and ``CompiledKernel.schedule`` of the result equals the record's choices. An
auto-tuner stores and edits these records.

Before (``show("variants")`` text)::

    1  k/96 pq/64 c/256 | micro  -  k/96,pq/64  L2:690K L3:1.2M  2.67e+08  1.00x

After (the record of that row)::

    ContractionSchedule(stmt="S1", bm=96, bn=64, bk=64,
                        loops=(("k", 96), ("pq", 64), ("c", 256)), n_parallel=2, ...)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from .errors import PolyDLError

SCHEDULE_VERSION = 1
LOWERINGS = ("split", "gather")
# fields of a contraction's entry added after version 1: left out of the JSON at their
# defaults, so that records written before them read (and print) as they did
OPTIONAL_FIELDS = {
    "pack": True,
    "register_tile": None,
    "k_unroll": None,
    "prefetch": 1,
    "nontemporal": False,
}
MAX_PREFETCH = 2  # calls ahead


class ScheduleError(PolyDLError):
    """A schedule record does not fit the kernel it is replayed on (names the contraction)."""


@dataclass(frozen=True, kw_only=True)
class Prediction:
    """What the cost model predicted for one variant (``optimize/cost.py`` units)."""

    rank: int  # 1 = the cost model's pick
    cost: float
    core: float = 0.0
    data: float = 0.0
    working_sets: str = ""  # the largest working set each cache holds: "L1:12K L2:400K"


@dataclass(frozen=True, kw_only=True)
class ContractionSchedule:
    """The choices for one contraction (found at statement ``stmt``)."""

    stmt: str
    bm: int
    bn: int
    bk: int
    loops: tuple[tuple[str, int], ...]
    n_parallel: int
    what: str = ""  # "C += A x B", for messages and tables
    predicted: Prediction | None = None  # None: the default plan, or written by hand
    pack: bool = True  # False: B blocks read where they are (transform/pack.py leaves them)
    # the microkernel (kernels/isa.py): register tile (rows, vectors) and k steps per main-loop
    # iteration (None: the blocking rule's); B prefetched for the call this many calls ahead
    # (0: none; transform/prefetch.py, where B is widely strided and not packed); non-temporal
    # stores of C (only where one call zeroes and finishes C: no reduction loop)
    register_tile: tuple[int, int] | None = None
    k_unroll: int | None = None
    prefetch: int = 1
    nontemporal: bool = False

    def __post_init__(self) -> None:
        if min(self.bm, self.bn, self.bk) < 1 or not self.loops:
            raise ScheduleError(f"schedule of {self.stmt}: blocks must be positive, loops given")
        rt = self.register_tile
        if rt is not None and (len(rt) != 2 or min(rt) < 1):
            raise ScheduleError(
                f"schedule of {self.stmt}: register_tile {rt!r} must be (rows, vectors) > 0"
            )
        if self.k_unroll is not None and self.k_unroll < 1:
            raise ScheduleError(f"schedule of {self.stmt}: k_unroll={self.k_unroll} must be >= 1")
        if not 0 <= self.prefetch <= MAX_PREFETCH:
            raise ScheduleError(
                f"schedule of {self.stmt}: prefetch={self.prefetch} outside 0..{MAX_PREFETCH}"
            )
        if not 0 <= self.n_parallel <= len(self.loops):
            raise ScheduleError(
                f"schedule of {self.stmt}: n_parallel={self.n_parallel} outside 0..{len(self.loops)}"
            )

    @property
    def order(self) -> str:
        """``k/96 pq/64 c/256 | micro``."""
        return _order(self.loops)

    @property
    def tiles(self) -> tuple[tuple[str, int], ...]:
        """(iterator, step) of the tile loops (every loop of an iterator but its last), by
        iterator name."""
        last = {v: i for i, (v, _) in enumerate(self.loops)}
        return tuple(sorted((v, b) for i, (v, b) in enumerate(self.loops) if last[v] != i))

    @property
    def micro(self) -> str:
        """The microkernel knobs that differ from the defaults: ``tile 6x4v unroll 4 nt pf0``
        ("" when none)."""
        parts = []
        if self.register_tile is not None:
            parts.append(f"tile {self.register_tile[0]}x{self.register_tile[1]}v")
        if self.k_unroll is not None:
            parts.append(f"unroll {self.k_unroll}")
        if self.nontemporal:
            parts.append("nt")
        if self.prefetch != 1:
            parts.append(f"pf{self.prefetch}")
        return " ".join(parts)

    def choice(self) -> ContractionSchedule:
        """The replayable part (no prediction)."""
        return replace(self, predicted=None)


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """The optimiser's choices for one kernel, its sizes, target and thread count."""

    kernel: str
    sizes: tuple[tuple[str, int], ...]
    target: str  # LLVM CPU name
    threads: int
    lowering: str = "split"  # guarded contractions: "split" guards or "gather" their operand
    contractions: tuple[ContractionSchedule, ...] = ()
    alternatives: tuple[tuple[str, tuple[ContractionSchedule, ...]], ...] = field(default=())
    version: int = SCHEDULE_VERSION

    def __post_init__(self) -> None:
        if self.lowering not in LOWERINGS:
            raise ScheduleError(f"schedule lowering must be one of {LOWERINGS}: {self.lowering!r}")
        names = [c.stmt for c in self.contractions]
        if len(set(names)) != len(names):
            raise ScheduleError(f"schedule of {self.kernel}: contractions {names} repeat a name")

    def entry(self, stmt: str) -> ContractionSchedule | None:
        return next((c for c in self.contractions if c.stmt == stmt), None)

    def choices(self) -> Schedule:
        """The replayable record: the chosen plans, without predictions or alternatives."""
        return replace(
            self, contractions=tuple(c.choice() for c in self.contractions), alternatives=()
        )

    # ------------------------------------------------------------ JSON

    def to_json(self, *, indent: int | None = 1) -> str:
        d = asdict(self)
        for c in [*d["contractions"], *(c for _, alts in d["alternatives"] for c in alts)]:
            for name, default in OPTIONAL_FIELDS.items():
                if c[name] == default:
                    del c[name]
        return json.dumps(d, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScheduleError(f"schedule record is not JSON: {e}") from None
        if not isinstance(d, dict) or d.get("version") != SCHEDULE_VERSION:
            got = d.get("version") if isinstance(d, dict) else type(d).__name__
            raise ScheduleError(
                f"schedule record version {got!r}: this polydl reads version {SCHEDULE_VERSION}"
            )
        try:
            return cls(
                kernel=d["kernel"],
                sizes=tuple((str(k), int(v)) for k, v in d["sizes"]),
                target=d["target"],
                threads=int(d["threads"]),
                lowering=d["lowering"],
                contractions=tuple(_contraction(c) for c in d["contractions"]),
                alternatives=tuple(
                    (stmt, tuple(_contraction(c) for c in alts)) for stmt, alts in d["alternatives"]
                ),
                version=d["version"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ScheduleError(f"schedule record is malformed: {e!r}") from None


def _contraction(d: dict) -> ContractionSchedule:
    p = d.get("predicted")
    return ContractionSchedule(
        stmt=d["stmt"],
        bm=int(d["bm"]),
        bn=int(d["bn"]),
        bk=int(d["bk"]),
        loops=tuple((str(v), int(b)) for v, b in d["loops"]),
        n_parallel=int(d["n_parallel"]),
        what=d.get("what", ""),
        predicted=Prediction(**p) if p else None,
        pack=bool(d.get("pack", True)),
        register_tile=_tile(d.get("register_tile")),
        k_unroll=None if d.get("k_unroll") is None else int(d["k_unroll"]),
        prefetch=int(d.get("prefetch", 1)),
        nontemporal=bool(d.get("nontemporal", False)),
    )


def _tile(v) -> tuple[int, int] | None:
    if v is None:
        return None
    rows, vectors = v
    return int(rows), int(vectors)


def as_schedule(record) -> Schedule:
    """A :class:`Schedule` from a record, its JSON text, or a path to a JSON file."""
    if isinstance(record, Schedule):
        return record
    if isinstance(record, str) and record.lstrip().startswith("{"):
        return Schedule.from_json(record)
    try:
        with open(record) as f:
            return Schedule.from_json(f.read())
    except OSError as e:
        raise ScheduleError(f"schedule record {record!r}: {e}") from None


# ---------------------------------------------------------------- the table


def format_table(rows: Sequence[tuple]) -> str:
    """The ranked-variants table: one row per ``(rank, loops, n_parallel, tiles, working sets,
    cost)``, cheapest first (``show("variants")``; ``optimize/search.format_variants``)."""
    head = ("rank", "loop order", "tiles", "parallel", "working sets", "cost", "vs best")
    if not rows:
        return " | ".join(head) + "\n(no legal variant)"
    best = rows[0][5] or 1.0
    body = [
        (
            str(rank),
            _order(loops),
            " ".join(f"{v}:{b}" for v, b in tiles) or "-",
            ",".join(v if b == 1 else f"{v}/{b}" for v, b in loops[:n_par]) or "-",
            ws or "-",
            f"{cost:.4g}",
            f"{cost / best:.2f}x",
        )
        for rank, loops, n_par, tiles, ws, cost in rows
    ]
    widths = [max(len(row[c]) for row in [head, *body]) for c in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [head, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_alternatives(rows: Sequence[ContractionSchedule]) -> str:
    """Ranked alternatives as a table, in rank order (what ``show("variants")`` prints)."""
    return format_table(
        [
            (
                r.predicted.rank if r.predicted else "-",
                r.loops,
                r.n_parallel,
                r.tiles,
                r.predicted.working_sets if r.predicted else "",
                r.predicted.cost if r.predicted else float("nan"),
            )
            for r in rows
        ]
    )


def _order(loops) -> str:
    return " ".join(v if b == 1 else f"{v}/{b}" for v, b in loops) + " | micro"


def format_schedule(s: Schedule, *, tuned: str | None = None) -> str:
    """``show("variants")``: the lowering, then each contraction's ranked alternatives;
    ``tuned`` (where a tuned record came from, or why none was used) heads the text."""
    parts = [f"lowering: {s.lowering} (kernel {s.kernel}, target {s.target}, {s.threads} threads)"]
    if tuned:
        parts.insert(0, f"tuned: {tuned}")
    alts = dict(s.alternatives)
    for c in s.contractions:
        rank = c.predicted.rank if c.predicted else None
        how = f"running rank {rank}" if rank else "default plan (not ranked)"
        if tuned and not s.alternatives:
            how = "running the tuned plan"
        rows = alts.get(c.stmt, ())
        line = f"contraction {c.stmt} ({c.what}), {how}, {c.order}"
        line += "" if c.pack else " (B not packed)"
        line += f" (microkernel: {c.micro})" if c.micro else ""
        parts.append(line + (":\n" + format_alternatives(rows) if rows else ""))
    return "\n\n".join(parts)
