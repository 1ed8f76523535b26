"""The ranker base class supplies rank/arank/submit from whichever one a subclass wrote."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cyclealign.demonstrations import Demonstration
from cyclealign.rankers.base import (
    BlackBoxRanker,
    RankRequest,
    RankResult,
    Usage,
    is_permutation,
)


class SyncLongestFirst(BlackBoxRanker):
    def rank(self, requests):
        self.usage.requests += len(requests)
        self.thread = threading.current_thread().name
        return [
            RankResult(sorted(range(len(r.responses)), key=lambda i: -len(r.responses[i])))
            for r in requests
        ]


class AsyncShortestFirst(BlackBoxRanker):
    async def arank(self, requests):
        await asyncio.sleep(0)
        self.usage.requests += len(requests)
        return [
            RankResult(sorted(range(len(r.responses)), key=lambda i: len(r.responses[i])))
            for r in requests
        ]


REQUESTS = [RankRequest("p", ["aa", "a", "aaa"]), RankRequest("q", ["bbbb", "b"])]


def test_sync_ranker_gets_async_and_submit():
    ranker = SyncLongestFirst()
    expected = [[2, 0, 1], [0, 1]]
    assert [r.ranking for r in ranker.rank(REQUESTS)] == expected
    assert [r.ranking for r in asyncio.run(ranker.arank(REQUESTS))] == expected
    assert [r.ranking for r in ranker.submit(REQUESTS).result(timeout=10)] == expected
    # submit() must not run the sync ranker on the caller's thread (it overlaps the forward).
    assert ranker.thread != threading.current_thread().name
    assert ranker.usage.requests == 6


def test_async_ranker_gets_sync_rank_even_inside_a_running_loop():
    ranker = AsyncShortestFirst()
    expected = [[1, 0, 2], [1, 0]]
    assert [r.ranking for r in ranker.rank(REQUESTS)] == expected

    async def caller_with_its_own_loop():
        # A notebook or an async app calls the sync API from inside its loop.
        return ranker.rank(REQUESTS)

    assert [r.ranking for r in asyncio.run(caller_with_its_own_loop())] == expected


def test_a_ranker_must_implement_one_method():
    with pytest.raises(TypeError, match="must implement rank\\(\\) or arank\\(\\)"):

        class Empty(BlackBoxRanker):
            pass


def test_usage_accumulates_and_round_trips():
    a = Usage(requests=2, cache_hits=1, retries=3, prompt_tokens=10, completion_tokens=4)
    a.failures["parse"] += 1
    b = Usage(requests=1, prompt_tokens=5)
    b.failures["parse"] += 2
    b.failures["timeout"] += 1
    a.add(b)
    assert a.as_dict() == {
        "requests": 3,
        "cache_hits": 1,
        "retries": 3,
        "failures": {"parse": 3, "timeout": 1},
        "prompt_tokens": 15,
        "completion_tokens": 4,
    }
    assert a.total_failures == 4 and a.total_tokens == 19
    assert Usage.from_dict(a.as_dict()) == a


def test_state_dict_restores_usage():
    ranker = SyncLongestFirst()
    ranker.rank(REQUESTS)
    ranker.usage.failures["budget"] += 1
    state = ranker.state_dict()
    fresh = SyncLongestFirst()
    fresh.load_state_dict(state)
    assert fresh.usage == ranker.usage
    assert fresh.usage is not ranker.usage


@pytest.mark.parametrize(
    ("ranking", "n", "expected"),
    [
        ([2, 0, 1], 3, True),
        ([0], 1, True),
        ([0, 0, 1], 3, False),
        ([0, 1], 3, False),
        ([0, 1, 3], 3, False),
        ([-1, 0, 1], 3, False),
        (None, 2, False),
        (["a", "b"], 2, False),
    ],
)
def test_is_permutation(ranking, n, expected):
    assert is_permutation(ranking, n) is expected


def test_request_and_demonstration_are_normalised():
    demo = Demonstration("d", ["x", "y"], [1, 0])
    request = RankRequest([{"role": "user", "content": "hi"}], ["a", "b"], [demo])
    assert request.responses == ("a", "b")
    assert request.demonstrations == (demo,)
