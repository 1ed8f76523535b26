"""PendingRanking turns every ranker misbehaviour into failed results."""

from __future__ import annotations

import concurrent.futures

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
