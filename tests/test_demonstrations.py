"""The pool of dynamic demonstrations, what each request is shown, and sharing agreements."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from cyclealign.demonstrations import (
    Demonstration,
    DemonstrationPool,
    estimate_tokens,
    select_demonstrations,
    share_agreements,
)
from cyclealign.targets import prompt_outcome
from cyclealign.types import RankResult


def add_all(pool: DemonstrationPool, demos) -> None:
    for d in demos:
        pool.add(d)


def demo(prompt: str, k: int = 2) -> Demonstration:
    return Demonstration(prompt, [f"{prompt} answer {i}" for i in range(k)], list(range(k)))


def test_demonstration_validation_and_from_agreement():
    agreed = Demonstration.from_agreement("p", ["r0", "r1", "r2", "r3"], [3, 1])
    assert agreed.responses == ("r1", "r3") and agreed.ranking == (1, 0)
    with pytest.raises(ValueError, match=r"permutation of 0\.\.1"):
        Demonstration("p", ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="duplicate"):
        Demonstration.from_agreement("p", ["a", "b"], [1, 1])
    assert Demonstration.from_dict(agreed.to_dict()) == agreed


def test_pool_is_bounded_by_count():
    pool = DemonstrationPool(max_size=3)
    for i in range(5):
        pool.add(demo(f"prompt {i}"))
    assert [d.prompt for d in pool] == ["prompt 2", "prompt 3", "prompt 4"]


def test_duplicates_are_kept_once_and_refreshed():
    pool = DemonstrationPool()
    add_all(pool, [demo("a"), demo("b"), demo("a")])
    assert [d.prompt for d in pool] == ["b", "a"]


def test_recent_policy_puts_the_newest_last():
    pool = DemonstrationPool()
    add_all(pool, [demo(f"p{i}") for i in range(5)])
    assert [d.prompt for d in pool.select("query", 2)] == ["p3", "p4"]
    assert pool.select("query", 0) == []
    assert len(pool.select("query", 10)) == 5


def test_similar_policy_prefers_word_overlap():
    pool = DemonstrationPool()
    add_all(pool, [demo("how to bake bread at home"), demo("tell me a joke"), demo("fix a bike")])
    picked = pool.select([{"role": "user", "content": "How do I bake rye bread?"}], 2, "similar")
    assert picked[-1].prompt == "how to bake bread at home"
    with pytest.raises(ValueError, match="recent"):
        pool.select("q", 1, "random")


def test_select_fills_a_token_budget_most_relevant_first():
    pool = DemonstrationPool()
    sizes = {"a": 3, "b": 5, "c": 2, "d": 4}  # tokens of each, by prompt
    add_all(pool, [demo(p) for p in sizes])
    counted = []

    def count(d):
        counted.append(d.prompt)
        return sizes[d.prompt]

    # Newest first: d (4) fits, c (2) fits, b (5) does not and is skipped, a (3) does not either.
    picked = pool.select("q", None, max_tokens=7, count_tokens=count)
    assert [d.prompt for d in picked] == ["c", "d"]  # the most relevant right before the query
    assert [d.prompt for d in pool.select("q", None, max_tokens=9, count_tokens=count)] == [
        "a",
        "c",
        "d",
    ]
    assert len(pool.select("q", 1, max_tokens=100, count_tokens=count)) == 1  # the cap holds
    assert sorted(counted) == ["a", "b", "c", "d"]  # each counted once, however often asked
    # The default count is an estimate of 4 characters a token.
    assert estimate_tokens(Demonstration("abcd", ["efgh", "i"], [0, 1])) == 3
    assert [d.prompt for d in pool.select("q", None, max_tokens=10)] == ["d"]


def test_agreements_on_the_querys_own_prompt_come_first():
    pool = DemonstrationPool()
    mine = [{"role": "user", "content": "bake bread"}]
    add_all(pool, [demo("old other"), Demonstration(mine, ["x", "y"], [1, 0]), demo("new other")])
    for policy in ("recent", "similar"):
        picked = pool.select([dict(m) for m in mine], 2, policy)
        assert picked[-1].prompt == mine and len(picked) == 2, policy


def test_state_dict_round_trip_is_exact_and_json():
    pool = DemonstrationPool(max_size=4)
    add_all(pool, [demo(f"p{i}", k=3) for i in range(6)])
    state = json.loads(json.dumps(pool.state_dict()))
    restored = DemonstrationPool(max_size=4)
    restored.load_state_dict(state)
    assert restored.state_dict() == pool.state_dict()
    pool.add(demo("next"))
    restored.add(demo("next"))
    assert restored.state_dict() == pool.state_dict()


def test_loading_keeps_the_pools_own_bounds_and_rejects_garbage():
    big = DemonstrationPool(max_size=8)
    add_all(big, [demo(f"p{i}") for i in range(6)])
    small = DemonstrationPool(max_size=2)
    small.load_state_dict(big.state_dict())
    assert [d.prompt for d in small] == ["p4", "p5"]
    small.add(demo("p6"))  # the insertion counter carried over: p6 is the newest
    assert [d.prompt for d in small.select("q", 2)] == ["p5", "p6"]
    with pytest.raises(ValueError, match="Not a DemonstrationPool state_dict"):
        small.load_state_dict({"items": [["x", {}]]})


def test_pools_compare_by_state():
    a, b = DemonstrationPool(), DemonstrationPool()
    add_all(a, [demo("x"), demo("y")])
    add_all(b, [demo("x"), demo("y")])
    assert a == b
    b.add(demo("x"))  # same contents, different recency
    assert a != b
    assert a != "a pool"


def test_similarity_ignores_role_labels_and_breaks_ties_by_recency():
    pool = DemonstrationPool()
    chat = Demonstration([{"role": "user", "content": "paint a fence"}], ["a", "b"], [0, 1])
    add_all(pool, [chat, demo("grow tomatoes"), demo("grow potatoes")])
    # "user" is a role label, not a word of the query: the chat demonstration shares nothing.
    picked = pool.select([{"role": "user", "content": "grow carrots"}], 3, "similar")
    assert [d.prompt for d in picked] == [chat.prompt, "grow tomatoes", "grow potatoes"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_size"):
        DemonstrationPool(max_size=0)
    with pytest.raises(TypeError, match="takes a Demonstration"):
        DemonstrationPool().add({"prompt": "p"})


# -- what each request is shown, and the pool shared across processes ----------------------


def args(**kw):
    base = dict(
        use_dynamic_demonstrations=True,
        max_demonstrations=None,
        demonstration_selection="recent",
        demonstration_max_tokens=4096,
    )
    return SimpleNamespace(**{**base, **kw})


def test_agreements_of_two_or_more_become_demonstrations():
    kw = dict(failure_policy="skip", reward_mode="linear", use_better_response=False)
    outcomes = [
        prompt_outcome(RankResult([2, 0, 1]), [2, 1, 0], **kw),  # agreement [2, 0]
        prompt_outcome(RankResult([0, 1]), [1, 0], **kw),  # agreement of length 1
        prompt_outcome(RankResult(None, error="x"), [0, 1], **kw),
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
    add_all(pool, demos)
    assert select_demonstrations(pool, "q", args()) == demos  # all fit the default budget
    assert select_demonstrations(pool, "q", args(max_demonstrations=2)) == demos[1:]
    # 10 characters (3 estimated tokens) each: a budget of 7 holds the two most relevant.
    assert select_demonstrations(pool, "q", args(demonstration_max_tokens=7)) == demos[1:]
    # The ranker's own count wins over the estimate.
    tight = args(demonstration_max_tokens=7)
    assert select_demonstrations(pool, "q", tight, count_tokens=lambda d: 7) == demos[2:]
    assert select_demonstrations(pool, "q", args(use_dynamic_demonstrations=False)) == []
    assert select_demonstrations(pool, "q", args(max_demonstrations=0)) == []
