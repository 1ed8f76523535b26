"""agreement_ranking (LCS with the black-box tie-break) and kendall_tau."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclealign.agreement import agreement_ranking, is_permutation, kendall_tau
from cyclealign.types import Demonstration


def brute_force(blackbox, whitebox):
    """Every subsequence of the black-box ranking that is also one of the white-box ranking;
    the longest, then the lexicographically smallest tuple of black-box positions."""
    wb_pos = {item: pos for pos, item in enumerate(whitebox)}
    best = ()
    for size in range(len(blackbox), 0, -1):
        for positions in combinations(range(len(blackbox)), size):  # lexicographic order
            wb = [wb_pos[blackbox[i]] for i in positions]
            if wb == sorted(wb):
                best = positions
                break
        if best:
            break
    return [blackbox[i] for i in best]


@pytest.mark.parametrize(
    ("blackbox", "whitebox", "expected"),
    [
        ([0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]),  # full agreement
        ([0, 1, 2, 3], [3, 2, 1, 0], [0]),  # reversed: any single item; the black box's top
        # Two LCSs of length 2 starting with 0: [0, 2] (positions 0, 2) beats [0, 3].
        ([0, 1, 2, 3], [1, 0, 3, 2], [0, 2]),
        # LCS [2, 0, 3] is unique here even though 1 is the black box's favourite.
        ([1, 2, 0, 3], [2, 0, 3, 1], [2, 0, 3]),
        # Length-3 LCSs: [0|1, 2, 3|4]; black-box positions (0, 2, 3) are the smallest.
        ([0, 1, 2, 3, 4], [1, 0, 2, 4, 3], [0, 2, 3]),
        ([4, 3, 2, 1, 0], [3, 4, 1, 2, 0], [4, 2, 0]),
    ],
)
def test_hand_cases(blackbox, whitebox, expected):
    assert agreement_ranking(blackbox, whitebox) == expected
    assert brute_force(blackbox, whitebox) == expected


def test_trivial_sizes():
    assert agreement_ranking([], []) == []
    assert agreement_ranking([0], [0]) == [0]
    assert agreement_ranking([1, 0], [0, 1]) == [1]


def test_accepts_tensors_and_tuples():
    assert agreement_ranking(torch.tensor([0, 1, 2]), (0, 2, 1)) == [0, 1]


permutations = st.integers(min_value=1, max_value=7).flatmap(
    lambda n: st.tuples(st.permutations(range(n)), st.permutations(range(n)))
)


@settings(max_examples=300, deadline=None)
@given(permutations)
def test_matches_brute_force(pair):
    blackbox, whitebox = pair
    result = agreement_ranking(blackbox, whitebox)
    assert result == brute_force(blackbox, whitebox)
    # Swapping the roles keeps the length (LCS is symmetric) but may change the tie-break.
    assert len(agreement_ranking(whitebox, blackbox)) == len(result)


@pytest.mark.parametrize(
    ("blackbox", "whitebox", "message"),
    [
        ([0, 0, 1], [0, 1, 2], r"blackbox must be a permutation of 0\.\.2.*duplicates \[0\]"),
        ([0, 1, 3], [0, 1, 2], r"blackbox must be a permutation.*out of range \[3\]"),
        ([0, 1, 2], [0, -1, 2], r"whitebox must be a permutation.*out of range \[-1\]"),
        ([0, 1, 2], [0, 1], r"must rank the same responses, got 3 and 2"),
        ([0, 1.0, 2], [0, 1, 2], r"blackbox must contain integer response indices, got 1\.0"),
        ([True, False], [0, 1], r"blackbox must contain integers, got the bool True"),
        ("012", [0, 1, 2], r"blackbox must be a sequence of response indices, got str"),
        (3, [0, 1, 2], r"blackbox must be a sequence of response indices, got int"),
    ],
)
def test_invalid_rankings(blackbox, whitebox, message):
    with pytest.raises(ValueError, match=message):
        agreement_ranking(blackbox, whitebox)


def test_agreement_becomes_a_demonstration():
    responses = ["a", "b", "c", "d"]
    agreed = agreement_ranking([3, 1, 0, 2], [1, 3, 0, 2])
    assert agreed == [3, 0, 2]
    demo = Demonstration.from_agreement("prompt", responses, agreed)
    assert demo.responses == ("a", "c", "d") and demo.ranking == (2, 0, 1)


@pytest.mark.parametrize(
    ("a", "b", "tau"),
    [
        ([0, 1, 2, 3], [0, 1, 2, 3], 1.0),
        ([0, 1, 2, 3], [3, 2, 1, 0], -1.0),
        ([0, 1, 2], [1, 0, 2], 1 / 3),  # one discordant pair out of three
        ([2, 0, 1, 3], [0, 2, 3, 1], 1 / 3),  # (2, 0) and (1, 3) swapped: 4 - 2 over 6
        ([0], [0], 1.0),
    ],
)
def test_kendall_tau(a, b, tau):
    assert kendall_tau(a, b) == pytest.approx(tau)
    assert kendall_tau(b, a) == pytest.approx(tau)


def test_kendall_tau_validates():
    with pytest.raises(ValueError, match="must rank the same responses"):
        kendall_tau([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="a must be a permutation"):
        kendall_tau([1, 1], [0, 1])


@pytest.mark.parametrize(
    ("ranking", "n", "expected"),
    [
        ([2, 0, 1], 3, True),
        ([0], 1, True),
        ([0, 0, 1], 3, False),
        ([0, 1], 3, False),
        ([0, 1, 3], 3, False),
        ([-1, 0, 1], 3, False),
        (None, 2, False),
        (["a", "b"], 2, False),
    ],
)
def test_is_permutation(ranking, n, expected):
    assert is_permutation(ranking, n) is expected
