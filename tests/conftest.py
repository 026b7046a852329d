"""Test-wide settings: the IR verifier runs between the compiler's passes; short bound budgets;
a tuning database of each test's own."""

import pytest

import polydl.pipeline

polydl.pipeline.VERIFY = True


@pytest.fixture(autouse=True)
def _short_bounds(monkeypatch):
    """Short time budgets for the partitioner's MILP and configuration bounds (any budget gives
    a valid bound); a test that needs more sets its own."""
    monkeypatch.setenv("POLYDL_MILP_SECONDS", "0.05")
    monkeypatch.setenv("POLYDL_LP_SECONDS", "0.2")


@pytest.fixture(autouse=True)
def _tune_db(monkeypatch, tmp_path):
    """No test reads or writes the user's tuning database: pd.compile's lookup of tuned records
    and pd.tune's default database are a file of the test's own (POLYDL_TUNE_DB)."""
    monkeypatch.setenv("POLYDL_TUNE_DB", str(tmp_path / "tune.sqlite"))


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/*.txt from the current compiler (then review the diff)",
    )
