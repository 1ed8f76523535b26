"""Masking an API key in text a server sent back: errors, answers, anything that is stored.

A server may quote the key it received: whole, in part, or in the masked form providers use
in their error messages (``sk-proj-****7890``, ``sk-abc...7890``). :class:`Redactor` replaces
every run of text made of substrings of the key at least :data:`MIN_SECRET_CHARS` long, and
every masked form (a prefix of the key, ``***`` or ``...``, a suffix of the key), with
``***``.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "MIN_SECRET_CHARS", "Redactor"]

MASK = "***"
#: Any run of this many characters of the key is masked (shorter pieces are ordinary text).
MIN_SECRET_CHARS = 8
# A prefix of the key, a mask (3+ stars or an ellipsis), a suffix of the key.
_MASKED = re.compile(r"([\w\-]*)(?:\*{3,}|\.{3}|…)([\w\-]*)")


class Redactor:
    """``redactor(text)`` is ``text`` with the key masked (see module doc).

    A key shorter than :data:`MIN_SECRET_CHARS` (a placeholder such as ``EMPTY``) is no
    secret: nothing is masked.
    """

    def __init__(self, key: str) -> None:
        self._key = key if len(key) >= MIN_SECRET_CHARS else ""
        k = MIN_SECRET_CHARS
        self._grams = {self._key[i : i + k] for i in range(len(self._key) - k + 1)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(active={bool(self._key)})"

    def __call__(self, text: object) -> str:
        text = str(text)
        if not self._key:
            return text
        k = MIN_SECRET_CHARS
        masked = bytearray(len(text))
        for i in range(len(text) - k + 1):
            if text[i : i + k] in self._grams:
                masked[i : i + k] = b"\x01" * k
        if any(masked):
            pieces, i = [], 0
            while i < len(text):
                if masked[i]:
                    while i < len(text) and masked[i]:
                        i += 1
                    pieces.append(MASK)
                else:
                    pieces.append(text[i])
                    i += 1
            text = "".join(pieces)
        return _MASKED.sub(self._mask_form, text)

    def _mask_form(self, match: re.Match[str]) -> str:
        prefix, suffix = match.group(1), match.group(2)
        key = self._key
        # Three characters of the key's start or end beside a mask are enough to say "a key".
        if (len(prefix) >= 3 and key.startswith(prefix)) or (
            len(suffix) >= 3 and key.endswith(suffix)
        ):
            return MASK
        return match.group(0)
