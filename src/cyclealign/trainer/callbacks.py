"""A callback that shows a few of the latest round's samples next to the metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

__all__ = ["SampleTableCallback"]

logger = logging.getLogger(__name__)

COLUMNS = ["step", "round", "prompt", "responses", "ranking", "whitebox_ranking", "agreement"]


class SampleTableCallback(TrainerCallback):
    """On each log, report up to ``max_rows`` samples of the latest round.

    To wandb as a ``wandb.Table`` when ``"wandb"`` is in ``report_to`` and a run is active,
    otherwise as an INFO log line per sample. Only the main process reports.

    Args:
        get_samples: returns the latest round's records (round-log rows, see
            :func:`cyclealign.trainer.round_log.log_row`).
        max_rows: samples per report.
    """

    def __init__(self, get_samples: Callable[[], list[dict[str, Any]]], max_rows: int = 4) -> None:
        self.get_samples = get_samples
        self.max_rows = max_rows

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        rows = [[_cell(r.get(c)) for c in COLUMNS] for r in self.get_samples()[: self.max_rows]]
        if not rows:
            return
        if "wandb" in (args.report_to or []):
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None and wandb.run is not None:
                wandb.log({"cyclealign/samples": wandb.Table(columns=COLUMNS, data=rows)})
                return
        for row in rows:
            logger.info("cyclealign sample %s", dict(zip(COLUMNS, row)))


def _cell(value: Any) -> Any:
    # wandb tables want scalars or strings per cell.
    return value if isinstance(value, (int, float, str)) else repr(value)
