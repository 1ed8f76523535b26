"""One answer from an OpenAI-compatible server: budget, rate limit, the whole-request timeout,
retries by kind, and the response read back (a malformed body is retried like a dropped
connection). Used by :class:`~cyclealign.rankers.openai.OpenAIRanker`, whose settings
(``timeout``, ``max_retries``, ``backoff_base``, ``backoff_max``) it reads on every request.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import TYPE_CHECKING, Any

import openai

from ..types import Usage
from .retry import RequestFailure, backoff, check_backoff, classify

if TYPE_CHECKING:
    from .openai import OpenAIRanker

__all__ = ["MalformedResponse", "check_settings", "read_response", "request_answer"]


class MalformedResponse(Exception):
    """An HTTP 200 whose body is not a chat completion."""


async def request_answer(
    ranker: OpenAIRanker, messages: list[dict[str, str]], params: dict[str, Any], usage: Usage
) -> dict[str, Any]:
    """Send ``messages`` until an answer comes back or no retry is left; raises
    :class:`~.retry.RequestFailure` with the failure's kind."""
    assert ranker._semaphore is not None
    attempt = 0
    while True:
        wait: float | None = None
        try:
            async with ranker._semaphore:
                # Checked once a slot is free, so the token count of the answers that came
                # back meanwhile is known; recorded in the ledger before anything is sent.
                if not await ranker.budget.areserve():
                    raise RequestFailure("budget", "budget exhausted")
                await ranker._limiter.wait()
                usage.requests += 1
                # The client's timeout is per read: a server trickling bytes would hold the
                # request for as long as it likes. This bounds the whole request.
                async with asyncio.timeout(ranker.timeout):
                    response = await ranker._client.chat.completions.create(
                        model=ranker.model,
                        timeout=ranker.timeout,
                        **sdk_arguments(messages, params),
                    )
                answer, tokens = read_response(response, ranker._scrub)
                # Counted before the slot is free, so the next request sees these tokens.
                await ranker.budget.aadd_tokens(tokens)
            usage.prompt_tokens += answer["usage"]["prompt_tokens"]
            usage.completion_tokens += answer["usage"]["completion_tokens"]
            return answer
        except TimeoutError:
            kind = "timeout"
        except (MalformedResponse, json.JSONDecodeError, openai.APIResponseValidationError):
            kind = "malformed"
        except openai.APIError as err:
            try:
                kind, _, wait = classify(err)  # raises for what no retry can fix
            except RequestFailure as failure:
                raise failure from None
        if attempt >= ranker.max_retries:
            raise RequestFailure(kind, f"{kind} after {attempt + 1} attempts")
        attempt += 1
        usage.retries += 1
        # The server's Retry-After wins over our schedule (it knows when quota returns).
        await asyncio.sleep(
            wait if wait is not None else backoff(attempt, ranker.backoff_base, ranker.backoff_max)
        )


def sdk_arguments(messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """``chat.completions.create`` keywords that send ``messages`` and ``params`` as they are.

    The messages travel in ``extra_body``, which the SDK merges into the JSON body unchanged
    (over ``messages=[]``). Passed as ``messages`` they would first go through the SDK's
    type-directed transform, which walks every message against each of its six message
    types: about 25 ms of CPU for a request with the default demonstration budget (~130
    messages), spent in the training process while the forward pass runs
    (``benchmarks/latency_hiding.py``)."""
    arguments = {key: value for key, value in params.items() if key != "extra_body"}
    extra_body = {**(params.get("extra_body") or {}), "messages": messages}
    return {**arguments, "messages": [], "extra_body": extra_body}


def read_response(response: Any, scrub: Any) -> tuple[dict[str, Any], int]:
    """The answer of a chat completion, masked by ``scrub`` (a server may echo the key), and
    the tokens it reports. Raises :class:`MalformedResponse` for anything else."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse("the response has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    if message is None or not (content is None or isinstance(content, str)):
        raise MalformedResponse("the first choice has no message")
    reported = getattr(response, "usage", None)
    try:
        prompt_tokens = int(getattr(reported, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(reported, "completion_tokens", 0) or 0)
    except (TypeError, ValueError):
        raise MalformedResponse("the token counts are not numbers") from None
    refusal = getattr(message, "refusal", None)
    answer = {  # masked before it is cached, parsed or logged
        "content": scrub(content or ""),
        "refusal": scrub(refusal) if refusal else None,
        "finish_reason": getattr(choice, "finish_reason", None),
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }
    return answer, prompt_tokens + completion_tokens


def check_settings(
    max_concurrency: Any, max_retries: Any, timeout: Any, backoff_base: Any, backoff_max: Any
) -> None:
    """Raise ``ValueError`` for settings that would fail every request."""

    def integer(value: Any, minimum: int) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and value >= minimum

    if not integer(max_concurrency, 1):
        raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}.")
    if not integer(max_retries, 0):
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}.")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (timeout > 0 and math.isfinite(timeout))
    ):
        raise ValueError(
            f"timeout must be a finite number of seconds > 0 (each request as a whole), got "
            f"{timeout!r}."
        )
    check_backoff(backoff_base, backoff_max)
