"""Prompt rows are checked before anything is paid: one rule, counts per reason, drop or
refuse, datasets eagerly and iterable datasets lazily."""

from __future__ import annotations

import pytest
from datasets import Dataset, IterableDataset

from cyclealign.data.rows import REASONS, prompt_problem, rows_summary, validate_rows

GOOD_CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ("How do I bake bread?", None),
        (GOOD_CHAT, None),  # ending with an assistant turn is valid
        (None, "no_prompt"),
        (42, "not_a_prompt"),
        ("   \n", "empty_prompt"),
        ([], "empty_prompt"),
        (["hi"], "not_a_message"),
        ([{"content": "hi"}], "not_a_message"),
        ([{"role": "tool", "content": "x"}], "unknown_role"),
        ([{"role": "user"}], "no_content"),
        ([{"role": "user", "content": None}], "no_content"),
        ([{"role": "user", "content": "  "}], "empty_content"),
        ([{"role": "user", "content": ["a list"]}], "empty_content"),
    ],
)
def test_the_rule(prompt, problem):
    assert prompt_problem(prompt) == problem
    assert problem is None or problem in REASONS


def rows(n=150, bad=None):
    prompts = [f"prompt {i}" for i in range(n)]
    for index, value in (bad or {}).items():
        prompts[index] = value
    return prompts


def test_a_dataset_is_checked_at_once_and_bad_rows_dropped_with_counts():
    data = Dataset.from_dict({"prompt": rows(bad={100: None, 7: " ", 120: None}), "n": range(150)})
    kept, report = validate_rows(data)
    assert len(kept) == 147 and None not in kept["prompt"] and 100 not in kept["n"]
    assert report.seen == 150 and report.dropped == {"no_prompt": 2, "empty_prompt": 1}
    assert [i for i, _, _ in report.examples] == [7, 100, 120]
    assert "3 of 150 rows dropped" in report.summary() and "row 100: None" in report.summary()
    assert rows_summary([report]) == {
        "data/invalid_rows": 3.0,
        "data/invalid_rows/no_prompt": 2.0,
        "data/invalid_rows/empty_prompt": 1.0,
    }


def test_chat_rows_missing_content_or_with_unknown_roles():
    chats = [GOOD_CHAT, [{"role": "user"}], [{"role": "robot", "content": "x"}], GOOD_CHAT]
    kept, report = validate_rows(Dataset.from_list([{"prompt": c} for c in chats]))
    assert len(kept) == 2 and report.dropped == {"no_content": 1, "unknown_role": 1}


def test_error_mode_refuses_listing_the_first_rows():
    data = Dataset.from_dict({"prompt": rows(bad={100: None, 3: ""})})
    with pytest.raises(ValueError, match="2 invalid rows of 150") as info:
        validate_rows(data, policy="error")
    assert "row 3: the prompt is empty" in str(info.value)
    assert "row 100: no prompt" in str(info.value) and "invalid_rows='drop'" in str(info.value)


def test_a_dataset_without_a_prompt_column_is_refused():
    with pytest.raises(ValueError, match=r"no 'prompt' column.*'text'"):
        validate_rows(Dataset.from_dict({"text": ["a"]}))


def test_iterable_datasets_are_checked_lazily_with_the_same_counts():
    def generate():
        yield from ({"prompt": p} for p in rows(bad={100: None, 7: " "}))

    lazy, report = validate_rows(IterableDataset.from_generator(generate))
    assert report.lazy and report.seen == 0  # nothing read yet
    assert len(list(lazy)) == 148
    assert report.seen == 150 and report.dropped == {"no_prompt": 1, "empty_prompt": 1}
    refused, _ = validate_rows(IterableDataset.from_generator(generate), policy="error")
    with pytest.raises(ValueError, match="row 7"):
        list(refused)


def test_other_map_style_datasets_are_checked_row_by_row():
    data = [{"prompt": p} for p in rows(20, bad={4: None})]
    kept, report = validate_rows(data)
    assert len(kept) == 19 and report.dropped == {"no_prompt": 1}
    assert all(kept[i]["prompt"] is not None for i in range(len(kept)))
