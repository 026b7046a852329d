"""Test-wide settings: the IR verifier runs between the compiler's passes; short bound budgets."""

import pytest

import polydl.pipeline

polydl.pipeline.VERIFY = True


@pytest.fixture(autouse=True)
def _short_bounds(monkeypatch):
    """Short time budgets for the partitioner's MILP and configuration bounds (any budget gives
    a valid bound); a test that needs more sets its own."""
    monkeypatch.setenv("POLYDL_MILP_SECONDS", "0.05")
    monkeypatch.setenv("POLYDL_LP_SECONDS", "0.2")


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/*.txt from the current compiler (then review the diff)",
    )
