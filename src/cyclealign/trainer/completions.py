"""The completion table (``log_completions``): the latest step's rounds at every log, printed
the way TRL's ``print_prompt_completions_sample`` prints them and sent to the trackers in
``report_to`` that take tables (wandb, trackio), as TRL's ``GRPOTrainer`` does."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from ..prompts import dialogue_text

__all__ = ["COLUMNS", "completion_table", "log_completion_table"]

logger = logging.getLogger(__name__)

#: The table's columns after ``step``: one row per prompt per round.
COLUMNS = ("prompt", "responses", "ranking", "whitebox_ranking", "agreement", "better_response")


def completion_table(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Round-log rows (:func:`~cyclealign.trainer.round_log.log_row`) as table columns of
    strings and ints: ``step`` and :data:`COLUMNS` (responses numbered as the ranker saw them;
    a failed ranking is ``[]``)."""
    return {
        "step": [int(r["step"]) for r in rows],
        "prompt": [dialogue_text(r["messages"]) for r in rows],
        "responses": ["\n".join(f"[{i}] {t}" for i, t in enumerate(r["responses"])) for r in rows],
        "ranking": [str(r["ranking"]) for r in rows],
        "whitebox_ranking": [str(r["whitebox_ranking"]) for r in rows],
        "agreement": [str(r["agreement"]) for r in rows],
        "better_response": [r["better_response"] for r in rows],
    }


def _print(table: dict[str, list[Any]], step: int, num_rows: int | None) -> None:
    indices = list(range(len(table["step"])))
    if num_rows is not None and num_rows < len(indices):
        # A generator of its own: printing must not move the training's global RNG.
        indices = sorted(random.Random(step).sample(indices, num_rows))
    if not indices:
        return
    column = {name: [table[name][i] for i in indices] for name in table}
    try:
        from trl.trainer.utils import print_prompt_completions_sample

        print_prompt_completions_sample(
            column["prompt"],
            column["responses"],
            rewards={},
            advantages=None,
            step=step,
            extra={
                "black box": column["ranking"],
                "white box": column["whitebox_ranking"],
                "agreement": column["agreement"],
                "better response": column["better_response"],
            },
        )
    except ImportError:  # no rich: plain log lines
        for i in range(len(indices)):
            logger.info("step %d completions %s", step, {c: column[c][i] for c in COLUMNS})


def _trackers(report_to: Sequence[str] | None) -> list[Any]:
    """The tracker modules in ``report_to`` that take tables and have a run."""
    found = []
    if report_to and "wandb" in report_to:
        try:
            import wandb
        except ImportError:
            wandb = None
        if wandb is not None and wandb.run is not None:
            found.append(wandb)
    if report_to and "trackio" in report_to:
        import trackio

        found.append(trackio)
    return found


def log_completion_table(
    rows: Sequence[dict[str, Any]], step: int, report_to: Sequence[str] | None, num_rows: int | None
) -> None:
    """Print ``num_rows`` of ``rows`` (all when ``None``) and log every row as a
    ``completions`` table to the trackers. Main process only."""
    if not rows:
        return
    table = completion_table(rows)
    _print(table, step, num_rows)
    trackers = _trackers(report_to)
    if trackers:
        import pandas as pd

        frame = pd.DataFrame(table)
        for tracker in trackers:
            tracker.log({"completions": tracker.Table(dataframe=frame)})
