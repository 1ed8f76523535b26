"""The black-box ranker interface and its request/result types.

A ranker receives, for each prompt, the white-box model's sampled responses and returns
their order best-first. Subclasses implement either :meth:`BlackBoxRanker.rank` (sync)
or :meth:`BlackBoxRanker.arank` (async); the base supplies the other one and
:meth:`BlackBoxRanker.submit`, which the trainer uses to overlap the black box's latency
with its own forward pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..demonstrations import Demonstration, Prompt
from ._loop import submit as _submit_coroutine


def is_permutation(ranking: Sequence[int] | None, n: int) -> bool:
    """True when ``ranking`` holds each of ``0..n-1`` exactly once."""
    if ranking is None or len(ranking) != n:
        return False
    try:
        return sorted(int(i) for i in ranking) == list(range(n))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class RankRequest:
    """One prompt, its candidate responses and the demonstrations to show with it."""

    prompt: Prompt
    responses: Sequence[str]
    demonstrations: Sequence[Demonstration] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "demonstrations", tuple(self.demonstrations))


@dataclass
class Usage:
    """What a ranker has spent. Token counts are the ones the server reports."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        """Accumulate ``other`` into ``self`` (in place)."""
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.retries += other.retries
        self.failures.update(other.failures)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        data = dict(data)
        data["failures"] = Counter(data.get("failures", {}))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RankResult:
    """A ranker's answer for one request.

    Args:
        ranking: response indices best-first (a full permutation), or ``None`` when the
            ranker could not produce one; ``error`` then says why.
        scores: real-valued quality per response, when the ranker has them.
        better_response: an improved response written by the black box, when asked for.
        error: why there is no ranking (``None`` on success).
        raw_text: the black box's raw answer, for logs.
        usage: what this request cost.
    """

    ranking: list[int] | None
    scores: list[float] | None = None
    better_response: str | None = None
    error: str | None = None
    raw_text: str = ""
    usage: Usage | None = None

    @property
    def ok(self) -> bool:
        return self.ranking is not None


class BlackBoxRanker:
    """Base class of every ranker. Implement :meth:`rank` or :meth:`arank` (or both).

    A minimal ranker::

        class LengthRanker(BlackBoxRanker):
            def rank(self, requests):
                return [RankResult(sorted(range(len(r.responses)),
                                          key=lambda i: -len(r.responses[i])))
                        for r in requests]
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.rank is BlackBoxRanker.rank and cls.arank is BlackBoxRanker.arank:
            # Checked when the class is defined, not at the first training step.
            raise TypeError(f"{cls.__name__} must implement rank() or arank().")

    # ``usage`` is created on first access so subclasses need not call super().__init__().
    @property
    def usage(self) -> Usage:
        try:
            return self.__dict__["_usage"]
        except KeyError:
            self.__dict__["_usage"] = Usage()
            return self.__dict__["_usage"]

    @usage.setter
    def usage(self, value: Usage) -> None:
        self.__dict__["_usage"] = value

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        """Rank every request; results come back in request order."""
        return self.submit(requests).result()

    async def arank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        """Async version of :meth:`rank`."""
        # A sync-only ranker runs in a worker thread so the caller's loop stays free.
        return await asyncio.to_thread(type(self).rank, self, list(requests))

    def submit(
        self, requests: Sequence[RankRequest]
    ) -> concurrent.futures.Future[list[RankResult]]:
        """Start ranking in the background and return a future of the results.

        The trainer calls this, runs its forward pass, then waits on the future.
        """
        requests = list(requests)
        if type(self).arank is not BlackBoxRanker.arank:
            return _submit_coroutine(self.arank(requests))
        return _submit_coroutine(asyncio.to_thread(type(self).rank, self, requests))

    def state_dict(self) -> dict[str, Any]:
        """What to store in a checkpoint (never secrets)."""
        return {"usage": self.usage.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.usage = Usage.from_dict(state.get("usage", {}))

    def close(self) -> None:
        """Release clients, files and threads. Safe to call twice."""
