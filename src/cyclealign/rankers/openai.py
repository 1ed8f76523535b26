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
- **``timeout`` bounds a request as a whole**, however slowly the server sends its bytes
  (the HTTP client's own timeout is per read); :meth:`OpenAIRanker.deadline_s` says how
  long a batch can take, retries included, for the trainer's round deadline.
- **One unparseable answer gets one repair request** quoting what was wrong.
- **Budgets hold** with any number of requests in flight, and, with a cache file, across
  kills, resumes and processes sharing the file (see :mod:`.budget`).
- **Identical requests in flight share one call** (single flight, within a process).

The API key is read once and kept only inside the SDK client: it is no field of any config,
and never appears in ``repr``, ``state_dict``, logs, errors or the cache; what a server sends
back (errors, answers) is masked (:mod:`.redact`) before it is stored or shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
from .grammar import RequestText
from .parsing import RankingParseError, parse_better_response, read_answer, repair_request
from .prompt import RankingTemplate
from .redact import Redactor
from .retry import RequestFailure
from .transport import check_settings, request_answer

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
        timeout: seconds per HTTP request, as a whole (connection, waiting and every byte of
            the answer); past it the request is a ``timeout`` failure, and is retried.
        max_retries: retries per request after the first try (429, 5xx, timeouts,
            connection errors).
        temperature, seed: sampling parameters sent to the server (``temperature=None``:
            not sent, for models that refuse it); ``seed`` also fixes the
            display order of the responses.
        cache_path: SQLite file of answers (``None``: no cache). It also keeps the spend
            ledger of the budgets.
        budget_requests, budget_tokens: caps on HTTP requests and reported tokens over the
            whole job; past them results carry ``error="budget exhausted"``. With a
            ``cache_path`` the spend is recorded in its file before each request, so it holds
            across kills and resumes and is shared by every process using the file; without
            one, it is kept in memory and in checkpoints (a warning says what a kill costs).
        budget_scope: the job whose spend the ledger counts: processes and runs using one
            cache file with the same scope share one budget; a new scope starts from zero.
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
        budget_scope: str = "default",
    ) -> None:
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise ValueError(
                    "OpenAIRanker needs an API key for api.openai.com: set OPENAI_API_KEY or "
                    "pass api_key=... (for a local server, pass its base_url instead)."
                )
            key = _PLACEHOLDER_KEY
        check_settings(max_concurrency, max_retries, timeout, backoff_base, backoff_max)
        if max_tokens is not None and (isinstance(max_tokens, bool) or not _positive(max_tokens)):
            raise ValueError(
                f"max_tokens must be an integer >= 1 or None (not sent), got {max_tokens!r}."
            )
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
        budget = Budget(budget_requests, budget_tokens)  # checks the limits before any file
        self._limiter = RateLimiter(requests_per_minute)
        self.cache = RankCache(cache_path) if cache_path is not None else None
        if self.cache is not None:
            budget.ledger = self.cache.ledger(budget_scope)
        elif budget_requests is not None or budget_tokens is not None:
            logger.warning(
                "OpenAIRanker: a budget without a cache_path is kept in memory and in "
                "checkpoints only, so a run killed and resumed can overspend by what was paid "
                "after its last checkpoint. Give a cache_path to keep the spend in its file."
            )
        self.budget = budget
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}
        # The key lives in closures, not attributes: vars(ranker) never shows it.
        self._make_client = lambda: _new_client(key, base_url)
        redactor = Redactor(key)
        self._scrub = lambda text: redactor(text)
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
        self._prepare()
        return list(await asyncio.gather(*(self._rank_one(r) for r in requests)))

    def submit_each(
        self, requests: Sequence[RankRequest]
    ) -> list[concurrent.futures.Future[RankResult]]:
        """One future per request, each done as soon as its own answer is in (so a round
        deadline keeps the answers that came in time; the others go on and are cached)."""
        return [_submit_coroutine(self._rank_single(r)) for r in requests]

    async def _rank_single(self, request: RankRequest) -> RankResult:
        self._prepare()
        return await self._rank_one(request)

    def deadline_s(self, num_requests: int) -> float:
        """The longest ``num_requests`` requests submitted together can take: every attempt
        of the answer and of its repair request running to ``timeout``, the backoffs in
        between, in waves of ``max_concurrency``, spaced by ``requests_per_minute``. A server
        asking to wait longer than that (``Retry-After``) is not covered."""
        attempts = self.max_retries + 1
        waits = sum(
            min(self.backoff_max, self.backoff_base * 2 ** (a - 1)) for a in range(1, attempts)
        )
        per_request = 2 * (attempts * self.timeout + waits)  # the answer and one repair
        waves = -(-max(1, num_requests) // self.max_concurrency)
        return waves * per_request + num_requests * self._limiter.interval

    def _prepare(self) -> None:
        """The client and the semaphore, on the background loop."""
        if self._client is None:
            if not hasattr(self, "_make_client"):
                raise RuntimeError(
                    "This OpenAIRanker was pickled or copied, which drops its API key on "
                    "purpose; build a new OpenAIRanker in this process."
                )
            self._client = self._make_client()
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)

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
            answer = await self._answer(messages, usage, n)
            raw = answer["content"]
            try:
                displayed = self._parse(answer, n, messages)
            except RankingParseError as err:
                # One repair request: the conversation, the answer, and what was wrong.
                repair = [
                    *messages,
                    {"role": "assistant", "content": answer["content"]},
                    {"role": "user", "content": repair_request(err, n, self.structured_output)},
                ]
                usage.retries += 1
                answer = await self._answer(repair, usage, n)
                raw = answer["content"]
                messages = repair
                try:
                    displayed = self._parse(answer, n, messages)
                except RankingParseError as final:
                    raise RequestFailure(final.kind, f"unparseable answer: {final}") from None
            ranking = self.template.map_back(displayed, order)
            better = (
                parse_better_response(raw, request=messages)
                if self.request_better_response
                else None
            )
            result = RankResult(ranking=ranking, better_response=better, raw_text=raw)
        except RequestFailure as failure:
            usage.failures[failure.kind] += 1
            result = RankResult(ranking=None, error=str(failure), raw_text=raw)
        except Exception as err:  # never let one request take the batch down
            logger.error("OpenAIRanker: unexpected %s: %s", type(err).__name__, self._scrub(err))
            usage.failures["internal"] += 1
            result = RankResult(ranking=None, error=f"internal error: {type(err).__name__}")
        # Answers were masked on arrival; errors may quote what the server sent.
        if result.error is not None:
            result.error = self._scrub(result.error)
        result.usage = usage
        self.usage.add(usage)
        return result

    def _parse(self, answer: dict[str, Any], n: int, messages: list[dict[str, str]]) -> list[int]:
        # Markers copied from what was sent are quotations, not the black box's answer.
        return read_answer(answer, n, RequestText(messages), self.structured_output)

    # -- one answer: cache, budget, rate limit, retries ---------------------------------------

    def _params(self, n: int) -> dict[str, Any]:
        params: dict[str, Any] = {"seed": self.seed}
        if self.temperature is not None:  # reasoning models refuse any temperature
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.structured_output:
            params["response_format"] = self.template.response_format(
                n, self.request_better_response
            )
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params

    async def _answer(self, messages: list[dict[str, str]], usage: Usage, n: int) -> dict[str, Any]:
        params = self._params(n)
        key = cache_key(self.model, messages, params)
        if self.cache is not None:
            cached, repaired = await asyncio.to_thread(self.cache.lookup, key)
            usage.cache_repairs += repaired
            if cached is not None:
                usage.cache_hits += 1
                return cached
        task = self._inflight.get(key)
        if task is not None:  # the same request is in flight: share its answer (and cost)
            usage.cache_hits += 1
            return await asyncio.shield(task)
        task = asyncio.ensure_future(self._fetch(key, messages, params, usage))
        self._inflight[key] = task
        task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _fetch(
        self, key: str, messages: list[dict[str, str]], params: dict[str, Any], usage: Usage
    ) -> dict[str, Any]:
        answer = await request_answer(self, messages, params, usage)
        if self.cache is not None:
            # Committed before anything reads the answer: a crash from here on costs nothing.
            await asyncio.to_thread(self.cache.try_put, key, answer)
        return answer

    # -- bookkeeping --------------------------------------------------------------------------

    def cost_estimate(self) -> float:
        """USD spent so far by ``prices`` (0 without prices); cache hits cost nothing."""
        return (
            self.usage.prompt_tokens * self.prices.get("prompt", 0.0)
            + self.usage.completion_tokens * self.prices.get("completion", 0.0)
        ) / 1e6

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["budget"] = self.budget.state_dict()
        if self.cache is not None:
            state["cache"] = {"answers": len(self.cache)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.budget.load_state_dict(state.get("budget", {}))
        recorded = int(state.get("cache", {}).get("answers", 0))
        if self.cache is not None and recorded and len(self.cache) < recorded:
            logger.warning(
                "The answer cache %s holds %d answers, but the checkpoint recorded %d: the "
                "missing ones will be paid for again. Was the file replaced, truncated or "
                "another cache_path given?",
                self.cache.path,
                len(self.cache),
                recorded,
            )

    def __getstate__(self) -> dict[str, Any]:
        # Pickles (e.g. a Trainer deep-copying its callbacks) must not carry the key.
        state = copy.copy(self.__dict__)
        state.pop("_make_client", None)
        state.pop("_scrub", None)
        state["_client"] = None
        state["_semaphore"] = None
        state["_inflight"] = {}
        return state

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _new_client(api_key: str, base_url: str | None) -> Any:
    return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and value >= 1
