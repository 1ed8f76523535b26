"""Selecting demonstrations for a request and adding agreements to the pool."""

from __future__ import annotations

from types import SimpleNamespace

from cyclealign.cycle_targets import judge_prompt
from cyclealign.demonstrations import Demonstration
from cyclealign.pool_sync import select_demonstrations, share_agreements
from cyclealign.rankers.base import RankResult


class ListPool:
    """The part of the pool interface these functions use."""

    def __init__(self):
        self.items = []

    def add(self, demo):
        self.items.append(demo)

    def __len__(self):
        return len(self.items)

    def select(self, query, k, policy="recent"):
        self.asked = (query, k, policy)
        return self.items[-k:]


def args(**kw):
    base = dict(
        use_dynamic_demonstrations=True, max_demonstrations=2, demonstration_selection="similar"
    )
    return SimpleNamespace(**{**base, **kw})


def test_agreements_of_two_or_more_become_demonstrations():
    kw = dict(failure_policy="skip", reward_mode="linear", use_better_response=False)
    outcomes = [
        judge_prompt(RankResult([2, 0, 1]), [2, 1, 0], **kw),  # agreement [2, 0]
        judge_prompt(RankResult([0, 1]), [1, 0], **kw),  # agreement of length 1
        judge_prompt(RankResult(None, error="x"), [0, 1], **kw),
    ]
    pool = ListPool()
    added = share_agreements(
        pool, ["p", "q", "r"], [["a", "b", "c"], ["d", "e"], ["f", "g"]], outcomes
    )
    assert added == 1
    assert pool.items == [Demonstration(prompt="p", responses=("a", "c"), ranking=(1, 0))]


def test_selection_follows_the_switches():
    pool = ListPool()
    assert select_demonstrations(pool, "q", args()) == []  # empty pool
    pool.items = ["d1", "d2", "d3"]
    assert select_demonstrations(pool, "q", args()) == ["d2", "d3"]
    assert pool.asked == ("q", 2, "similar")
    assert select_demonstrations(pool, "q", args(use_dynamic_demonstrations=False)) == []
    assert select_demonstrations(pool, "q", args(max_demonstrations=0)) == []
