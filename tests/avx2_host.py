"""Run the test suite as if this host were an AVX2-only CPU (``haswell``).

    PYTHONPATH=src python tests/avx2_host.py tests -x

On an AVX-512 machine this checks that nothing assumes AVX-512 (ISA family, layout blocks,
microkernel choice); the code compiled for ``haswell`` still runs here. Not collected by pytest.
"""

from __future__ import annotations

import functools
import sys

import pytest

from polydl.codegen import jit

FEATURES = frozenset(
    "sse sse2 sse3 ssse3 sse4.1 sse4.2 avx avx2 fma f16c bmi bmi2 popcnt lzcnt movbe cx16".split()
)

if __name__ == "__main__":
    jit.host_cpu = functools.cache(lambda: "haswell")
    jit.host_features = functools.cache(lambda: FEATURES)
    jit.host_feature_string = lambda: ",".join("+" + f for f in sorted(FEATURES))
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
