"""The CycleAlign paper's evaluation protocol: reward scores, pairwise judging, ranking accuracy.

Reports come as JSON, Markdown tables and a PNG of the training metrics (``report.py``).
Names are imported on first use so that ``import cyclealign.evaluation`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "generate_responses": ".protocol",
    "judge_template": ".protocol",
    "load_policy": ".protocol",
    "pairwise_judgement": ".protocol",
    "ranking_accuracy": ".protocol",
    "reward_table": ".protocol",
    "markdown_table": ".report",
    "plot_training_metrics": ".report",
    "training_curves": ".report",
    "load_metric": ".metrics",
    "run_evaluation": ".run",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .metrics import load_metric
    from .protocol import (
        generate_responses,
        judge_template,
        load_policy,
        pairwise_judgement,
        ranking_accuracy,
        reward_table,
    )
    from .report import markdown_table, plot_training_metrics, training_curves
    from .run import run_evaluation
