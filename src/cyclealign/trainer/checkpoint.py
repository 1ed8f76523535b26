"""CycleAlign's own state in a checkpoint: the demonstration pool and the rankers' state.

The Trainer saves weights, optimizer, scheduler and RNG states; this file adds what it does
not know about, so that ``train(resume_from_checkpoint=...)`` shows the black box the same
demonstrations and keeps counting usage where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..demonstrations import DemonstrationPool
    from ..rankers.base import BlackBoxRanker

__all__ = ["CYCLE_STATE_NAME", "restore_cycle_state", "save_cycle_state"]

logger = logging.getLogger(__name__)

CYCLE_STATE_NAME = "cyclealign_state.json"
_VERSION = 1


def save_cycle_state(
    checkpoint_dir: str, pool_state: dict[str, Any], ranker_states: list[dict[str, Any]]
) -> str:
    """Write ``cyclealign_state.json``; ``ranker_states`` has one entry per process."""
    os.makedirs(checkpoint_dir, exist_ok=True)
    path = os.path.join(checkpoint_dir, CYCLE_STATE_NAME)
    state = {"version": _VERSION, "pool": pool_state, "rankers": ranker_states}
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, ensure_ascii=False)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated state behind
    return path


def restore_cycle_state(
    checkpoint_dir: str,
    process_index: int,
    *,
    pool: DemonstrationPool,
    ranker: BlackBoxRanker | None,
) -> bool:
    """Load the checkpoint's pool, and this process's ranker state, in place; ``False`` (with a
    warning) when the checkpoint has none.

    A run resumed on more processes than it was saved with gives the extra processes the
    first process's ranker state.
    """
    path = os.path.join(checkpoint_dir, CYCLE_STATE_NAME)
    if not os.path.isfile(path):
        logger.warning(
            "%s has no %s: resuming with an empty demonstration pool and fresh ranker usage.",
            checkpoint_dir,
            CYCLE_STATE_NAME,
        )
        return False
    with open(path, encoding="utf-8") as handle:
        state = json.load(handle)
    if state.get("pool") is not None:
        pool.load_state_dict(state["pool"])
    rankers = state.get("rankers") or [None]
    ranker_state = rankers[process_index] if process_index < len(rankers) else rankers[0]
    if ranker_state is not None and ranker is not None:
        ranker.load_state_dict(ranker_state)
    return True
