"""PendingRanking turns every ranker misbehaviour into failed results."""

from __future__ import annotations

import concurrent.futures
import threading
import time

from cyclealign.rankers.base import BlackBoxRanker
from cyclealign.rankers.pending import PendingRanking
from cyclealign.types import RankRequest, RankResult

REQUESTS = [RankRequest("p", ["a", "b", "c"]), RankRequest("q", ["x", "y"])]


class Scripted(BlackBoxRanker):
    def __init__(self, answer):
        self.answer = answer

    def rank(self, requests):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class SubmitRaises(Scripted):
    def submit(self, requests):
        raise ConnectionError("no route")


def test_good_results_pass_through():
    results = PendingRanking(Scripted([RankResult([2, 0, 1]), RankResult([1, 0])]), REQUESTS).wait()
    assert [r.ranking for r in results] == [[2, 0, 1], [1, 0]]
    assert all(r.error is None for r in results)


def test_exceptions_and_wrong_counts_fail_the_whole_batch():
    for ranker, fragment in [
        (Scripted(RuntimeError("boom")), "RuntimeError: boom"),
        (SubmitRaises([]), "submit() raised ConnectionError"),
        (Scripted([RankResult([0, 1, 2])]), "1 results for 2 requests"),
        (Scripted(None), "NoneType results for 2 requests"),
    ]:
        results = PendingRanking(ranker, REQUESTS).wait()
        assert len(results) == 2
        assert all(r.ranking is None and fragment in r.error for r in results), fragment


def test_invalid_rankings_become_failures_that_keep_the_raw_text():
    answer = [RankResult([0, 0, 1], raw_text="[0, 0, 1]"), "not a result"]
    first, second = PendingRanking(Scripted(answer), REQUESTS).wait()
    assert first.ranking is None and "invalid ranking" in first.error
    assert first.raw_text == "[0, 0, 1]"
    assert second.ranking is None and "not a RankResult" in second.error
    third, _ = PendingRanking(Scripted([RankResult(None), RankResult([0, 1])]), REQUESTS).wait()
    assert third.error == "no ranking and no error given"


def test_a_future_that_raises_later():
    class Late(BlackBoxRanker):
        def rank(self, requests):
            raise AssertionError("unused")

        def submit(self, requests):
            future = concurrent.futures.Future()
            future.set_exception(TimeoutError("slow"))
            return future

    results = PendingRanking(Late(), REQUESTS).wait()
    assert all("TimeoutError: slow" in r.error for r in results)


class Stalls(BlackBoxRanker):
    """Answers the first request at once and the others only when released."""

    def __init__(self, per_request: bool):
        self.per_request = per_request
        self.release = threading.Event()

    def rank(self, requests):
        raise AssertionError("unused")

    def _answer(self, index, request):
        future = concurrent.futures.Future()
        if index == 0:
            future.set_result(RankResult(list(range(len(request.responses)))))
        else:
            threading.Thread(target=lambda: (self.release.wait(), future.set_result(
                RankResult([0, 1])))).start()  # fmt: skip
        return future

    def submit_each(self, requests):
        if not self.per_request:
            return None
        return [self._answer(i, r) for i, r in enumerate(requests)]

    def submit(self, requests):
        futures = [self._answer(i, r) for i, r in enumerate(requests)]
        batch = concurrent.futures.Future()
        threading.Thread(target=lambda: batch.set_result([f.result() for f in futures])).start()
        return batch


def test_a_round_deadline_fails_what_is_missing_and_cancels_nothing():
    for per_request in (True, False):
        ranker = Stalls(per_request)
        pending = PendingRanking(ranker, REQUESTS, deadline_s=0.3)
        start = time.monotonic()
        first, second = pending.wait()
        assert time.monotonic() - start < 2
        assert "round deadline (0.3 s)" in second.error and second.ranking is None
        assert pending.late == (1 if per_request else 2)
        # Per-request futures keep what came in time; a batch future is all or nothing.
        assert (first.ranking == [0, 1, 2]) is per_request
        ranker.release.set()


def test_no_deadline_waits():
    ranker = Stalls(per_request=True)
    threading.Timer(0.2, ranker.release.set).start()
    results = PendingRanking(ranker, REQUESTS).wait()
    assert [r.ranking for r in results] == [[0, 1, 2], [0, 1]]
