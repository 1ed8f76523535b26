"""SampleTableCallback reports the latest round's samples on the main process."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from transformers import TrainerControl, TrainerState

from cyclealign.trainer.callbacks import SampleTableCallback

ROW = {"step": 3, "round": 1, "prompt": "p", "responses": ["a", "b"], "ranking": [1, 0],
       "whitebox_ranking": [0, 1], "agreement": [1]}  # fmt: skip


def test_logs_a_line_per_sample_up_to_max_rows(caplog):
    callback = SampleTableCallback(lambda: [ROW] * 5, max_rows=2)
    state = TrainerState()
    with caplog.at_level(logging.INFO, logger="cyclealign.trainer.callbacks"):
        callback.on_log(SimpleNamespace(report_to=[]), state, TrainerControl(), logs={})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "'ranking': '[1, 0]'" in lines[0] and "'prompt': 'p'" in lines[0]


def test_only_the_main_process_reports(caplog):
    callback = SampleTableCallback(lambda: [ROW])
    state = TrainerState()
    state.is_world_process_zero = False
    with caplog.at_level(logging.INFO, logger="cyclealign.trainer.callbacks"):
        callback.on_log(SimpleNamespace(report_to=[]), state, TrainerControl(), logs={})
        SampleTableCallback(lambda: []).on_log(
            SimpleNamespace(report_to=[]), TrainerState(), TrainerControl(), logs={}
        )
    assert caplog.records == []
