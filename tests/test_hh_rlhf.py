"""The HH-RLHF loader on the real test splits in tests/data/hh-rlhf."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from cyclealign.data import HH_SUBSETS, load_hh_rlhf, split_dialogue
from helpers import HH_DIR

# Kept rows per subset of the test splits: raw rows minus the drops below. Each reason was
# also counted on its own, over every row and ignoring the others (a throwaway script over
# the raw files): 17 different prefixes, 11 empty replies, 36 identical replies, and no row
# has two reasons (an overlap would be two empty replies, or a row with a different prefix
# whose replies are also empty or identical). So the first-reason-wins precedence changes
# nothing on these files and the drops add up to 17 + 11 + 36 = 64.
RAW = {
    "harmless-base": 2312,
    "helpful-base": 2354,
    "helpful-online": 1137,
    "helpful-rejection-sampled": 2749,
}
DROPPED = {
    "harmless-base": {"different_prefix": 5, "empty_reply": 4},
    "helpful-base": {"different_prefix": 9, "empty_reply": 4, "identical_replies": 2},
    "helpful-online": {"empty_reply": 3, "identical_replies": 2},
    "helpful-rejection-sampled": {"different_prefix": 3, "identical_replies": 32},
}
KEPT = {s: RAW[s] - sum(DROPPED[s].values()) for s in RAW}
# Kept rows whose prompt had two turns of one speaker in a row (joined into one message).
MERGED = {
    "harmless-base": [667, 763, 1319, 1849],
    "helpful-base": [355, 991, 1132, 1355, 1683, 1847],
    "helpful-online": [],
    "helpful-rejection-sampled": [],
}


@pytest.fixture(scope="module")
def test_split():
    return load_hh_rlhf(HH_DIR, split="test", return_report=True)


def test_kept_counts_and_drop_summary(test_split, caplog):
    dataset, report = test_split
    assert report.rows == RAW
    assert (
        report.kept
        == KEPT
        == {
            "harmless-base": 2303,
            "helpful-base": 2339,
            "helpful-online": 1132,
            "helpful-rejection-sampled": 2714,
        }
    )
    assert len(dataset) == sum(KEPT.values()) == 8488
    for subset in HH_SUBSETS:
        counts = {k: v for k, v in report.dropped_counts(subset).items() if v}
        assert counts == DROPPED[subset]
    assert report.dropped_counts() == {
        "different_prefix": 17,
        "malformed": 0,
        "empty_reply": 11,
        "identical_replies": 36,
    }
    assert sum(report.dropped_counts().values()) == sum(RAW.values()) - len(dataset) == 64
    assert report.merged == MERGED
    with caplog.at_level(logging.INFO, logger="cyclealign.data"):
        load_hh_rlhf(HH_DIR, subsets=["helpful-online"], split="test")
    assert "helpful-online: 1137 rows, kept 1132, dropped empty_reply=3" in caplog.text


def test_dropped_indices_point_at_the_offending_rows(test_split):
    _, report = test_split
    path = HH_DIR / "helpful-rejection-sampled" / "test.jsonl.gz"
    with gzip.open(path, "rt") as handle:
        rows = [json.loads(line) for line in handle]
    for index in report.dropped["helpful-rejection-sampled"]["identical_replies"]:
        chosen, rejected = rows[index]["chosen"], rows[index]["rejected"]
        assert chosen.rsplit("\n\nAssistant:", 1)[1].strip() == (
            rejected.rsplit("\n\nAssistant:", 1)[1].strip()
        )


def test_prompts_are_alternating_dialogues_ending_with_the_human(test_split):
    dataset, _ = test_split
    for prompt in dataset["prompt"]:
        roles = [m["role"] for m in prompt]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"], roles
        assert all(m["content"] == m["content"].strip() for m in prompt)
    for chosen, rejected in zip(dataset["chosen"], dataset["rejected"]):
        assert chosen.strip() and rejected.strip() and chosen != rejected


def test_consecutive_turns_of_one_speaker_are_joined(test_split):
    dataset, _ = test_split
    path = HH_DIR / "harmless-base" / "test.jsonl.gz"
    with gzip.open(path, "rt") as handle:
        raw = [json.loads(line) for line in handle][763]["chosen"]
    # Row 763 is Human, Assistant, Assistant, Human, Assistant: the two assistant turns join.
    turns = split_dialogue(raw)
    assert [t["role"] for t in turns] == ["user", "assistant", "assistant", "user", "assistant"]
    # Found by content: dropped rows shift the positions of the kept ones.
    row = next(r for r in dataset if r["prompt"][0] == turns[0] and r["prompt"][-1] == turns[3])
    assert row["prompt"] == [
        turns[0],
        {"role": "assistant", "content": turns[1]["content"] + "\n\n" + turns[2]["content"]},
        turns[3],
    ]


def test_split_dialogue():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Bread?"
    assert split_dialogue(text) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bread?"},
    ]


def test_ranked_format_and_even_sampling():
    ranked = load_hh_rlhf(HH_DIR, split="test", num_samples=10, seed=1, format="ranked")
    assert ranked.column_names == ["prompt", "responses", "rewards", "subset"]
    assert all(r == [1.0, 0.0] for r in ranked["rewards"])
    assert [ranked["subset"].count(s) for s in HH_SUBSETS] == [3, 3, 2, 2]
    again = load_hh_rlhf(HH_DIR, split="test", num_samples=10, seed=1, format="ranked")
    other = load_hh_rlhf(HH_DIR, split="test", num_samples=10, seed=2, format="ranked")
    assert again["responses"] == ranked["responses"] != other["responses"]


def test_raw_prompts_for_base_models_are_the_data_s_own_text():
    from cyclealign.prompts import render_prompt
    from helpers import build_tiny_tokenizer

    kwargs = dict(subsets=["helpful-base"], split="test", num_samples=20, seed=0)
    raw = load_hh_rlhf(HH_DIR, prompt_format="raw", **kwargs)
    chat = load_hh_rlhf(HH_DIR, **kwargs)
    assert raw["chosen"] == chat["chosen"] and raw["rejected"] == chat["rejected"]
    base = build_tiny_tokenizer(chat_template=False)
    for text, messages in zip(raw["prompt"], chat["prompt"]):
        assert isinstance(text, str) and text.startswith("\n\nHuman:")
        assert text.endswith("\n\nAssistant:")
        assert split_dialogue(text[: -len("\n\nAssistant:")]) == messages  # same dialogue
        assert render_prompt(text, base) == text  # raw text, as the base model sees it
    ranked = load_hh_rlhf(HH_DIR, prompt_format="raw", format="ranked", **kwargs)
    assert ranked["prompt"] == raw["prompt"]
    with pytest.raises(ValueError, match="'raw' for a base model"):
        load_hh_rlhf(HH_DIR, prompt_format="text", **kwargs)


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        load_hh_rlhf(HH_DIR, subsets=["harmful-base"], split="test")
    with pytest.raises(FileNotFoundError, match=r"<subset>/<split>\.jsonl\.gz"):
        load_hh_rlhf(tmp_path, subsets=["helpful-base"], split="test")
    with pytest.raises(ValueError, match="only 1132 usable rows"):
        load_hh_rlhf(HH_DIR, subsets=["helpful-online"], split="test", num_samples=2000)
    with pytest.raises(ValueError, match="format"):
        load_hh_rlhf(HH_DIR, split="test", format="pairs")
