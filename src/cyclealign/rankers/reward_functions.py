"""TRL reward functions as a ranker, called the way TRL's ``GRPOTrainer`` calls them.

A reward function ``f(prompts, completions, completion_ids, trainer_state, **columns)``
written for TRL works unchanged: it gets one flat list per argument, one entry per
(prompt, response) pair. Several functions are summed with ``reward_weights``; the weighted
sums rank the responses, best first.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..prompts import as_messages
from ..types import RankRequest, RankResult, Usage
from .base import BlackBoxRanker

__all__ = ["FunctionRanker", "ranking_from_scores", "scored_results"]

logger = logging.getLogger(__name__)

#: Keyword arguments of TRL's call; a dataset column may not take one of these names.
CALL_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state")
#: Columns TRL never passes on (they are the call's own data).
_SKIPPED_COLUMNS = ("prompt", "completion", "completion_ids")


def ranking_from_scores(scores: Sequence[float]) -> list[int]:
    """Indices best-first; ties keep their order (a stable sort)."""
    return sorted(range(len(scores)), key=lambda i: -scores[i])


def scored_results(
    requests: Sequence[RankRequest], flat_scores: Sequence[float], usage: Usage
) -> list[RankResult]:
    """One result per request from the flat list of its responses' scores (request order).

    A request with a non-finite score fails (``usage.failures["nonfinite"]``).
    """
    results, start = [], 0
    for request in requests:
        scores = [float(s) for s in flat_scores[start : start + len(request.responses)]]
        start += len(request.responses)
        if not all(math.isfinite(s) for s in scores):
            usage.failures["nonfinite"] += 1
            results.append(RankResult(None, error=f"non-finite scores {scores}", usage=Usage()))
        else:
            results.append(RankResult(ranking_from_scores(scores), scores=scores, usage=Usage()))
    return results


def _callable_name(func: Any) -> str:
    return getattr(func, "__name__", None) or type(func).__name__


def _is_async(func: Any) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


class FunctionRanker(BlackBoxRanker):
    """Rank by TRL reward functions, summed with ``reward_weights``.

    Each function gets the keyword arguments TRL's ``GRPOTrainer._calculate_rewards`` passes,
    one entry per (prompt, response) pair:

    * ``prompts``: the prompts as the dataset holds them (strings or chat messages);
    * ``completions``: ``[{"role": "assistant", "content": text}]`` where the prompt is chat
      messages (conversational data), the text otherwise;
    * ``completion_ids``: the response's token ids (``None`` for requests built without
      them, outside the trainer);
    * every other dataset column (``solution``, ...) as a list, the row's value repeated for
      each of its responses;
    * ``trainer_state``: the trainer's ``TrainerState`` (``None`` outside training).

    A function may be ``async def``; the sync ones run one after the other in a worker thread
    (a slow one does not hold up the event loop), the async ones concurrently meanwhile. As in TRL, a
    ``None`` reward (or NaN) means "this function does not score this one": the weighted sum
    leaves it out. A response no function scores cannot be ranked, so its request fails
    (``usage.failures["unscorable"]``); a non-finite sum fails its request too
    (``"nonfinite"``). Ties keep the responses' order (the earlier sampled ranks first).

    A reward function is user code: when one raises, returns the wrong number of rewards or
    something that is not a number, the exception stops training, with its own traceback
    (``stops_on_error``), instead of being counted as a flaky ranker.

    Args:
        reward_funcs: one function or a list of them.
        reward_weights: one weight per function (default: all ``1.0``), TRL's name.
        batch_size: (prompt, response) pairs per call at most; a request's responses are never
            split across calls. ``None``: one call for all the requests ranked together.
    """

    writes_better_responses = False

    stops_on_error = True

    def __init__(
        self,
        reward_funcs: Callable[..., Any] | Sequence[Callable[..., Any]],
        reward_weights: Sequence[float] | None = None,
        batch_size: int | None = None,
    ) -> None:
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("FunctionRanker needs at least one reward function.")
        for func in funcs:
            if not callable(func):
                raise TypeError(
                    "FunctionRanker: reward_funcs must be callables (prompts, completions, "
                    f"**kwargs) -> list[float], got {type(func).__name__}. For a reward model, "
                    "use RewardModelRanker."
                )
        if reward_weights is None:
            weights = [1.0] * len(funcs)
        else:
            weights = [float(w) for w in reward_weights]
            if len(weights) != len(funcs):
                raise ValueError(
                    f"FunctionRanker: {len(weights)} reward_weights for {len(funcs)} reward "
                    "functions; give one weight per function."
                )
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"FunctionRanker: batch_size must be >= 1 or None, got {batch_size}.")
        self.reward_funcs = funcs
        self.reward_weights = weights
        self.reward_func_names = [_callable_name(f) for f in funcs]
        self.batch_size = batch_size

    async def arank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        results: list[RankResult] = []
        chunk_size = self.batch_size or max(1, sum(len(r.responses) for r in requests))
        for chunk in _chunks_of_requests(requests, chunk_size):
            self.usage.requests += len(chunk)
            kwargs = self.call_kwargs(chunk)
            per_func = await self._rewards(kwargs)
            results += self._combine(chunk, per_func)
        return results

    def call_kwargs(self, requests: Sequence[RankRequest]) -> dict[str, Any]:
        """The keyword arguments of one call for ``requests`` (one entry per response)."""
        prompts, completions, completion_ids = [], [], []
        for r in requests:
            chat = as_messages(r.prompt) is not None
            ids = r.completion_ids or [None] * len(r.responses)
            for text, token_ids in zip(r.responses, ids):
                prompts.append(r.prompt)
                completions.append([{"role": "assistant", "content": text}] if chat else text)
                completion_ids.append(token_ids)
        kwargs: dict[str, Any] = {}
        names = dict.fromkeys(k for r in requests for k in r.columns if k not in _SKIPPED_COLUMNS)
        for name in names:
            if name in CALL_ARGUMENTS:
                raise ValueError(
                    f"FunctionRanker: the dataset column {name!r} has the name of an argument "
                    f"reward functions are called with ({', '.join(CALL_ARGUMENTS)}); rename it."
                )
            kwargs[name] = [r.columns.get(name) for r in requests for _ in r.responses]
        return {
            "prompts": prompts,
            "completions": completions,
            "completion_ids": completion_ids,
            **kwargs,
            "trainer_state": self.trainer_state,
        }

    async def _rewards(self, kwargs: dict[str, Any]) -> list[list[float]]:
        """Every function's rewards for one call: the sync ones one after the other in a worker
        thread (as TRL calls them, in order), the async ones concurrently meanwhile."""
        sync = [i for i, f in enumerate(self.reward_funcs) if not _is_async(f)]
        asynchronous = [i for i, f in enumerate(self.reward_funcs) if _is_async(f)]

        def run_sync() -> list[Any]:
            return [self.reward_funcs[i](**kwargs) for i in sync]

        outputs = await asyncio.gather(
            asyncio.to_thread(run_sync), *(self.reward_funcs[i](**kwargs) for i in asynchronous)
        )
        by_index = dict(zip(sync, outputs[0])) | dict(zip(asynchronous, outputs[1:]))
        rewards = []
        for i in range(len(self.reward_funcs)):
            output = by_index[i]
            if inspect.isawaitable(output):  # a sync function that returned a coroutine
                output = await output
            rewards.append(self._checked(self.reward_func_names[i], output, kwargs))
        return rewards

    @staticmethod
    def _checked(name: str, rewards: Any, kwargs: dict[str, Any]) -> list[float]:
        expected = len(kwargs["completions"])
        rewards = list(rewards)
        if len(rewards) != expected:
            raise ValueError(
                f"The reward function {name!r} returned {len(rewards)} rewards, but {expected} "
                "were expected (one per prompt-completion pair). Make sure the reward function "
                "returns exactly one reward per completion."
            )
        try:
            return [math.nan if r is None else float(r) for r in rewards]
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"The reward function {name!r} returned a reward that is not a number or None "
                f"({err}); return one float (or None) per completion."
            ) from err

    def _combine(
        self, requests: Sequence[RankRequest], per_func: Sequence[list[float]]
    ) -> list[RankResult]:
        """Weighted sums (``None``/NaN rewards left out, as TRL's ``nansum``) to rankings."""
        sums, unscorable = [], []
        for i in range(len(per_func[0])):
            pairs = [(w, rewards[i]) for w, rewards in zip(self.reward_weights, per_func)]
            scored = [(w, r) for w, r in pairs if not math.isnan(r)]
            unscorable.append(not scored)
            sums.append(sum(w * r for w, r in scored if w != 0))
        results: list[RankResult] = []
        start = 0
        for request in requests:
            stop = start + len(request.responses)
            missing = [j for j in range(len(request.responses)) if unscorable[start + j]]
            if missing:
                self.usage.failures["unscorable"] += 1
                logger.warning(
                    "No reward function scored responses %s of the prompt %.80r (all returned "
                    "None); the prompt is left unranked.",
                    missing,
                    request.prompt,
                )
                results.append(
                    RankResult(None, error=f"no reward for responses {missing}", usage=Usage())
                )
            else:
                results += scored_results([request], sums[start:stop], self.usage)
            start = stop
        return results


def _chunks_of_requests(requests: Sequence[RankRequest], size: int) -> list[list[RankRequest]]:
    chunks: list[list[RankRequest]] = [[]]
    count = 0
    for request in requests:
        if chunks[-1] and count + len(request.responses) > size:
            chunks.append([])
            count = 0
        chunks[-1].append(request)
        count += len(request.responses)
    return [c for c in chunks if c]
