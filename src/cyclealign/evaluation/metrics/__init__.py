"""Local ``evaluate`` metric modules (hub metrics cannot be downloaded on offline machines).

Each file here is a self-contained ``evaluate.Metric``; :func:`load_metric` loads one by name
from this folder, so ``evaluate`` never goes to the hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("pairwise_win_rate", "ranking_accuracy")


def metric_path(name: str) -> Path:
    """The file of metric ``name``, usable as ``evaluate.load(str(metric_path(name)))``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; available: {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / f"{name}.py"


def load_metric(name: str) -> Any:
    """Load metric ``name`` with ``evaluate.load`` from its local file."""
    import evaluate

    return evaluate.load(str(metric_path(name)))
