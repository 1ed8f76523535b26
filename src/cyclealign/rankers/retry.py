"""Which failures of an OpenAI-compatible request are worth another try, and how long to wait.

The SDK's own retries are switched off (``max_retries=0`` on the client) so that every
retry is ours and shows up in ``usage.retries``. :func:`classify` maps an SDK exception to
a failure kind and says whether to retry; :func:`backoff` gives the wait.
"""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

import openai

__all__ = [
    "MAX_RETRY_AFTER_S",
    "RequestFailure",
    "backoff",
    "check_backoff",
    "classify",
    "retry_after",
]

#: A server asking for longer than this is waited on only this long (a daily quota would
#: otherwise stall training for hours without a word).
MAX_RETRY_AFTER_S = 300.0


class RequestFailure(Exception):
    """A request that ended without a usable answer; ``kind`` goes into ``usage.failures``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def classify(err: BaseException) -> tuple[str, bool, float | None]:
    """``(kind, retry, wait)`` for an exception raised by ``chat.completions.create``.

    ``wait`` is the server's ``Retry-After`` in seconds when it sent one, else ``None``.
    Raises :class:`RequestFailure` straight away for failures no retry can fix (401/403 and
    other 4xx); the message never quotes the request (so never the key).
    """
    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        raise RequestFailure(
            "auth",
            f"the server rejected the API key (HTTP {err.status_code}); check the key "
            "(OPENAI_API_KEY or api_key=) and the base_url",
        )
    if isinstance(err, openai.RateLimitError):
        return "rate_limit", True, retry_after(err)
    # APITimeoutError subclasses APIConnectionError: test it first.
    if isinstance(err, openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(err, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(err, openai.APIResponseValidationError):  # a 200 that is no completion
        return "malformed", True, None
    if isinstance(err, openai.APIStatusError) and err.status_code == 408:  # request timeout
        return "timeout", True, retry_after(err)
    if isinstance(err, openai.APIStatusError):
        if err.status_code >= 500:
            return "server", True, retry_after(err)
        raise RequestFailure("bad_request", f"HTTP {err.status_code}: {_short(err.message)}")
    raise err


def retry_after(err: Any) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``retry-after`` as seconds or
    an HTTP date), capped at :data:`MAX_RETRY_AFTER_S`; ``None`` when it did not say, or said
    something negative (a date in the past, a bad clock): the backoff applies then."""
    try:
        headers = err.response.headers
    except AttributeError:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if name == "retry-after" else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if seconds != seconds or seconds < 0:  # NaN, or a wait in the past
            continue
        return min(MAX_RETRY_AFTER_S, seconds)
    return None


def backoff(attempt: int, base: float, cap: float) -> float:
    """Wait before retry number ``attempt`` (1, 2, ...): exponential, capped, jittered.

    The jitter (50-100 % of the step) keeps the requests of several ranks, all hit by one
    429, from coming back in lockstep.
    """
    return min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def check_backoff(base: float, cap: float) -> None:
    """Raise ``ValueError`` unless ``0 <= base <= cap`` are finite seconds."""
    for name, value in (("backoff_base", base), ("backoff_max", cap)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}.")
        if value == float("inf"):
            raise ValueError(f"{name} must be finite, got {value!r}.")
    if cap < base:
        raise ValueError(
            f"backoff_max ({cap!r}) must be >= backoff_base ({base!r}): it caps the doubling "
            "waits that start at backoff_base."
        )


def _short(text: Any, limit: int = 200) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."
