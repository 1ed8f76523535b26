"""The pool and ranker state in a checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cyclealign.trainer.checkpoint import CYCLE_STATE_NAME, restore_cycle_state, save_cycle_state


class Holder:
    def __init__(self):
        self.state = None

    def load_state_dict(self, state):
        self.state = state


def test_roundtrip_per_process(tmp_path):
    pool = {"items": [{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 0]}]}
    rankers = [{"usage": {"requests": 3}}, {"usage": {"requests": 5}}]
    path = save_cycle_state(str(tmp_path / "checkpoint-2"), pool, rankers)
    assert json.loads(Path(path).read_text())["version"] == 1
    for process, expected in ((0, rankers[0]), (1, rankers[1]), (3, rankers[0])):
        # More processes than saved: the extra ones start from the first process's state.
        holder_pool, holder_ranker = Holder(), Holder()
        assert restore_cycle_state(
            str(tmp_path / "checkpoint-2"), process, pool=holder_pool, ranker=holder_ranker
        )
        assert holder_pool.state == pool and holder_ranker.state == expected
    assert not (tmp_path / "checkpoint-2" / (CYCLE_STATE_NAME + ".tmp")).exists()


def test_missing_state_warns_and_changes_nothing(tmp_path, caplog):
    holder = Holder()
    with caplog.at_level(logging.WARNING):
        assert not restore_cycle_state(str(tmp_path), 0, pool=holder, ranker=holder)
    assert holder.state is None and "empty demonstration pool" in caplog.text
