"""Rankings in flight: started before the white-box forward pass, collected after it, and
never allowed to stop training, unless the ranker says its errors are bugs.

Whatever goes wrong (``submit`` raising, the future raising, the wrong number of results, a
ranking that is not a permutation) becomes a failed :class:`~cyclealign.RankResult` with an
``error``. The exception: a ranker with ``stops_on_error`` (a
:class:`~cyclealign.rankers.FunctionRanker`, whose reward functions are user code) has its
exception re-raised as it is, with its own traceback.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence

from ..agreement import is_permutation
from ..types import RankRequest, RankResult
from .base import BlackBoxRanker

__all__ = ["PendingRanking"]

logger = logging.getLogger(__name__)


class PendingRanking:
    """Rankings in flight: started by the constructor, collected by :meth:`wait`."""

    def __init__(self, ranker: BlackBoxRanker, requests: Sequence[RankRequest]) -> None:
        self.requests = list(requests)
        self._future: concurrent.futures.Future[list[RankResult]] | None = None
        self._error: str | None = None
        self._stops_on_error = bool(getattr(ranker, "stops_on_error", False))
        try:
            self._future = ranker.submit(self.requests)
        except Exception as err:  # a ranker bug must not end a long training run
            if self._stops_on_error:
                raise
            self._error = f"submit() raised {type(err).__name__}: {err}"

    def wait(self) -> list[RankResult]:
        """One result per request, in request order; failures carry ``error``."""
        if self._future is not None:
            try:
                results = self._future.result()
            except Exception as err:
                if self._stops_on_error:
                    raise
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
    if not result.ok:
        return result if result.error else _failed(result, "no ranking and no error given")
    if not is_permutation(result.ranking, n):
        return _failed(result, f"invalid ranking {result.ranking!r} for {n} responses")
    result.ranking = [int(i) for i in result.ranking]
    return result


def _failed(result: RankResult, error: str) -> RankResult:
    return RankResult(None, error=error, raw_text=result.raw_text, usage=result.usage)
