"""Rankings and where two of them agree: the permutation check, the longest common
subsequence of the black-box and white-box rankings, and their rank correlation.

CycleAlign turns the agreement into a new in-context demonstration for the black box
(see :meth:`cyclealign.Demonstration.from_agreement`). Rankings are lists of response
indices, best first, each a permutation of ``0 .. n-1``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

__all__ = [
    "PermutationError",
    "agreement_ranking",
    "check_permutation",
    "is_permutation",
    "kendall_tau",
]


def agreement_ranking(blackbox: Sequence[int], whitebox: Sequence[int]) -> list[int]:
    """The longest common subsequence of two rankings, best first.

    Among several common subsequences of maximal length, returns the one whose elements
    sit highest in the black-box ranking: their black-box positions, compared element by
    element, form the lexicographically smallest tuple. The black box is the more trusted
    ranker, so its top choices are kept when the white box allows a choice.

    >>> agreement_ranking([0, 1, 2, 3], [1, 0, 3, 2])
    [0, 2]

    Runs in ``O(n^2)`` time and ``O(n)`` memory. Raises ``ValueError`` unless both
    rankings are permutations of the same ``0 .. n-1``.
    """
    bb = check_permutation(blackbox, name="blackbox")
    wb = check_permutation(whitebox, name="whitebox")
    _check_same_length(bb, wb)
    n = len(bb)
    # Both are permutations, so a common subsequence is a run of black-box positions
    # i1 < i2 < ... whose white-box positions also increase: an increasing subsequence of
    # w[i] = white-box position of the black-box's i-th element.
    wb_pos = {item: pos for pos, item in enumerate(wb)}
    w = [wb_pos[item] for item in bb]
    # longest[i]: length of the longest increasing subsequence of w that starts at i.
    longest = [1] * n
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            if w[j] > w[i] and longest[j] + 1 > longest[i]:
                longest[i] = longest[j] + 1
    # Greedy reconstruction. At each step take the smallest black-box position that can
    # still complete a maximal subsequence. Any maximal subsequence with this prefix must
    # pick, at this step, some position j with longest[j] == remaining; the smallest such j
    # is therefore the smallest possible next element, and since it still completes a
    # maximal subsequence, it is the lexicographically smallest choice.
    result: list[int] = []
    remaining = max(longest, default=0)
    last = -1
    for i in range(n):
        if remaining == 0:
            break
        if longest[i] == remaining and (last < 0 or w[i] > w[last]):
            result.append(bb[i])
            last = i
            remaining -= 1
    return result


def kendall_tau(a: Sequence[int], b: Sequence[int]) -> float:
    """Kendall's rank correlation of two rankings of the same ``n`` items, in ``[-1, 1]``.

    ``(concordant - discordant) / (n (n - 1) / 2)``: 1 for identical rankings, -1 for
    reversed ones. With fewer than two items there is no pair to disagree on and the
    result is 1.0.
    """
    ra = check_permutation(a, name="a")
    rb = check_permutation(b, name="b")
    _check_same_length(ra, rb, names=("a", "b"))
    n = len(ra)
    if n < 2:
        return 1.0
    pos_b = {item: pos for pos, item in enumerate(rb)}
    seq = [pos_b[item] for item in ra]
    score = 0
    for i in range(n):
        for j in range(i + 1, n):
            score += 1 if seq[i] < seq[j] else -1
    return score / (n * (n - 1) / 2)


class PermutationError(ValueError):
    """Not a ranking of ``0..n-1``. ``kind``: ``"not_integers"``, ``"out_of_range"``,
    ``"duplicate"`` or ``"left_out"`` (fewer indices than responses)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_permutation(
    values: Sequence[int], n: int | None = None, name: str = "ranking"
) -> list[int]:
    """``values`` as a list of ints when it holds each of ``0..n-1`` exactly once (``n``
    defaults to ``len(values)``); otherwise :class:`PermutationError` saying what is wrong.

    The one permutation check of the package: rankings from the black box, the white box,
    demonstrations and ranked data all go through it. Integers only (``operator.index``):
    a bool, a float or a string is not a response index.
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PermutationError(
            "not_integers",
            f"{name} must be a sequence of response indices, got {type(values).__name__}"
            + (f" {values!r}." if isinstance(values, (str, bytes)) else "."),
        )
    items: list[int] = []
    raw = list(values)  # tensors, arrays and iterators too
    for item in raw:
        if isinstance(item, bool):
            raise PermutationError(
                "not_integers", f"{name} must contain integers, got the bool {item!r}."
            )
        try:
            items.append(operator.index(item))
        except TypeError:
            raise PermutationError(
                "not_integers",
                f"{name} must contain integer response indices, got {item!r} "
                f"({type(item).__name__}) in {raw!r}.",
            ) from None
    size = len(items) if n is None else n
    expected = (
        f"{name} must be a permutation of 0..{size - 1} (each response index once, best first)"
    )
    out_of_range = sorted(i for i in items if not 0 <= i < size)
    if out_of_range:
        raise PermutationError(
            "out_of_range", f"{expected}, got {items} (out of range {out_of_range})."
        )
    duplicates = sorted({i for i in items if items.count(i) > 1})
    if duplicates:
        raise PermutationError("duplicate", f"{expected}, got {items} (duplicates {duplicates}).")
    if len(items) != size:
        left_out = sorted(set(range(size)) - set(items))
        raise PermutationError("left_out", f"{expected}, got {items} (left out {left_out}).")
    return items


def is_permutation(values: Sequence[int] | None, n: int) -> bool:
    """True when ``values`` holds each of ``0..n-1`` exactly once (see :func:`check_permutation`)."""
    if values is None:
        return False
    try:
        check_permutation(values, n)
    except PermutationError:
        return False
    return True


def _check_same_length(
    a: list[int], b: list[int], names: tuple[str, str] = ("blackbox", "whitebox")
) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"{names[0]} and {names[1]} must rank the same responses, got {len(a)} and "
            f"{len(b)} indices."
        )
