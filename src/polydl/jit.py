"""llvmlite behind a small interface: verify, optimise, JIT or emit assembly, for any LLVM CPU.

Every module polydl generates goes through :func:`build`: it is parsed and verified first (a
broken template fails here, with the IR line llvmlite names), optimised at O3 for the chosen CPU
with the new pass manager, then either JIT-compiled with MCJIT (one target machine per engine,
since the engine takes ownership of it) or only turned into assembly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
from dataclasses import dataclass, field

import llvmlite.binding as llvm

from .errors import TargetError

_lock = threading.Lock()


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


@functools.cache
def emulated_host() -> str | None:
    """``POLYDL_HOST``: an LLVM CPU this process takes as its host (plans for, compiles for and
    reports the features of), e.g. ``haswell`` on an AVX-512 machine to run everything on the
    AVX2 paths (``tests/avx2_host.py``). Its code must run here: its features must be a subset
    of this machine's (``TargetError`` otherwise). Read once, at the first question."""
    cpu = os.environ.get("POLYDL_HOST", "").strip()
    return cpu or None


@functools.cache
def host_cpu() -> str:
    _init()
    cpu = emulated_host()
    if cpu is None:
        return llvm.get_host_cpu_name()
    real = frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)
    missing = cpu_features(cpu) - real
    if not cpu_features(cpu) or missing:
        raise TargetError(
            f"POLYDL_HOST={cpu!r}: "
            + (f"needs {sorted(missing)}, which this machine lacks" if missing else "unknown CPU")
        )
    return cpu


@functools.cache
def host_features() -> frozenset[str]:
    _init()
    if emulated_host() is not None:
        return cpu_features(host_cpu())
    return frozenset(k for k, v in llvm.get_host_cpu_features().items() if v)


def host_feature_string() -> str:
    """The LLVM feature string of the host (empty for an emulated host: its CPU's defaults)."""
    _init()
    if emulated_host() is not None:
        host_cpu()  # validates it
        return ""
    return llvm.get_host_cpu_features().flatten()


def resolve_cpu(target: str | None) -> tuple[str, str]:
    """(cpu, features) for a target name; ``None`` or ``"host"`` is this machine."""
    if target in (None, "host", "native") or target == host_cpu():
        return host_cpu(), host_feature_string()
    return target, ""


def _target_machine(cpu: str, features: str, *, jit: bool) -> llvm.TargetMachine:
    _init()
    triple = llvm.get_process_triple()
    tgt = llvm.Target.from_triple(triple)
    tm = tgt.create_target_machine(
        cpu=cpu, features=features, opt=3, reloc="default", codemodel="jitdefault", jit=jit
    )
    return tm


_AVX2 = frozenset({"avx", "avx2", "fma"})
_AVX512 = _AVX2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
# The ISA features a named CPU implies, for the host check before running its code.
_CPU_FEATURES = {
    **dict.fromkeys(
        ("haswell", "broadwell", "skylake", "znver1", "znver2", "znver3", "x86-64-v3"), _AVX2
    ),
    **dict.fromkeys(
        (
            "skylake-avx512",
            "cascadelake",
            "icelake-server",
            "icelake-client",
            "tigerlake",
            "x86-64-v4",
        ),
        _AVX512,
    ),
    **dict.fromkeys(("cooperlake", "znver4", "znver5"), _AVX512 | {"avx512bf16"}),
    "sapphirerapids": _AVX512 | {"avx512bf16", "amx-tile", "amx-bf16"},
}


def cpu_features(cpu: str) -> frozenset[str]:
    """The vector ISA features code compiled for ``cpu`` may use (empty if unknown)."""
    return _CPU_FEATURES.get(cpu, frozenset())


def check_runnable(cpu: str) -> None:
    """Raise TargetError if code compiled for ``cpu`` may not run on this host."""
    if cpu == host_cpu():
        return
    missing = cpu_features(cpu) - host_features()
    if missing:
        raise TargetError(
            f"target {cpu!r} needs CPU features {sorted(missing)} that this host "
            f"({host_cpu()}) lacks: compile with target=None to run here, or use show('asm')"
        )


def _parse(ir: str, name: str) -> llvm.ModuleRef:
    try:
        mod = llvm.parse_assembly(ir)
        mod.verify()
    except RuntimeError as e:
        raise RuntimeError(f"polydl generated invalid LLVM IR for {name}: {e}\n{ir}") from e
    return mod


def _optimise(mod: llvm.ModuleRef, tm: llvm.TargetMachine) -> None:
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)


@dataclass
class JitModule:
    """A compiled module kept alive with its engine; ``address`` gives function pointers."""

    name: str
    cpu: str
    llvm_ir: str
    _engine: object = field(repr=False)
    features: str = field(default="", repr=False)
    _asm: str | None = field(default=None, repr=False)
    _opt: str | None = field(default=None, repr=False)
    _tm_args: tuple = field(default=(), repr=False)

    @property
    def optimized_ir(self) -> str:
        """The module after O3 (recomputed on first use: printing it costs JIT time)."""
        if self._opt is None:
            self._opt = optimized_ir(
                self.llvm_ir, cpu=self.cpu, features=self.features, name=self.name
            )
        return self._opt

    def address(self, fn: str) -> int:
        addr = self._engine.get_function_address(fn)
        if not addr:
            raise KeyError(f"no function {fn!r} in JIT module {self.name}")
        return addr

    def cfunc(self, fn: str, restype, *argtypes):
        return ctypes.CFUNCTYPE(restype, *argtypes)(self.address(fn))

    def asm(self) -> str:
        if self._asm is None:
            self._asm = emit_asm(self.llvm_ir, cpu=self.cpu, name=self.name)
        return self._asm


def _prepared(ir: str, cpu: str, features: str, name: str, *, jit: bool):
    """A verified module optimised at O3 for ``cpu``, with its target machine (hold _lock)."""
    tm = _target_machine(cpu, features, jit=jit)
    mod = _parse(ir, name)
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    _optimise(mod, tm)
    return tm, mod


def emit_asm(ir: str, *, cpu: str, features: str = "", name: str = "module") -> str:
    """Optimise and print assembly for any LLVM CPU, without running anything."""
    with _lock:
        tm, mod = _prepared(ir, cpu, features, name, jit=False)
        return tm.emit_assembly(mod)


def optimized_ir(ir: str, *, cpu: str, features: str = "", name: str = "module") -> str:
    """The module after verification and O3 for ``cpu`` (what ``show("llvm-opt")`` prints)."""
    with _lock:
        return str(_prepared(ir, cpu, features, name, jit=False)[1])


def build(ir: str, *, target: str | None = None, name: str = "module") -> JitModule:
    """Verify, optimise and JIT-compile ``ir`` for ``target`` (None: host). Thread-safe."""
    cpu, features = resolve_cpu(target)
    check_runnable(cpu)
    if gomp_available():
        load_gomp()
    with _lock:
        tm, mod = _prepared(ir, cpu, features, name, jit=True)
        engine = llvm.create_mcjit_compiler(mod, tm)
        engine.finalize_object()
        engine.run_static_constructors()
    return JitModule(name=name, cpu=cpu, llvm_ir=ir, features=features, _engine=engine)


def emit_object(ir: str, *, target: str | None = None, name: str = "module") -> bytes:
    """The native object code :func:`build` would JIT for ``ir`` (the same O3 pipeline, target
    machine and code model), for :func:`load_object` in another process: the tuner compiles
    the next candidate in a builder process while the current one is timed."""
    cpu, features = resolve_cpu(target)
    with _lock:
        tm, mod = _prepared(ir, cpu, features, name, jit=True)
        return bytes(tm.emit_object(mod))


def load_object(obj: bytes, *, ir: str, target: str | None = None, name: str = "module"):
    """A :class:`JitModule` of object code from :func:`emit_object` of ``ir`` (only linked
    here: no optimisation, no code generation)."""
    cpu, features = resolve_cpu(target)
    check_runnable(cpu)
    if gomp_available():
        load_gomp()
    with _lock:
        tm = _target_machine(cpu, features, jit=True)
        empty = llvm.parse_assembly("")
        empty.triple = tm.triple
        engine = llvm.create_mcjit_compiler(empty, tm)
        engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        engine.finalize_object()
    return JitModule(name=name, cpu=cpu, llvm_ir=ir, features=features, _engine=engine)


@functools.cache
def _gomp_path() -> str | None:
    return ctypes.util.find_library("gomp")


def gomp_available() -> bool:
    return _gomp_path() is not None


@functools.cache
def load_gomp() -> None:
    """Make libgomp's GOMP_parallel and omp_* symbols visible to JIT modules."""
    # libgomp's default idle spinning can cost a whole scheduler time slice per parallel region
    # when the cores are shared (measured here: 8 ms instead of 10 us for a tiny region); bound
    # it unless the user chose a policy. Read once, when libgomp initialises.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "100000")
    path = _gomp_path()
    if path is None:
        raise TargetError(
            "libgomp is not installed: threads > 1 needs it (apt-get install libgomp1)"
        )
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    llvm.load_library_permanently(path)
