"""Ranked data: row checks, round logs as ranked data, extra scored candidates."""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset

from cyclealign.data import load_hh_rlhf
from cyclealign.data.ranked import (
    add_candidates,
    from_round_log,
    is_round_log,
    load_round_log,
    row_rewards,
    sample_and_score,
)
from cyclealign.trainer.round_log import RoundLogWriter, log_row
from cyclealign.types import RankResult
from helpers import HH_DIR, build_tiny_model, build_tiny_reward_model


def test_row_rewards_from_rewards_or_ranking():
    assert row_rewards({"responses": ["a", "b"], "rewards": [0.1, 2]}, "r") == [0.1, 2.0]
    # ranking [2, 0, 1]: response 2 best (reward 2), then 0 (1), then 1 (0)
    assert row_rewards({"responses": ["a", "b", "c"], "ranking": [2, 0, 1]}, "r") == [1, 0, 2]
    with pytest.raises(ValueError, match="my row has non-finite rewards"):
        row_rewards({"responses": ["a", "b"], "rewards": [1.0, float("nan")]}, "my row")
    with pytest.raises(ValueError, match="must be a list of strings"):
        row_rewards({"responses": "ab", "rewards": [1.0, 0.0]}, "r")
    with pytest.raises(ValueError, match="neither 'rewards' nor 'ranking'"):
        row_rewards({"responses": ["a", "b"]}, "r")
    with pytest.raises(ValueError, match=r"ranking must be a permutation of 0\.\.1.*got \[0, 2\]"):
        row_rewards({"responses": ["a", "b"], "ranking": [0, 2]}, "r")


CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bake bread?"},
]
HH = "\n\nHuman: Tell me a joke.\n\nAssistant:"


def write_log(path, tokenizer, rows):
    RoundLogWriter(str(path)).write(
        [
            log_row(
                step=0,
                round_index=0,
                process_index=0,
                prompt=prompt,
                rendered_prompt=tokenizer.apply_chat_template(
                    CHAT, tokenize=False, add_generation_prompt=True
                ),
                responses=responses,
                result=result,
                whitebox_ranking=list(range(len(responses))),
                agreement=[],
            )
            for prompt, responses, result in rows
        ]
    )
    return path / "round_log.jsonl"


def test_round_log_drops_failed_rows_and_gives_back_string_prompts(
    tmp_path, tiny_tokenizer, caplog
):
    rows = [
        ("plain prompt", ["a", "b", "c"], RankResult([1, 2, 0])),
        (HH, ["x", "y"], RankResult([0, 1])),
        ("failed", ["a", "b"], RankResult(None, error="timeout")),
        ("one response", ["a"], RankResult([0])),
    ]
    with caplog.at_level(logging.WARNING, logger="cyclealign.data"):
        data = load_round_log(write_log(tmp_path, tiny_tokenizer, rows))
    assert "dropped 2 of 4 rows" in caplog.text  # the failed ranking and the single response
    assert data.column_names == ["prompt", "responses", "ranking"]
    assert data["responses"] == [["a", "b", "c"], ["x", "y"]]
    assert data["ranking"] == [[1, 2, 0], [0, 1]]
    # Strings come back as strings (an HH-style one too, not wrapped in a user turn).
    assert data["prompt"] == ["plain prompt", HH]


def test_round_log_chat_prompts_come_back_as_messages(tmp_path, tiny_tokenizer):
    import datasets

    rows = [(CHAT, ["m", "n"], RankResult([1, 0])), ("plain", ["a", "b"], RankResult([0, 1]))]
    path = write_log(tmp_path, tiny_tokenizer, rows)
    log = datasets.load_dataset("json", data_files=str(path), split="train")
    assert is_round_log(log.column_names)
    assert not is_round_log(["prompt", "responses", "ranking"])
    assert from_round_log(log.select([0]))["prompt"] == [CHAT]
    # A log with both kinds (two runs appended): messages for every row, one column type.
    assert from_round_log(log)["prompt"] == [CHAT, [{"role": "user", "content": "plain"}]]


def test_add_candidates_extends_rows_and_names_mismatches():
    data = Dataset.from_dict(
        {"prompt": ["p", "q"], "responses": [["a", "b"], ["c", "d"]], "ranking": [[1, 0], [0, 1]]}
    )
    extended = add_candidates(data, [["e"], []], [[0.5], []])
    assert extended.column_names == ["prompt", "responses", "rewards"]
    assert extended["responses"] == [["a", "b", "e"], ["c", "d"]]
    assert extended["rewards"] == [[0.0, 1.0, 0.5], [1.0, 0.0]]
    with pytest.raises(ValueError, match="one \\(possibly empty\\) list per row"):
        add_candidates(data, [["e"]], [[0.5], []])
    with pytest.raises(ValueError, match="row 1 has 1 candidates but 2 scores"):
        add_candidates(data, [[], ["e"]], [[], [0.1, 0.2]])


def test_sampled_candidates_scored_by_a_reward_model_join_hh_rlhf_pairs(tiny_tokenizer):
    from cyclealign.rankers import RewardModelRanker

    data = load_hh_rlhf(
        HH_DIR, subsets=["helpful-online"], split="test", num_samples=2, format="ranked"
    )
    scorer = RewardModelRanker(build_tiny_reward_model(tiny_tokenizer), tiny_tokenizer)
    side = tiny_tokenizer.padding_side
    samples, scores = sample_and_score(
        data,
        build_tiny_model(tiny_tokenizer),
        tiny_tokenizer,
        scorer.score,
        num_samples=3,
        max_completion_length=5,
    )
    assert tiny_tokenizer.padding_side == side  # the caller's tokenizer is left alone
    assert [len(s) for s in samples] == [3, 3] and [len(s) for s in scores] == [3, 3]
    assert scores[1] == pytest.approx(scorer.score([data[1]["prompt"]] * 3, samples[1]), abs=1e-5)
    extended = add_candidates(data, samples, scores)
    assert extended[0]["responses"] == [*data[0]["responses"], *samples[0]]
    assert extended[0]["rewards"] == pytest.approx([1.0, 0.0, *scores[0]])
    with pytest.raises(ValueError, match="score_fn gave 1 scores for 6"):
        sample_and_score(
            data, build_tiny_model(tiny_tokenizer), tiny_tokenizer, lambda p, c: [0.0], 3, 2
        )
