"""Demonstrations and the pool of dynamic demonstrations."""

from __future__ import annotations

import json

import pytest

from cyclealign.demonstrations import Demonstration, DemonstrationPool


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


def test_pool_is_bounded_by_count_and_characters():
    pool = DemonstrationPool(max_size=3)
    for i in range(5):
        pool.add(demo(f"prompt {i}"))
    assert [d.prompt for d in pool] == ["prompt 2", "prompt 3", "prompt 4"]
    small = DemonstrationPool(max_size=10, max_chars=60)
    for i in range(4):
        small.add(demo(f"p{i}"))  # 2 + 2 * 11 = 24 characters each
    assert [d.prompt for d in small] == ["p2", "p3"]


def test_duplicates_are_kept_once_and_refreshed():
    pool = DemonstrationPool()
    pool.extend([demo("a"), demo("b"), demo("a")])
    assert [d.prompt for d in pool] == ["b", "a"]


def test_recent_policy_puts_the_newest_last():
    pool = DemonstrationPool()
    pool.extend(demo(f"p{i}") for i in range(5))
    assert [d.prompt for d in pool.select("query", 2)] == ["p3", "p4"]
    assert pool.select("query", 0) == []
    assert len(pool.select("query", 10)) == 5


def test_similar_policy_prefers_word_overlap():
    pool = DemonstrationPool()
    pool.extend([demo("how to bake bread at home"), demo("tell me a joke"), demo("fix a bike")])
    picked = pool.select([{"role": "user", "content": "How do I bake rye bread?"}], 2, "similar")
    assert picked[-1].prompt == "how to bake bread at home"
    with pytest.raises(ValueError, match="recent"):
        pool.select("q", 1, "random")


def test_select_respects_a_character_budget():
    pool = DemonstrationPool()
    pool.extend([demo("old"), demo("new")])
    assert [d.prompt for d in pool.select("q", 2, max_chars=30)] == ["new"]


def test_state_dict_round_trip_is_exact_and_json():
    pool = DemonstrationPool(max_size=4, max_chars=1000)
    pool.extend(demo(f"p{i}", k=3) for i in range(6))
    state = json.loads(json.dumps(pool.state_dict()))
    restored = DemonstrationPool(max_size=4, max_chars=1000)
    restored.load_state_dict(state)
    assert restored.state_dict() == pool.state_dict()
    pool.add(demo("next"))
    restored.add(demo("next"))
    assert restored.state_dict() == pool.state_dict()


def test_loading_keeps_the_pools_own_bounds_and_rejects_garbage():
    big = DemonstrationPool(max_size=8)
    big.extend(demo(f"p{i}") for i in range(6))
    small = DemonstrationPool(max_size=2)
    small.load_state_dict(big.state_dict())
    assert [d.prompt for d in small] == ["p4", "p5"]
    small.add(demo("p6"))  # the insertion counter carried over: p6 is the newest
    assert [d.prompt for d in small.select("q", 2)] == ["p5", "p6"]
    with pytest.raises(ValueError, match="Not a DemonstrationPool state_dict"):
        small.load_state_dict({"items": [["x", {}]]})


def test_pools_compare_by_state():
    a, b = DemonstrationPool(), DemonstrationPool()
    a.extend([demo("x"), demo("y")])
    b.extend([demo("x"), demo("y")])
    assert a == b
    b.add(demo("x"))  # same contents, different recency
    assert a != b
    assert a != "a pool"


def test_similarity_ignores_role_labels_and_breaks_ties_by_recency():
    pool = DemonstrationPool()
    chat = Demonstration([{"role": "user", "content": "paint a fence"}], ["a", "b"], [0, 1])
    pool.extend([chat, demo("grow tomatoes"), demo("grow potatoes")])
    # "user" is a role label, not a word of the query: the chat demonstration shares nothing.
    picked = pool.select([{"role": "user", "content": "grow carrots"}], 3, "similar")
    assert [d.prompt for d in picked] == [chat.prompt, "grow tomatoes", "grow potatoes"]


def test_a_demonstration_longer_than_the_budget_is_not_kept():
    pool = DemonstrationPool(max_chars=40)
    pool.add(demo("short", k=1))  # 5 + 14 characters
    pool.add(demo("far too long for the budget"))  # 99 characters
    assert [d.prompt for d in pool] == ["short"]  # not flushed to make room in vain
    with pytest.raises(ValueError, match="max_size"):
        DemonstrationPool(max_size=0)
    with pytest.raises(TypeError, match="takes a Demonstration"):
        pool.add({"prompt": "p"})
