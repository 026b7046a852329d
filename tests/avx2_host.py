"""Run the test suite as if this host were an AVX2-only CPU (``haswell``).

    PYTHONPATH=src python tests/avx2_host.py -q -n 2 tests

On an AVX-512 machine this checks that nothing assumes AVX-512 (ISA family, layout blocks,
microkernel choice); the code compiled for ``haswell`` still runs here. It sets
``POLYDL_HOST=haswell`` (``polydl/jit.emulated_host``): the host Target, the JIT and the
microkernel selection all see a haswell; nothing is monkeypatched. Not collected by pytest.
"""

from __future__ import annotations

import os
import sys

import pytest

if __name__ == "__main__":
    os.environ["POLYDL_HOST"] = "haswell"  # inherited by pytest-xdist's workers
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
