"""Selecting demonstrations for a request and adding agreements to the pool."""

from __future__ import annotations

from types import SimpleNamespace

from cyclealign.cycle_targets import judge_prompt
from cyclealign.demonstrations import Demonstration, DemonstrationPool
from cyclealign.pool_sync import select_demonstrations, share_agreements
from cyclealign.rankers.base import RankResult


def args(**kw):
    base = dict(
        use_dynamic_demonstrations=True,
        max_demonstrations=2,
        demonstration_selection="recent",
        demonstration_max_chars=None,
    )
    return SimpleNamespace(**{**base, **kw})


def test_agreements_of_two_or_more_become_demonstrations():
    kw = dict(failure_policy="skip", reward_mode="linear", use_better_response=False)
    outcomes = [
        judge_prompt(RankResult([2, 0, 1]), [2, 1, 0], **kw),  # agreement [2, 0]
        judge_prompt(RankResult([0, 1]), [1, 0], **kw),  # agreement of length 1
        judge_prompt(RankResult(None, error="x"), [0, 1], **kw),
    ]
    pool = DemonstrationPool()
    added = share_agreements(
        pool, ["p", "q", "r"], [["a", "b", "c"], ["d", "e"], ["f", "g"]], outcomes
    )
    assert added == 1
    assert list(pool) == [Demonstration(prompt="p", responses=("a", "c"), ranking=(1, 0))]


def test_selection_follows_the_switches_and_budget():
    pool = DemonstrationPool()
    assert select_demonstrations(pool, "q", args()) == []  # empty pool
    demos = [Demonstration(f"d{i}", ["aaaa", "bbbb"], [0, 1]) for i in range(3)]
    pool.extend(demos)
    assert select_demonstrations(pool, "q", args()) == demos[1:]
    # 10 characters each: a budget of 15 keeps only the most relevant (newest).
    assert select_demonstrations(pool, "q", args(demonstration_max_chars=15)) == demos[2:]
    assert select_demonstrations(pool, "q", args(use_dynamic_demonstrations=False)) == []
    assert select_demonstrations(pool, "q", args(max_demonstrations=0)) == []
