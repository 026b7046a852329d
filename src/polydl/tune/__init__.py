"""Auto-tuning of a kernel's schedule for this machine: ``pd.tune`` (README "Tuning").

Roles, one module each: :mod:`.space` (the knobs a schedule record opens up, legal ranges),
:mod:`.strategy` (cost-model seeds, then model-guided evolution), :mod:`.model` (the analytic
cost model plus a residual learned from measurements), :mod:`.builder` (record -> compiled
kernel), :mod:`.runner` (measurement in a pinned worker process, checked against the
reference), :mod:`.ray_runner` (the same on a Ray cluster), :mod:`.database` (SQLite: trials
and tuned records per workload, machine and compiler version), :mod:`.tuner` (the loop),
:mod:`.command` (``polydl tune``).
"""

from .builder import Workload
from .database import Database, Trial, Tuned, default_path
from .runner import LocalRunner, Measure, Measurement
from .tuner import TuneInterrupted, TuneResult, tune

__all__ = [
    "Database",
    "LocalRunner",
    "Measure",
    "Measurement",
    "Trial",
    "TuneInterrupted",
    "TuneResult",
    "Tuned",
    "Workload",
    "default_path",
    "tune",
]
