"""The target model: presets, host detection from sysfs and llvmlite, resolve()."""

from __future__ import annotations

import dataclasses
import os

import pytest

from polydl import jit
from polydl import target as T
from polydl.errors import TargetError

K, M = 1024, 1024 * 1024


@pytest.mark.parametrize(
    "name,isa,bits,regs,sizes,shared",
    [
        ("znver3", "avx2", 256, 16, (32 * K, 512 * K, 32 * M), (False, False, True)),
        (
            "skylake-avx512",
            "avx512",
            512,
            32,
            (32 * K, 1 * M, 38 * M + 512 * K),
            (False, False, True),
        ),
        ("icelake-server", "avx512", 512, 32, (48 * K, 1280 * K, 60 * M), (False, False, True)),
    ],
)
def test_presets(name, isa, bits, regs, sizes, shared):
    t = T.PRESETS[name]
    assert (t.name, t.llvm_cpu, t.isa, t.vector_bits, t.vector_registers) == (
        name,
        name,
        isa,
        bits,
        regs,
    )
    assert t.fma
    assert tuple(c.size_bytes for c in t.caches) == sizes
    assert tuple(c.shared for c in t.caches) == shared
    assert [c.level for c in t.caches] == [1, 2, 3]
    assert all(c.line_bytes == 64 for c in t.caches)
    assert list(t.byte_costs) == sorted(t.byte_costs) and t.byte_costs[0] == 1.0
    assert len(t.byte_costs) == 4
    assert t.cores > 1 and t.peak_gflops and t.peak_gflops > 0
    assert t.lanes() == bits // 32 and t.lanes(8) == bits // 64
    # the ISA agrees with what LLVM says the CPU can do
    assert T.isa_of(jit.cpu_features(name)) == isa


def test_host_detection_is_sane():
    h = T.host()
    assert h.llvm_cpu == jit.host_cpu()
    assert h.isa == T.isa_of(jit.host_features())
    assert h.vector_bits == {"avx512": 512, "avx2": 256, "generic": 128}[h.isa]
    assert h.fma == ("fma" in jit.host_features())
    assert h.cores == len(os.sched_getaffinity(0))
    assert h.caches, "no cache detected"
    assert h.caches[0].level == 1 and 8 * K <= h.caches[0].size_bytes <= 4 * M
    sizes = [c.size_bytes for c in h.caches]
    assert sizes == sorted(sizes)
    assert len(h.byte_costs) == len(h.caches) + 1
    assert T.resolve(None) is h and T.resolve("host") is h


def _write(p, text):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def test_read_caches_from_sysfs_tree(tmp_path):
    cpu = tmp_path / "cpu0"
    _write(cpu / "topology/thread_siblings_list", "0,8")
    rows = [
        ("index0", 1, "Data", "32K", "0,8"),
        ("index1", 1, "Instruction", "32K", "0,8"),
        ("index2", 2, "Unified", "512K", "0,8"),
        ("index3", 3, "Unified", "32768K", "0-7,8-15"),
    ]
    for d, level, kind, size, shared in rows:
        _write(cpu / "cache" / d / "level", str(level))
        _write(cpu / "cache" / d / "type", kind)
        _write(cpu / "cache" / d / "size", size)
        _write(cpu / "cache" / d / "shared_cpu_list", shared)
        _write(cpu / "cache" / d / "coherency_line_size", "64")
    caches = T.read_caches(cpu)
    assert [(c.level, c.size_bytes, c.shared) for c in caches] == [
        (1, 32 * K, False),  # used by two SMT siblings of one core: private
        (2, 512 * K, False),
        (3, 32 * M, True),
    ]
    assert T.read_caches(tmp_path / "nothing") == ()


def test_parsers():
    assert T.parse_size("48K") == 48 * K
    assert T.parse_size("1280K") == 1280 * K
    assert T.parse_size("48M") == 48 * M
    assert T.parse_size("4096") == 4096
    assert T.parse_cpu_list("0-3,8,10-11") == {0, 1, 2, 3, 8, 10, 11}
    assert T.parse_cpu_list("5") == {5}


def test_resolve_paths():
    ice = T.PRESETS["icelake-server"]
    assert T.resolve("icelake-server") is ice
    assert T.resolve(ice) is ice
    custom = dataclasses.replace(ice, name="mine", cores=3)
    assert T.resolve(custom) is custom
    hw = T.resolve("haswell")
    assert (hw.llvm_cpu, hw.isa, hw.vector_bits, hw.vector_registers) == (
        "haswell",
        "avx2",
        256,
        16,
    )
    spr = T.resolve("sapphirerapids")
    assert (spr.isa, spr.vector_bits) == ("avx512", 512)
    other = T.resolve("pentium4")
    assert (other.llvm_cpu, other.isa, other.fma) == ("pentium4", "generic", False)


@pytest.mark.parametrize("bad", [42, 3.5, b"znver3", ["znver3"], "", "two words"])
def test_resolve_errors(bad):
    with pytest.raises(TargetError):
        T.resolve(bad)


def test_target_validation():
    ice = T.PRESETS["icelake-server"]
    with pytest.raises(TargetError, match="isa"):
        dataclasses.replace(ice, isa="sse9")
    with pytest.raises(TargetError, match="byte_costs"):
        dataclasses.replace(ice, byte_costs=(1.0, 2.0))
    with pytest.raises(TargetError, match="order"):
        dataclasses.replace(ice, caches=tuple(reversed(ice.caches)))


def test_fit_and_capacity():
    ice = T.PRESETS["icelake-server"]
    l1, l2, l3 = ice.caches
    assert ice.fit(48 * K) is l1 and ice.fit(48 * K + 1) is l2
    assert ice.fit(2 * M) is l3 and ice.fit(61 * M) is None
    # a shared cache is divided between the cores that run; private ones are not
    assert ice.capacity(l3, threads=4) == 15 * M and ice.capacity(l2, threads=4) == l2.size_bytes
    assert ice.fit(20 * M, threads=4) is None and ice.fit(20 * M, threads=1) is l3
    assert ice.byte_cost(l1) == 1.0 and ice.byte_cost(None) == ice.byte_costs[-1]


def test_isa_facts_come_from_the_microkernel_families():
    """One declaration: a target's vector width, registers and register tile are its BRGEMM
    family's (kernels/isa.py), and its ISA is the family select_isa picks for its features."""
    from polydl.kernels import FAMILIES, select_isa

    for name, t in T.PRESETS.items():
        fam = FAMILIES[t.isa]
        assert t.family is fam and t.register_tile == fam.register_tile
        assert t.vector_bits == 32 * fam.vector_width and t.vector_registers == fam.registers
        assert t.isa == select_isa(jit.cpu_features(t.llvm_cpu)).name, name
    assert FAMILIES["avx512"].register_tile == (6, 64)
    assert FAMILIES["avx2"].register_tile == (6, 16)
    assert FAMILIES["generic"].register_tile == (6, 8)


def test_cache_budgets_and_cost_constants():
    ice, zen = T.PRESETS["icelake-server"], T.PRESETS["znver3"]
    assert ice.private_bytes() == 1280 * K and zen.private_bytes() == 512 * K
    assert ice.panel_bytes() == 320 * K and zen.panel_bytes() == 128 * K
    assert ice.share_bytes() == 60 * M // 40  # a core's share of the L3
    assert ice.scratch_bytes() == 1536 * K  # that share, above the private L2
    assert ice.l1_bytes_per_cycle == 128 and zen.l1_bytes_per_cycle == 64
    slow = dataclasses.replace(zen, fma=False)
    assert zen.fma_issue == 2 and slow.fma_issue == 1


def test_emulated_host_by_environment():
    """POLYDL_HOST picks the host CPU for the whole process (no monkeypatching): plans, code
    and microkernels for a haswell on any machine that can run haswell code."""
    import subprocess
    import sys

    probe = (
        "import polydl as pd, numpy as np; from polydl.target import host; "
        "from polydl.kernels import select_isa; t = host(); "
        "k = pd.compile(pd.ops.matmul(16, 32, 8), threads=1); "
        "c = np.zeros((16, 32), np.float32); a = np.ones((16, 8), np.float32); "
        "b = np.ones((8, 32), np.float32); k(c, a, b); "
        "print(t.llvm_cpu, t.isa, select_isa().name, k.cpu, float(c.sum()))"
    )
    env = {**os.environ, "POLYDL_HOST": "haswell"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["haswell", "avx2", "avx2", "haswell", str(16 * 32 * 8.0)]
    env["POLYDL_HOST"] = "no-such-cpu"
    bad = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "POLYDL_HOST='no-such-cpu'" in bad.stderr
