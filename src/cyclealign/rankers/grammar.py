"""The answer grammar, defined once: what structure in a black-box answer looks like, how
untrusted text is escaped so that it holds none, and how a quoted marker is told from the
black box's own.

The pieces of structure:

- the **answer line** :data:`ANSWER_MARKER` followed by a list, ``[2, 0, 1]``, at the start
  of a line (any number of ``#``, any case, the colon optional);
- the **better-response marker** :data:`BETTER_MARKER`, at the start of a line;
- the **JSON answer** ``{"ranking": [...], "better_response": "..."}`` making up the whole
  answer (a Markdown code fence around it allowed);
- a **bare list** ``[2, 0, 1]`` alone on the answer's last line;
- the **response fences** ``<response id=k>`` / ``</response id=k>`` and the paper's
  ``# Response-k.`` headers, which delimit what the black box is shown.

:func:`escape` derives from these what untrusted text (responses, prompts, demonstrations)
may not contain. After Unicode normalisation (NFKC, so full-width ``＜`` is ``<``) and the
removal of zero-width and other format characters, every ``#`` becomes ``♯``, a
``<response`` tag ``‹response``, a line holding only a list ``⟦...⟧``, and the JSON keys
``"ranking"`` / ``"better_response"`` get curly quotes. The replacements are themselves stable
under NFKC, so the parser, which normalises answers the same way, can never read structure
in escaped text, however the black box echoes it.

:class:`Quotations` is the second line of defence, for a black box that retypes what it
quotes (``♯`` as ``#``): a marker is a *quotation*, and is ignored, when the copied run of
text that ends with its line and covers the marker is at least :data:`QUOTE_MIN_CHARS`
normalised characters long and appears in the request that was sent. An answer line standing
alone on its line (a *bare* line) counts as a quotation only if the copied run also covers at
least :data:`QUOTE_CONTEXT_CHARS` non-space characters before the line: a bare answer line
after the black box's own words is never a quotation (an honest ranking may equal a
demonstration's).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ANSWER_MARKER",
    "BETTER_MARKER",
    "QUOTE_CONTEXT_CHARS",
    "QUOTE_MIN_CHARS",
    "Marker",
    "Quotations",
    "RequestText",
    "answer_lines",
    "bare_list_line",
    "better_markers",
    "escape",
    "normalize",
]

ANSWER_MARKER = "### The desired ranking is:"
BETTER_MARKER = "### A better response is:"

#: A marker is a quotation when a copied run of at least this many normalised characters
#: (ending with its line and covering it) appears in the request.
QUOTE_MIN_CHARS = 40
#: A bare answer line is a quotation only if the copied run covers at least this many
#: non-space characters before the line (the text right before it was copied too).
QUOTE_CONTEXT_CHARS = 10

# -- normalisation ----------------------------------------------------------------------------

# Line breaks other than "\n" that str.splitlines() (and a reader) would honour.
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")


#: Unicode categories removed: format characters (zero-width space and joiners, soft hyphen,
#: BOM, bidi controls), controls (all but newline and tab), surrogates, private use, unassigned.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Cc", "Cs", "Co", "Cn"})
# Printable ASCII is never in those categories: only the other characters are looked up (a
# character at a time in Python costs ~0.1 s a round on requests with many demonstrations).
_MAYBE_INVISIBLE = re.compile(r"[^\x20-\x7e\n\t]")


def _keep_visible(match: re.Match[str]) -> str:
    char = match.group()
    return "" if unicodedata.category(char) in INVISIBLE_CATEGORIES else char


def _drop_invisible(text: str) -> str:
    return _MAYBE_INVISIBLE.sub(_keep_visible, text)


def normalize(text: str) -> str:
    """``text`` as the parser reads it: one kind of line break, invisible characters removed,
    NFKC applied (in the order that leaves nothing to recombine)."""
    text = _LINE_BREAKS.sub("\n", text or "")
    text = unicodedata.normalize("NFKC", _drop_invisible(text))
    return _drop_invisible(_LINE_BREAKS.sub("\n", text))


# -- the pieces ----------------------------------------------------------------------------------

_LINE_PREFIX = r"^[ \t*_]*"  # Markdown emphasis before a marker is tolerated; a quote ">" is not
_ANSWER = re.compile(
    _LINE_PREFIX + r"(#+[ \t]*the[ \t]+desired[ \t]+ranking[ \t]+is[ \t]*:?)", re.I | re.M
)
_BETTER = re.compile(
    _LINE_PREFIX + r"(#+[ \t]*a[ \t]+better[ \t]+response[ \t]+is[ \t]*:?)", re.I | re.M
)
_LIST = re.compile(r"\s*\[([^\[\]]*)\]")
_BARE = re.compile(r"[ \t]*\[([\d\s,]*)\]\.?[ \t]*")
_INTEGERS = re.compile(r"[\d\s,]*")
_BARE_TAIL = re.compile(r"[ \t.*_]*")  # what may follow the list on a bare answer line

# What escaping replaces, and what the replacement folds back to when matching quotations.
_HASH, _TAG_OPEN, _LIST_OPEN, _LIST_CLOSE = "♯", "‹", "⟦", "⟧"
_QUOTE_OPEN, _QUOTE_CLOSE, _BACKSLASH = "“", "”", "⧵"
_FOLD_BACK = str.maketrans(
    {
        _HASH: "#",
        _TAG_OPEN: "<",
        _LIST_OPEN: "[",
        _LIST_CLOSE: "]",
        _QUOTE_OPEN: '"',
        _QUOTE_CLOSE: '"',
        _BACKSLASH: "\\",
    }
)

_TAG = re.compile(r"<(\s*/?\s*response)", re.I)
_BARE_LINE = re.compile(r"^([ \t]*)\[([\d\s,]*)\]", re.M)
_JSON_KEY = re.compile(r'"(\s*(?:ranking|better_response)\s*)"', re.I)
_ASCII_ESCAPE = re.compile(r"\\(u00[0-7][0-9a-fA-F])")


def escape(text: str) -> str:
    """``text`` (a response, a prompt) with nothing the answer parser could read as structure.

    The words stay readable: ``### The desired ranking is: [0, 1]`` becomes
    ``♯♯♯ The desired ranking is: [0, 1]``, ``</response id=1>`` ``‹/response id=1>``.
    """
    text = normalize(text)
    text = text.replace("#", _HASH)  # every marker and the paper's "# Response-k." start with #
    text = _TAG.sub(lambda m: _TAG_OPEN + m.group(1), text)
    text = _BARE_LINE.sub(
        lambda m: (
            m.group(0)
            if not _BARE.fullmatch(_line_at(text, m.start()))
            else f"{m.group(1)}{_LIST_OPEN}{m.group(2)}{_LIST_CLOSE}"
        ),
        text,
    )
    text = _JSON_KEY.sub(lambda m: f"{_QUOTE_OPEN}{m.group(1)}{_QUOTE_CLOSE}", text)
    # JSON would decode "\u0072anking" to "ranking": ASCII escapes lose their backslash.
    return _ASCII_ESCAPE.sub(lambda m: _BACKSLASH + m.group(1), text)


def _line_at(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start : len(text) if end < 0 else end]


# -- finding markers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """One marker in a (normalised) answer.

    ``start`` is where the marker's ``#`` (or a bare list's ``[``) begins, ``words_end``
    where its own words end, ``end`` where the part that a quotation must cover ends (an
    answer line: after its list, when it has one; a better-response marker: the end of its
    line), ``body`` the list's text (``None`` when the line has no complete list), ``bare``
    whether nothing but the marker (and its list of integers) is on the line.
    """

    start: int
    words_end: int
    end: int
    body: str | None
    bare: bool


def answer_lines(text: str) -> list[Marker]:
    """The answer lines of normalised ``text``, in order."""
    found = []
    for match in _ANSWER.finditer(text):
        start, after = match.start(1), match.end(1)
        listed = _LIST.match(text, after)
        end = listed.end() if listed else after
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        bare = (
            listed is not None
            and _INTEGERS.fullmatch(listed.group(1)) is not None
            and _BARE_TAIL.fullmatch(text[end:line_end]) is not None
        )
        found.append(Marker(start, after, end, listed.group(1) if listed else None, bare))
    return found


def better_markers(text: str) -> list[Marker]:
    """The better-response markers of normalised ``text``, in order (``end``: the end of the
    marker's line)."""
    found = []
    for match in _BETTER.finditer(text):
        line_end = text.find("\n", match.end(1))
        line_end = len(text) if line_end < 0 else line_end
        bare = not text[match.end(1) : line_end].strip(" \t*_")
        found.append(Marker(match.start(1), match.end(1), line_end, None, bare))
    return found


def bare_list_line(text: str) -> Marker | None:
    """A list of integers standing alone on the last non-empty line of normalised ``text``."""
    stripped = text.rstrip()
    start = stripped.rfind("\n") + 1
    line = stripped[start:]
    match = _BARE.fullmatch(line)
    if match is None:
        return None
    offset = start + len(line) - len(line.lstrip())
    return Marker(offset, len(stripped), len(stripped), match.group(1), True)


# -- quotations ----------------------------------------------------------------------------------


_SPACES = re.compile(r"\s+")


def _fold(text: str) -> tuple[str, list[int]]:
    """Casefolded, escapes folded back, whitespace runs as one space; with, for each folded
    character, the index of the character of ``text`` it came from."""
    out: list[str] = []
    origin: list[int] = []
    space = False
    for i, char in enumerate(text.translate(_FOLD_BACK)):
        if char.isspace():
            if not space:
                out.append(" ")
                origin.append(i)
            space = True
            continue
        space = False
        for piece in char.casefold():
            out.append(piece)
            origin.append(i)
    return "".join(out), origin


class RequestText:
    """The text of a request as sent (every message's content), folded for matching."""

    def __init__(self, messages: Iterable[Mapping[str, Any] | str]) -> None:
        texts = [m if isinstance(m, str) else str(m.get("content") or "") for m in messages]
        # As _fold, on the whole text at once (casefolding is per character).
        text = normalize("\n".join(texts)).translate(_FOLD_BACK).casefold()
        self.folded = _SPACES.sub(" ", text)


class Quotations:
    """Tells the quoted markers of one normalised answer from the black box's own.

    ``quotations(marker)`` is ``True`` when the copied run of text that ends with the
    marker's line, and covers the marker, is at least :data:`QUOTE_MIN_CHARS` folded
    characters of ``request``, and, for a bare line, covers at least
    :data:`QUOTE_CONTEXT_CHARS` non-space characters before it. Without a request nothing is
    a quotation.
    """

    def __init__(self, answer: str, request: RequestText | None) -> None:
        self.request = request
        self.folded, self._at = "", []
        if request is None:
            return
        self.folded, origin = _fold(answer)
        # position in the answer -> first folded character at or after it
        self._at = [len(self.folded)] * (len(answer) + 1)
        for k in range(len(origin) - 1, -1, -1):
            self._at[origin[k]] = k
        for i in range(len(answer) - 1, -1, -1):
            self._at[i] = min(self._at[i], self._at[i + 1])

    def __call__(self, marker: Marker) -> bool:
        if self.request is None:
            return False
        text, haystack = self.folded, self.request.folded
        start, end = self._at[marker.start], self._at[marker.end]
        # The longest suffix of text[:end] found in the request (a substring's substrings are
        # found too, so the length can be bisected).
        low, high = 0, end
        while low < high:
            mid = (low + high + 1) // 2
            if text[end - mid : end] in haystack:
                low = mid
            else:
                high = mid - 1
        run_start = end - low
        if low < QUOTE_MIN_CHARS or run_start > start:
            return False
        if not marker.bare:
            return True
        return sum(not c.isspace() for c in text[run_start:start]) >= QUOTE_CONTEXT_CHARS
