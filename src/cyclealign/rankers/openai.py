"""A ranker for any OpenAI-compatible chat-completions endpoint.

OpenAI, Azure OpenAI (through its OpenAI-compatible ``/openai/v1`` base URL), vLLM, Ollama,
the llama.cpp server and TGI all speak this wire format. What this class adds to the SDK:

- **Nothing paid is lost.** Answers go into a SQLite cache (``cache_path``) before they are
  parsed; a re-run, or a resumed training run, makes no request already answered.
- **Failures are results, not exceptions.** Every request ends in a
  :class:`~cyclealign.rankers.base.RankResult`; a failed one has ``ranking=None`` and an
  ``error``, and ``usage.failures`` counts it by kind. One bad request never fails others.
- **Retries are ours.** The SDK's retries are off so every retry is counted: 429 and 5xx
  back off (honouring ``Retry-After``), timeouts and dropped connections are retried, and
  authentication errors fail fast.
- **One unparseable answer gets one repair request** quoting what was wrong.
- **Budgets hold** with any number of requests in flight (see :mod:`.budget`).

The API key is read once and kept only inside the SDK client: it is no field of any config,
and never appears in ``repr``, ``state_dict``, logs, errors or the cache.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import openai

from ..types import RankRequest, RankResult, Usage
from ._loop import background_loop
from ._loop import submit as _submit_coroutine
from .base import BlackBoxRanker
from .budget import Budget, RateLimiter
from .cache import RankCache, cache_key
from .parsing import RankingParseError, parse_better_response, parse_ranking, parse_structured
from .prompt import RankingTemplate
from .retry import RequestFailure, backoff, classify

__all__ = ["OpenAIRanker"]

logger = logging.getLogger(__name__)

_PLACEHOLDER_KEY = "EMPTY"  # vLLM, Ollama and llama.cpp accept any key


class OpenAIRanker(BlackBoxRanker):
    """Rank responses with a chat model behind an OpenAI-compatible API.

    Args:
        model: the model name the server knows (``"gpt-4o-mini"``, ``"Qwen/Qwen2.5-7B"``...).
        base_url: the endpoint (``None``: OpenAI). For vLLM ``http://host:8000/v1``, Ollama
            ``http://localhost:11434/v1``, llama.cpp ``http://localhost:8080/v1``.
        api_key: default ``$OPENAI_API_KEY``; with a ``base_url`` and no key a placeholder
            is sent.
        max_concurrency: requests in flight at once.
        requests_per_minute: rate limit (``None``: none).
        timeout: seconds per HTTP request.
        max_retries: retries per request after the first try (429, 5xx, timeouts,
            connection errors).
        temperature, seed: sampling parameters sent to the server (``temperature=None``:
            not sent, for models that refuse it); ``seed`` also fixes the
            display order of the responses.
        cache_path: SQLite file of answers (``None``: no cache).
        budget_requests, budget_tokens: caps on HTTP requests and reported tokens; past them
            results carry ``error="budget exhausted"``.
        template: the :class:`~cyclealign.rankers.prompt.RankingTemplate`.
        request_better_response: also ask for an improved response (``better_response``).
            ``None`` (default): as the trainer's ``use_better_response`` says (the trainer
            sets it); outside a trainer, ``None`` asks for none.
        structured_output: ask for JSON with ``response_format`` (a JSON schema).
        max_tokens: completion length limit sent to the server (``None``: not sent; OpenAI's
            reasoning models want ``extra_body={"max_completion_tokens": ...}`` instead).
        prices: USD per million tokens, ``{"prompt": p, "completion": c}``, for
            :meth:`cost_estimate`.
        extra_body: extra JSON fields for every request (server-specific options).
        backoff_base, backoff_max: exponential backoff in seconds, without ``Retry-After``.

    ``usage.retries`` counts transport retries and repair requests; ``usage.requests`` every
    HTTP request sent. A pickled or copied ranker has no key and refuses to rank.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        requests_per_minute: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        temperature: float | None = 0.0,
        seed: int = 0,
        cache_path: str | os.PathLike[str] | None = None,
        budget_requests: int | None = None,
        budget_tokens: int | None = None,
        template: RankingTemplate | None = None,
        request_better_response: bool | None = None,
        structured_output: bool = False,
        max_tokens: int | None = 1024,
        prices: dict[str, float] | None = None,
        extra_body: dict[str, Any] | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise ValueError(
                    "OpenAIRanker needs an API key for api.openai.com: set OPENAI_API_KEY or "
                    "pass api_key=... (for a local server, pass its base_url instead)."
                )
            key = _PLACEHOLDER_KEY
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}.")
        self.model = model
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.seed = seed
        self.template = template or RankingTemplate()
        self.request_better_response = request_better_response
        self.structured_output = structured_output
        self.max_tokens = max_tokens
        self.prices = dict(prices or {})
        self.extra_body = dict(extra_body or {})
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.cache = RankCache(cache_path) if cache_path is not None else None
        self.budget = Budget(budget_requests, budget_tokens)
        self._limiter = RateLimiter(requests_per_minute)
        # The key lives in closures, not attributes: vars(ranker) never shows it.
        self._make_client = lambda: _new_client(key, base_url)
        self._scrub = lambda text: str(text).replace(key, "***") if len(key) >= 8 else str(text)
        # Made now, not on the first request: building the client takes a noticeable moment
        # that would otherwise delay the first batch past the forward pass it should overlap.
        self._client: Any = self._make_client()
        self._semaphore: asyncio.Semaphore | None = None

    def __repr__(self) -> str:
        cache = str(self.cache.path) if self.cache else None
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r}, "
            f"max_concurrency={self.max_concurrency}, cache={cache!r})"
        )

    # -- the async path -----------------------------------------------------------------------

    async def arank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        """Rank ``requests`` concurrently; results in request order, failures included.

        The work always runs on the background loop of :mod:`._loop`, whichever loop awaits
        this, because the HTTP client, the semaphore and the rate limiter belong to one loop.
        """
        requests = list(requests)
        if asyncio.get_running_loop() is not background_loop():
            return await asyncio.wrap_future(_submit_coroutine(self.arank(requests)))
        if self._client is None:
            if not hasattr(self, "_make_client"):
                raise RuntimeError(
                    "This OpenAIRanker was pickled or copied, which drops its API key on "
                    "purpose; build a new OpenAIRanker in this process."
                )
            self._client = self._make_client()
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        return list(await asyncio.gather(*(self._rank_one(r) for r in requests)))

    async def _rank_one(self, request: RankRequest) -> RankResult:
        usage = Usage()
        n = len(request.responses)
        raw = ""
        try:
            if n < 1:
                raise RequestFailure("empty", "a request needs at least one response")
            if n == 1 and not self.request_better_response:
                # One response has one ranking: nothing to ask (or pay) for.
                result = RankResult(ranking=[0])
                result.usage = usage
                return result
            messages, order = self.template.build_messages(
                request,
                seed=self.seed,
                request_better_response=self.request_better_response,
                structured_output=self.structured_output,
            )
            answer = await self._answer(messages, usage)
            raw = answer["content"]
            try:
                displayed = self._parse(answer, n)
            except RankingParseError as err:
                # One repair request: the conversation, the answer, and what was wrong.
                repair = [
                    *messages,
                    {"role": "assistant", "content": answer["content"]},
                    {"role": "user", "content": self._repair_text(err, n)},
                ]
                usage.retries += 1
                answer = await self._answer(repair, usage)
                raw = answer["content"]
                try:
                    displayed = self._parse(answer, n)
                except RankingParseError as final:
                    raise RequestFailure(final.kind, f"unparseable answer: {final}") from None
            ranking = self.template.map_back(displayed, order)
            better = parse_better_response(raw) if self.request_better_response else None
            result = RankResult(ranking=ranking, better_response=better, raw_text=raw)
        except RequestFailure as failure:
            usage.failures[failure.kind] += 1
            result = RankResult(ranking=None, error=str(failure), raw_text=raw)
        except Exception as err:  # never let one request take the batch down
            logger.error("OpenAIRanker: unexpected %s: %s", type(err).__name__, self._scrub(err))
            usage.failures["internal"] += 1
            result = RankResult(ranking=None, error=f"internal error: {type(err).__name__}")
        if result.error is not None:
            result.error = self._scrub(result.error)
        result.usage = usage
        self.usage.add(usage)
        return result

    def _parse(self, answer: dict[str, Any], n: int) -> list[int]:
        if answer.get("refusal"):
            raise RankingParseError("refusal", "the model refused to rank")
        finish_reason = answer.get("finish_reason")
        try:
            if self.structured_output:
                try:
                    return parse_structured(answer["content"], n, finish_reason)
                except RankingParseError as err:
                    if err.kind != "missing":
                        raise
                    # Servers without schema support (some llama.cpp or Ollama builds)
                    # may answer in the text format; read it rather than pay for a repair.
                    try:
                        return parse_ranking(answer["content"], n, finish_reason)
                    except RankingParseError:
                        raise err from None
            return parse_ranking(answer["content"], n, finish_reason)
        except RankingParseError as err:
            if finish_reason == "content_filter":
                # The server's filter cut the answer: that is a refusal, whatever is left.
                raise RankingParseError(
                    "refusal", f"the server's content filter stopped the answer ({err})"
                ) from None
            raise

    def _repair_text(self, err: RankingParseError, n: int) -> str:
        listing = ", ".join(str(i) for i in range(n))
        if self.structured_output:
            return (
                f"Your answer could not be used: {err}. Reply with only a JSON object "
                f'{{"ranking": [...]}} listing each of the numbers {listing} exactly once.'
            )
        return (
            f"Your answer could not be used: {err}. Reply with only the line\n"
            f"### The desired ranking is: [...]\nlisting each of the numbers {listing} "
            "exactly once, best first."
        )

    # -- one answer: cache, budget, rate limit, retries ---------------------------------------

    def _params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"seed": self.seed}
        if self.temperature is not None:  # reasoning models refuse any temperature
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.structured_output:
            params["response_format"] = self.template.response_format(self.request_better_response)
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params

    async def _answer(self, messages: list[dict[str, str]], usage: Usage) -> dict[str, Any]:
        params = self._params()
        key = cache_key(self.model, messages, params)
        if self.cache is not None:
            cached = await asyncio.to_thread(self.cache.get, key)
            if cached is not None:
                usage.cache_hits += 1
                return cached
        answer = await self._request_with_retries(messages, params, usage)
        if self.cache is not None:
            # Committed before anything reads the answer: a crash from here on costs nothing.
            await asyncio.to_thread(self.cache.put, key, answer)
        return answer

    async def _request_with_retries(
        self, messages: list[dict[str, str]], params: dict[str, Any], usage: Usage
    ) -> dict[str, Any]:
        assert self._semaphore is not None
        attempt = 0
        while True:
            wait: float | None = None
            try:
                async with self._semaphore:
                    # Checked once a slot is free, so the token count of the answers that
                    # came back meanwhile is known.
                    if not self.budget.try_reserve():
                        raise RequestFailure("budget", "budget exhausted")
                    await self._limiter.wait()
                    usage.requests += 1
                    response = await self._client.chat.completions.create(
                        model=self.model, messages=messages, timeout=self.timeout, **params
                    )
                return self._record(response, usage)
            except openai.APIError as err:
                try:
                    kind, _, wait = classify(err)  # raises for what no retry can fix
                except RequestFailure as failure:
                    raise failure from None
            if attempt >= self.max_retries:
                raise RequestFailure(kind, f"{kind} after {attempt + 1} attempts")
            attempt += 1
            usage.retries += 1
            # The server's Retry-After wins over our schedule (it knows when quota returns).
            await asyncio.sleep(
                wait if wait is not None else backoff(attempt, self.backoff_base, self.backoff_max)
            )

    def _record(self, response: Any, usage: Usage) -> dict[str, Any]:
        choice = response.choices[0]
        message = choice.message
        reported = response.usage
        prompt_tokens = int(getattr(reported, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(reported, "completion_tokens", 0) or 0)
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        self.budget.add_tokens(prompt_tokens + completion_tokens)
        return {
            "content": message.content or "",
            "refusal": getattr(message, "refusal", None),
            "finish_reason": choice.finish_reason,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        }

    # -- bookkeeping --------------------------------------------------------------------------

    def cost_estimate(self) -> float:
        """USD spent so far by ``prices`` (0 without prices); cache hits cost nothing."""
        return (
            self.usage.prompt_tokens * self.prices.get("prompt", 0.0)
            + self.usage.completion_tokens * self.prices.get("completion", 0.0)
        ) / 1e6

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["budget"] = {"requests": self.budget.requests, "tokens": self.budget.tokens}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        budget = state.get("budget", {})
        self.budget.requests = int(budget.get("requests", 0))
        self.budget.tokens = int(budget.get("tokens", 0))

    def __getstate__(self) -> dict[str, Any]:
        # Pickles (e.g. a Trainer deep-copying its callbacks) must not carry the key.
        state = copy.copy(self.__dict__)
        state.pop("_make_client", None)
        state.pop("_scrub", None)
        state["_client"] = None
        state["_semaphore"] = None
        return state

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _new_client(api_key: str, base_url: str | None) -> Any:
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
