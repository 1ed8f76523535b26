"""Round-log rows keep one type per column and load with datasets."""

from __future__ import annotations

from datasets import load_dataset

from cyclealign.trainer.round_log import RoundLogWriter, log_row
from cyclealign.types import RankResult


def test_failures_successes_and_chat_prompts_load_together(tmp_path):
    writer = RoundLogWriter(str(tmp_path))
    messages = [{"role": "user", "content": "hi", "name": "bob"}]
    rows = [
        log_row(step=0, round_index=0, process_index=0, prompt=messages, rendered_prompt="<hi>",
                     responses=["a", "b"], result=RankResult(None, error="down", raw_text="503"),
                     whitebox_ranking=[1, 0], agreement=[]),
        log_row(step=0, round_index=1, process_index=1, prompt="plain", rendered_prompt="x",
                     responses=["c"], result=RankResult([0], scores=[1], better_response="d"),
                     whitebox_ranking=[0], agreement=[0]),
    ]  # fmt: skip
    writer.write(rows[:1])
    writer.write(rows[1:])
    writer.write([])
    data = load_dataset("json", data_files=writer.path, split="train")
    assert len(data) == 2
    assert data["prompt"] == ["<hi>", "plain"]
    assert data["messages"][0] == [{"role": "user", "content": "hi"}]
    assert data["messages"][1] == [{"role": "user", "content": "plain"}]
    assert data["ranking"] == [[], [0]] and data["error"] == ["down", ""]
    assert data["scores"] == [[], [1.0]] and data["better_response"] == ["", "d"]
    assert data["raw_text"] == ["503", ""] and data["round"] == [0, 1]
    # What the black box was shown: the dialogue, after truncation when there was one.
    assert data["ranker_prompt"] == ["Human: hi", "plain"]
    cut = log_row(step=0, round_index=0, process_index=0, prompt="a long prompt",
                  rendered_prompt="x", responses=["c"], result=RankResult([0]),
                  whitebox_ranking=[0], agreement=[0], ranker_prompt="[...] prompt")  # fmt: skip
    assert cut["ranker_prompt"] == "[...] prompt" and cut["prompt"] == "a long prompt"
