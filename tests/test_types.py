"""The shared types: requests, results, usage and demonstrations normalise and round-trip."""

from __future__ import annotations

import pytest

from cyclealign.types import Demonstration, RankRequest, RankResult, Usage


def test_usage_accumulates_and_round_trips():
    a = Usage(requests=2, cache_hits=1, retries=3, prompt_tokens=10, completion_tokens=4)
    a.failures["parse"] += 1
    b = Usage(requests=1, prompt_tokens=5, cache_repairs=1)
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
        "cache_repairs": 1,
    }
    assert a.total_failures == 4 and a.total_tokens == 19
    assert Usage.from_dict(a.as_dict()) == a


def test_request_and_demonstration_are_normalised():
    demo = Demonstration("d", ["x", "y"], [1, 0])
    request = RankRequest([{"role": "user", "content": "hi"}], ["a", "b"], [demo])
    assert request.responses == ("a", "b")
    assert request.demonstrations == (demo,)
    assert request.columns == {} and request.completion_ids is None
    with_ids = RankRequest("p", ["a", "b"], columns={"solution": 2}, completion_ids=[[1], [2, 3]])
    assert with_ids.completion_ids == ([1], [2, 3]) and with_ids.columns == {"solution": 2}
    with pytest.raises(ValueError, match="2 completion_ids for 3 responses"):
        RankRequest("p", ["a", "b", "c"], completion_ids=[[1], [2]])


def test_result_ok_and_demonstration_checks():
    assert RankResult([1, 0]).ok and not RankResult(None, error="down").ok
    with pytest.raises(ValueError, match=r"Demonstration.ranking must be a permutation of 0\.\.1"):
        Demonstration("p", ["a", "b"], [0, 2])
    with pytest.raises(ValueError, match="at least one response"):
        Demonstration("p", [], [])
