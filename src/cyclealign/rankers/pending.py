"""Rankings in flight: started before the white-box forward pass, collected after it, and
never allowed to stop training, unless the ranker says its errors are bugs.

Whatever goes wrong (``submit`` raising, the future raising, the wrong number of results, a
ranking that is not a permutation, no answer within the round deadline) becomes a failed
:class:`~cyclealign.RankResult` with an ``error``. The exception: a ranker with
``stops_on_error`` (a :class:`~cyclealign.rankers.FunctionRanker`, whose reward functions are
user code) has its exception re-raised as it is, with its own traceback.

A round deadline cancels nothing: a request still within its own timeout goes on, and its
answer, paid for, is cached when it comes (a re-run uses it).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Sequence

from ..agreement import is_permutation
from ..types import RankRequest, RankResult, Usage
from .base import BlackBoxRanker

__all__ = ["TRANSIENT_FAILURES", "PendingRanking", "failure_kind"]

logger = logging.getLogger(__name__)

#: Failure kinds (``usage.failures``) of an outage rather than of the answers: the server is
#: down, slow or rationing (``late``: no answer within the round deadline). ``OpenAIRanker``
#: retries them, and the trainer keeps going through them; every other kind (unparseable
#: answers, refusals, other 4xx, a bad key, an exhausted budget, a ranker bug) no wait can fix.
TRANSIENT_FAILURES = frozenset({"rate_limit", "server", "timeout", "connection", "late"})


def failure_kind(result: RankResult) -> str | None:
    """The failure kind of a result (``None`` for a ranking): the kind its own ``usage``
    counted, else ``"other"`` (rankers that do not count kinds per result, and failures
    of a whole batch)."""
    if result.ok:
        return None
    failures = result.usage.failures if result.usage is not None else None
    if failures:
        return next(iter(failures))
    return "other"


class PendingRanking:
    """Rankings in flight: started by the constructor, collected by :meth:`wait`.

    Args:
        ranker: the black box.
        requests: one per prompt.
        deadline_s: seconds from now within which :meth:`wait` returns; requests without an
            answer by then fail for this round (``late`` counts them). ``None``: no deadline.
    """

    def __init__(
        self,
        ranker: BlackBoxRanker,
        requests: Sequence[RankRequest],
        deadline_s: float | None = None,
    ) -> None:
        self.requests = list(requests)
        self.deadline_s = deadline_s
        self.late = 0
        self._started = time.monotonic()
        self._future: concurrent.futures.Future[list[RankResult]] | None = None
        self._each: list[concurrent.futures.Future[RankResult]] | None = None
        self._error: str | None = None
        self._stops_on_error = bool(getattr(ranker, "stops_on_error", False))
        try:
            each = ranker.submit_each(self.requests)
            if each is not None:
                self._each = list(each)
            else:
                self._future = ranker.submit(self.requests)
        except Exception as err:  # a ranker bug must not end a long training run
            if self._stops_on_error:
                raise
            self._error = f"submit() raised {type(err).__name__}: {err}"

    def _remaining(self) -> float | None:
        if self.deadline_s is None:
            return None
        return max(0.0, self._started + self.deadline_s - time.monotonic())

    def _late_result(self) -> RankResult:
        usage = Usage()
        usage.failures["late"] += 1  # the kind, for this result only (no request was counted)
        return RankResult(
            None,
            error=f"no answer within the round deadline ({self.deadline_s:g} s); the request "
            "goes on and its answer is cached when it comes",
            usage=usage,
        )

    def wait(self) -> list[RankResult]:
        """One result per request, in request order; failures carry ``error``."""
        if self._each is not None:
            return self._wait_each(self._each)
        if self._future is not None:
            done, _ = concurrent.futures.wait([self._future], timeout=self._remaining())
            if not done:
                self.late = len(self.requests)
                logger.warning(
                    "Black-box ranking: no answer within the round deadline (%g s) for the "
                    "batch of %d requests; the round goes on without them.",
                    self.deadline_s,
                    len(self.requests),
                )
                return [self._late_result() for _ in self.requests]
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

    def _wait_each(self, futures: list[concurrent.futures.Future[RankResult]]) -> list[RankResult]:
        _, pending = concurrent.futures.wait(futures, timeout=self._remaining())
        results = []
        for future, request in zip(futures, self.requests):
            if future in pending:
                results.append(self._late_result())
                continue
            try:
                result = future.result()
            except Exception as err:
                result = RankResult(None, error=f"ranking raised {type(err).__name__}: {err}")
            results.append(_check(result, len(request.responses)))
        self.late = len(pending)
        if pending:
            logger.warning(
                "Black-box ranking: %d of %d requests had no answer within the round deadline "
                "(%g s); they fail for this round and their answers are cached when they come.",
                len(pending),
                len(futures),
                self.deadline_s,
            )
        return results

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
