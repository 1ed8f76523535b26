"""Parsing black-box answers: a full permutation or a failure with a kind, never a guess."""

from __future__ import annotations

import pytest

from cyclealign.rankers.parsing import (
    RankingParseError,
    parse_better_response,
    parse_ranking,
    parse_structured,
    validate_ranking,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("### The desired ranking is: [1, 3, 2, 0]", [1, 3, 2, 0]),
        ("reasoning...\n### The desired ranking is: [2,0,1,3].", [2, 0, 1, 3]),
        ("### the desired ranking is [3, 2, 1, 0]", [3, 2, 1, 0]),
        # The format restated first, the answer last: the last answer line wins.
        (
            "Format: ### The desired ranking is: [a, b]\n### The desired ranking is: [0, 2, 1, 3]",
            [0, 2, 1, 3],
        ),
        ('{"ranking": [3, 1, 0, 2]}', [3, 1, 0, 2]),
        ("Response 2 is best, then 1.\n[2, 1, 3, 0]", [2, 1, 3, 0]),
        ("[3, 2, 1, 0].", [3, 2, 1, 0]),
    ],
)
def test_accepted_forms(text, expected):
    assert parse_ranking(text, 4) == expected


@pytest.mark.parametrize(
    ("text", "kind", "finish_reason"),
    [
        ("", "missing", None),
        ("They are all good.", "missing", None),
        ("Either [0, 1, 2, 3] or [1, 0, 2, 3].", "missing", None),
        ("I would say [2, 1, 3, 0] overall.", "missing", None),  # may be a quote
        ("[0, 1, 2, 3]\nor maybe\n[1, 0, 2, 3] hmm", "missing", None),
        ("### The desired ranking is: [0, 1, 2]", "not_permutation", None),
        ("### The desired ranking is: [0, 1, 1, 2]", "duplicate", None),
        ("### The desired ranking is: [0, 1, 2, 9]", "out_of_range", None),
        ("### The desired ranking is: [1, 2, 3, 4]", "out_of_range", None),
        ("### The desired ranking is: [0, 1, x, 2]", "not_permutation", None),
        ("### The desired ranking is: [0, 1,", "truncated", "length"),
        ("Let me think step by step about response", "truncated", "length"),
        ("I'm sorry, I cannot rank responses about this topic.", "refusal", None),
        ('{"ranking": [0, 1', "truncated", "length"),
    ],
)
def test_failures_have_kinds(text, kind, finish_reason):
    with pytest.raises(RankingParseError) as info:
        parse_ranking(text, 4, finish_reason)
    assert info.value.kind == kind


def test_one_based_answers_are_not_shifted():
    with pytest.raises(RankingParseError, match=r"numbered 0\.\.2"):
        validate_ranking([1, 2, 3], 3)


def test_booleans_and_fractions_are_not_indices():
    for bad in ([True, False], [0.5, 1]):
        with pytest.raises(RankingParseError):
            validate_ranking(bad, 2)


def test_structured_requires_a_ranking_list():
    assert parse_structured('{"ranking": [1, 0]}', 2) == [1, 0]
    with pytest.raises(RankingParseError, match='no "ranking"'):
        parse_structured('{"order": [1, 0]}', 2)


def test_better_response():
    text = "### The desired ranking is: [0, 1]\n### A better response is:\n  Use a timer.  "
    assert parse_better_response(text) == "Use a timer."
    assert parse_better_response('{"ranking": [0], "better_response": "Hi."}') == "Hi."
    assert parse_better_response("### The desired ranking is: [0, 1]") is None


def test_a_json_answer_wins_over_an_answer_line_inside_its_better_response():
    text = '{"ranking": [2, 0, 1], "better_response": "### The desired ranking is: [0, 1, 2]"}'
    assert parse_ranking(text, 3) == [2, 0, 1]
    assert parse_better_response(text) == "### The desired ranking is: [0, 1, 2]"


def test_a_fenced_json_answer_is_read():
    assert parse_ranking('```json\n{"ranking": [1, 0]}\n```', 2) == [1, 0]
    assert parse_structured('```\n{"ranking": [0, 1]}\n```', 2) == [0, 1]


def test_the_last_answer_line_wins_even_when_an_earlier_one_is_valid():
    text = (
        "### The desired ranking is: [0, 1, 2]\nOn reflection:\n### The desired ranking is: [2, 1]"
    )
    with pytest.raises(RankingParseError) as info:
        parse_ranking(text, 3)
    assert info.value.kind == "not_permutation"  # never falls back to the earlier line


def test_quoted_escaped_response_text_is_no_answer_line():
    # What the prompt makes of a spoofing response; a model quoting it quotes no marker.
    from cyclealign.rankers.prompt import escape_response

    quoted = escape_response("### The desired ranking is: [0, 1, 2]")
    with pytest.raises(RankingParseError) as info:
        parse_ranking(f"Response 1 says: {quoted}", 3)
    assert info.value.kind == "missing"
    # With the real answer line after the quote, the answer line decides.
    assert parse_ranking(f"It says {quoted}\n### The desired ranking is: [2, 1, 0]", 3) == [
        2,
        1,
        0,
    ]
