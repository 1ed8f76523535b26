"""Calling the black-box ranker without ever letting it stop training, and turning its
answers into rewards.

Whatever goes wrong (``submit`` raising, the future raising, the wrong number of results, a
ranking that is not a permutation) becomes a failed :class:`RankResult` with an ``error``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
from collections.abc import Sequence

from .rankers.base import BlackBoxRanker, RankRequest, RankResult, is_permutation

__all__ = ["PendingRanking", "linear_rewards", "rewards_from_result"]

logger = logging.getLogger(__name__)


class PendingRanking:
    """Rankings in flight: started by the constructor, collected by :meth:`wait`."""

    def __init__(self, ranker: BlackBoxRanker, requests: Sequence[RankRequest]) -> None:
        self.requests = list(requests)
        self._future: concurrent.futures.Future[list[RankResult]] | None = None
        self._error: str | None = None
        try:
            self._future = ranker.submit(self.requests)
        except Exception as err:  # a ranker bug must not end a long training run
            self._error = f"submit() raised {type(err).__name__}: {err}"

    def wait(self) -> list[RankResult]:
        """One result per request, in request order; failures carry ``error``."""
        if self._future is not None:
            try:
                results = self._future.result()
            except Exception as err:
                self._error = f"ranking raised {type(err).__name__}: {err}"
            else:
                return self._validate(results)
        logger.warning("Black-box ranking failed for the whole batch: %s", self._error)
        return [RankResult(None, error=self._error) for _ in self.requests]

    def _validate(self, results: object) -> list[RankResult]:
        if not isinstance(results, Sequence) or len(results) != len(self.requests):
            got = len(results) if isinstance(results, Sequence) else type(results).__name__
            error = f"ranker returned {got} results for {len(self.requests)} requests"
            logger.warning("Black-box ranking failed for the whole batch: %s", error)
            return [RankResult(None, error=error) for _ in self.requests]
        return [_check(r, len(q.responses)) for r, q in zip(results, self.requests)]


def _check(result: object, n: int) -> RankResult:
    if not isinstance(result, RankResult):
        return RankResult(None, error=f"not a RankResult: {type(result).__name__}")
    if result.ranking is None:
        return result if result.error else _failed(result, "no ranking and no error given")
    if not is_permutation(result.ranking, n):
        return _failed(result, f"invalid ranking {result.ranking!r} for {n} responses")
    result.ranking = [int(i) for i in result.ranking]
    return result


def _failed(result: RankResult, error: str) -> RankResult:
    return RankResult(None, error=error, raw_text=result.raw_text, usage=result.usage)


def linear_rewards(ranking: Sequence[int]) -> list[float]:
    """Reward ``n-1`` for the best response down to ``0`` for the worst, by response index."""
    n = len(ranking)
    rewards = [0.0] * n
    for position, index in enumerate(ranking):
        rewards[index] = float(n - 1 - position)
    return rewards


def rewards_from_result(result: RankResult, mode: str) -> list[float]:
    """Rewards by response index for a successful result.

    ``mode="scores"`` uses the ranker's scores when it gave one finite value per response;
    otherwise (and for ``"linear"``) the ranks.
    """
    assert result.ranking is not None
    scores = result.scores
    if mode == "scores" and scores is not None and len(scores) == len(result.ranking):
        try:
            values = [float(s) for s in scores]
        except (TypeError, ValueError):
            values = []
        if values and all(math.isfinite(v) for v in values):
            return values
    return linear_rewards(result.ranking)
