"""The ranker base class supplies rank/arank/submit from whichever one a subclass wrote."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cyclealign.rankers.base import BlackBoxRanker
from cyclealign.types import RankRequest, RankResult


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


def test_state_dict_restores_usage():
    ranker = SyncLongestFirst()
    ranker.rank(REQUESTS)
    ranker.usage.failures["budget"] += 1
    state = ranker.state_dict()
    fresh = SyncLongestFirst()
    fresh.load_state_dict(state)
    assert fresh.usage == ranker.usage
    assert fresh.usage is not ranker.usage


def test_demonstration_tokens_count_with_the_rankers_tokenizer_or_estimate(tiny_tokenizer):
    from cyclealign.demonstrations import CHARS_PER_TOKEN
    from cyclealign.prompts import dialogue_text
    from cyclealign.rankers.prompt import RankingTemplate
    from cyclealign.types import Demonstration

    class Plain(BlackBoxRanker):
        def rank(self, requests):
            return []

    demo = Demonstration("How do I bake bread?", ["Mix flour.", "No idea."], [0, 1])
    plain = Plain()
    text = "\n".join([dialogue_text(demo.prompt), *demo.responses])
    assert plain.demonstration_tokens(demo) == -(-len(text) // CHARS_PER_TOKEN)
    # With a template, its rendering of the demonstration is what counts.
    plain.template = RankingTemplate()
    turns = "\n".join(t["content"] for t in plain.template.demonstration_turns(demo))
    assert plain.demonstration_tokens(demo) == -(-len(turns) // CHARS_PER_TOKEN)
    # With a tokenizer (LocalChatRanker has its model's), the tokens themselves.
    plain.tokenizer = tiny_tokenizer
    expected = len(tiny_tokenizer(turns, add_special_tokens=False)["input_ids"])
    assert plain.demonstration_tokens(demo) == expected != -(-len(turns) // CHARS_PER_TOKEN)
