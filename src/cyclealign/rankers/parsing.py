"""Reading a ranking out of a black-box answer, or saying exactly why not.

A parse either returns a full permutation of ``0..n-1`` or raises
:class:`RankingParseError` with a ``kind``; it never guesses. The answer is normalised first
(:func:`.grammar.normalize`), and the pieces it may hold are those of :mod:`.grammar`.
Accepted forms, tried in this order:

1. a JSON object ``{"ranking": [...]}`` making up the whole answer (structured output;
   a surrounding Markdown code fence is allowed). Its ``better_response`` is never read for
   a ranking;
2. the answer line ``### The desired ranking is: [i, j, ...]`` at the start of a line; the
   *first* one that is the black box's own wins;
3. a bare list of integers standing alone on the answer's last non-empty line
   (``[2, 0, 1]``, optionally followed by a full stop). A list inside a sentence is not
   read: it may be quoted from a response, so the answer gets a repair request instead.

Only the black box's own answer is read:

- the better response (the text after the first ``### A better response is:`` line) is
  never searched for a ranking: the ranking comes first, as the instruction asks;
- given the ``request`` that was sent, a marker copied from it (a demonstration's answer
  with the text before it, the instruction, a response the black box retyped) is a
  quotation and is ignored (:class:`.grammar.Quotations`). The prompt escapes response text
  (:func:`.grammar.escape`), so a verbatim quote holds no marker at all.

The error ``kind`` says what went wrong: ``missing`` (no ranking found), ``not_permutation``
(not integers, or responses left out), ``out_of_range``, ``duplicate``, ``truncated`` (the
answer hit the length limit first: ``finish_reason == "length"``) and ``refusal`` (the model
declined; only when no ranking was found at all).

A list that is exactly ``1..n`` is rejected as ``out_of_range`` rather than shifted: it
is as likely a 1-based answer as a wrong one, and shifting would invent a ranking.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..agreement import PermutationError, check_permutation, is_permutation
from .grammar import (
    ANSWER_MARKER,
    Marker,
    Quotations,
    RequestText,
    answer_lines,
    bare_list_line,
    better_markers,
    normalize,
)

__all__ = [
    "FAILURE_KINDS",
    "RankingParseError",
    "parse_better_response",
    "parse_ranking",
    "parse_structured",
    "read_answer",
    "repair_request",
    "validate_ranking",
]

FAILURE_KINDS = ("missing", "not_permutation", "out_of_range", "duplicate", "truncated", "refusal")

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*)\n\s*```$", re.S)
_REFUSAL = re.compile(
    r"\b(i\s*(?:can(?:no|')t|cannot|won't|will not|am unable|'m unable)|i'm sorry|"
    r"as an ai\b|i must decline)",
    re.IGNORECASE,
)


class RankingParseError(ValueError):
    """The answer holds no usable ranking; ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_KINDS = {"not_integers": "not_permutation", "left_out": "not_permutation"}


def validate_ranking(values: Sequence[object], n: int) -> list[int]:
    """``values`` as a list of ints if it is a permutation of ``0..n-1``; else raise.

    Numbers written as text (``"2"``) or as integral floats (``2.0``, from JSON) are read as
    integers; the check itself is :func:`cyclealign.agreement.check_permutation`.
    """
    try:
        ranking = [_as_int(v) for v in values]
    except (TypeError, ValueError):
        raise RankingParseError(
            "not_permutation", f"ranking {values!r} is not a list of integers"
        ) from None
    if is_permutation([v - 1 for v in ranking], n):  # exactly 1..n: a 1-based answer
        raise RankingParseError(
            "out_of_range",
            f"ranking {ranking} numbers the responses 1..{n}; they are numbered 0..{n - 1}",
        )
    try:
        return check_permutation(ranking, n)
    except PermutationError as err:
        raise RankingParseError(_KINDS.get(err.kind, err.kind), str(err)) from None


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("a bool is not a response index")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value} is not an integer")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    return operator.index(value)  # type: ignore[arg-type]


def _int_list(body: str) -> list[str]:
    return [part.strip() for part in body.split(",") if part.strip()]


def _unfence(text: str) -> str:
    stripped = (text or "").strip()
    match = _FENCE.match(stripped)
    return match.group(1).strip() if match else stripped


def parse_structured(text: str, n: int, finish_reason: str | None = None) -> list[int]:
    """The ``ranking`` of a JSON object answer (``{"ranking": [...], ...}``)."""
    try:
        data = json.loads(_unfence(text))
    except json.JSONDecodeError as err:
        kind = "truncated" if finish_reason == "length" else "missing"
        raise RankingParseError(kind, f"the answer is not complete JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("ranking"), list):
        raise RankingParseError("missing", 'the JSON answer has no "ranking" list')
    return validate_ranking(data["ranking"], n)


#: What a ``request`` may be: the messages sent (dicts with ``content``), their texts, or the
#: :class:`~.grammar.RequestText` made from them once.
Request = RequestText | Iterable[Mapping[str, Any] | str] | None


def _request_text(request: Request) -> RequestText | None:
    if request is None or isinstance(request, RequestText):
        return request
    return RequestText(request)


def _own(markers: list[Marker], quoted: Quotations) -> tuple[list[Marker], int]:
    own = [m for m in markers if not quoted(m)]
    return own, len(markers) - len(own)


def parse_ranking(
    text: str, n: int, finish_reason: str | None = None, *, request: Request = None
) -> list[int]:
    """The ranking in ``text`` as displayed indices (see module doc); never a guess.

    Args:
        text: the black box's answer.
        n: the number of responses shown.
        finish_reason: the server's ``finish_reason``; ``"length"`` turns a missing or cut
            answer into a ``truncated`` error.
        request: the messages that were sent (or their texts); markers copied from them are
            quotations and are not read. ``None``: no quotation check.

    Raises:
        RankingParseError: with ``kind`` one of :data:`FAILURE_KINDS`.
    """
    text = normalize(text)
    unfenced = _unfence(text)
    if unfenced.startswith("{"):
        try:
            data = json.loads(unfenced)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("ranking"), list):
            return validate_ranking(data["ranking"], n)
    quoted = Quotations(text, _request_text(request))
    better, _ = _own(better_markers(text), quoted)
    region = text[: better[0].start] if better else text  # the better response is not read
    markers, ignored = _own(answer_lines(region), quoted)
    if markers:
        body = markers[0].body
        if body is None:
            kind = "truncated" if finish_reason == "length" else "missing"
            raise RankingParseError(kind, "the answer line has no complete [..] list")
        return validate_ranking(_int_list(body), n)
    if unfenced.startswith("{"):
        return parse_structured(unfenced, n, finish_reason)
    bare = bare_list_line(region)
    if bare is not None and not quoted(bare):
        return validate_ranking(_int_list(bare.body or ""), n)
    if finish_reason == "length":
        raise RankingParseError("truncated", "the answer was cut off before the ranking")
    if finish_reason == "content_filter" or _REFUSAL.search(text):
        raise RankingParseError("refusal", "the model declined to rank")
    quotes = f" ({ignored} quoted from the request, ignored)" if ignored else ""
    raise RankingParseError(
        "missing", f"no line starting with '### The desired ranking is:' in the answer{quotes}"
    )


def parse_better_response(text: str, *, request: Request = None) -> str | None:
    """The text after the black box's own ``### A better response is:`` line, or the
    ``better_response`` of a JSON answer; else ``None``."""
    text = normalize(text)
    stripped = _unfence(text)
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped).get("better_response")
        except (json.JSONDecodeError, AttributeError):
            return None
        return value.strip() or None if isinstance(value, str) else None
    markers, _ = _own(better_markers(text), Quotations(text, _request_text(request)))
    if not markers:
        return None
    better = text[markers[0].words_end :].lstrip(" \t*_")
    return better.strip() or None


def read_answer(
    answer: Mapping[str, Any], n: int, request: Request = None, structured: bool = False
) -> list[int]:
    """The ranking in a server's answer (``content``, ``refusal``, ``finish_reason``), in
    displayed indices. With ``structured``, a JSON answer is expected, and an answer in the
    text format (servers without schema support) is read too rather than paid for again."""
    if answer.get("refusal"):
        raise RankingParseError("refusal", "the model refused to rank")
    finish_reason = answer.get("finish_reason")
    content = str(answer.get("content") or "")
    request = _request_text(request)
    try:
        if structured:
            try:
                return parse_structured(content, n, finish_reason)
            except RankingParseError as err:
                if err.kind != "missing":
                    raise
                try:
                    return parse_ranking(content, n, finish_reason, request=request)
                except RankingParseError:
                    raise err from None
        return parse_ranking(content, n, finish_reason, request=request)
    except RankingParseError as err:
        if finish_reason == "content_filter":
            # The server's filter cut the answer: that is a refusal, whatever is left.
            raise RankingParseError(
                "refusal", f"the server's content filter stopped the answer ({err})"
            ) from None
        raise


def repair_request(err: RankingParseError, n: int, structured: bool = False) -> str:
    """The user turn of the one repair request: what was wrong and the format only."""
    listing = ", ".join(str(i) for i in range(n))
    if structured:
        return (
            f"Your answer could not be used: {err}. Reply with only a JSON object "
            f'{{"ranking": [...]}} listing each of the numbers {listing} exactly once.'
        )
    return (
        f"Your answer could not be used: {err}. Reply with only the line\n"
        f"{ANSWER_MARKER} [...]\nlisting each of the numbers {listing} exactly once, best first."
    )
