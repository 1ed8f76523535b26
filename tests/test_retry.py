"""Retry decisions and waits for OpenAI-compatible requests."""

from __future__ import annotations

import email.utils
import time

import openai
import pytest

try:  # the HTTP library of the installed openai SDK (httpx2 in recent releases)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - older SDKs
    import httpx

from cyclealign.rankers.retry import (
    MAX_RETRY_AFTER_S,
    RequestFailure,
    backoff,
    check_backoff,
    classify,
)


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    cls = {401: openai.AuthenticationError, 429: openai.RateLimitError}.get(
        status, openai.APIStatusError
    )
    return cls("failed", response=response, body=None)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # milliseconds win
        ({"Retry-After": "100000"}, MAX_RETRY_AFTER_S),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),  # negative: the backoff applies, not zero
        ({"retry-after-ms": "-1", "Retry-After": "3"}, 3.0),
        ({}, None),
    ],
)
def test_rate_limit_waits_what_the_server_asks(headers, wait):
    assert classify(status_error(429, headers)) == ("rate_limit", True, wait)


def test_retry_after_as_an_http_date():
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    kind, retry, wait = classify(status_error(503, {"Retry-After": date}))
    assert (kind, retry) == ("server", True) and 25 <= wait <= 31


def test_a_retry_after_date_in_the_past_falls_back_to_the_backoff():
    date = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert classify(status_error(503, {"Retry-After": date})) == ("server", True, None)


def test_408_is_a_timeout_and_is_retried():
    assert classify(status_error(408, {"Retry-After": "1"})) == ("timeout", True, 1.0)


@pytest.mark.parametrize(
    ("base", "cap", "message"),
    [
        (-0.5, 30.0, "backoff_base must be a number of seconds >= 0"),
        (0.5, -1.0, "backoff_max must be a number"),
        (float("nan"), 30.0, "backoff_base must be"),
        (0.5, float("inf"), "backoff_max must be finite"),
        (5.0, 1.0, "must be >= backoff_base"),
    ],
)
def test_invalid_backoff_is_rejected(base, cap, message):
    with pytest.raises(ValueError, match=message):
        check_backoff(base, cap)


def test_auth_and_other_client_errors_are_final():
    with pytest.raises(RequestFailure, match="rejected the API key") as info:
        classify(status_error(401))
    assert info.value.kind == "auth"
    with pytest.raises(RequestFailure) as info:
        classify(status_error(404))
    assert info.value.kind == "bad_request"


def test_timeouts_and_connection_errors_are_retried():
    request = httpx.Request("POST", "http://127.0.0.1/")
    assert classify(openai.APITimeoutError(request)) == ("timeout", True, None)
    assert classify(openai.APIConnectionError(request=request)) == ("connection", True, None)


def test_backoff_grows_is_capped_and_jittered():
    waits = [backoff(attempt, 0.5, 4.0) for attempt in range(1, 8)]
    steps = [min(4.0, 0.5 * 2 ** (a - 1)) for a in range(1, 8)]
    assert all(0.5 * s <= w <= s for w, s in zip(waits, steps, strict=True))
    assert len({backoff(3, 0.5, 4.0) for _ in range(20)}) > 1
