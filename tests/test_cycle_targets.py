"""Per-prompt rules: failure policy, better responses, agreement, targets as tensors."""

from __future__ import annotations

import pytest
import torch

from cyclealign.cycle_targets import (
    append_top_candidate,
    judge_prompt,
    round_stats,
    target_tensors,
)
from cyclealign.rankers.base import RankResult

KW = dict(failure_policy="skip", reward_mode="linear", use_better_response=True)


def test_successful_ranking():
    o = judge_prompt(RankResult([0, 1, 2], better_response="best"), [1, 0, 2], **KW)
    assert o.ranked and o.agreement == [0, 2] and not o.full_agreement
    assert o.kendall_tau == pytest.approx(1 / 3)
    assert o.rewards == [2.0, 1.0, 0.0] and o.better_response == "best" and o.usable


def test_failure_policies():
    failed = RankResult(None, error="down")
    skip = judge_prompt(failed, [1, 0], **KW)
    assert not skip.ranked and skip.rewards is None and not skip.usable
    assert not skip.full_agreement and skip.agreement == []
    own = judge_prompt(failed, [1, 0], **{**KW, "failure_policy": "whitebox"})
    assert own.rewards == [0.0, 1.0] and own.usable and own.better_response is None


def test_better_response_rules():
    blank = judge_prompt(RankResult([0], better_response="  "), [0], **KW)
    assert blank.better_response is None and not blank.usable  # one candidate, nothing to rank
    single = judge_prompt(RankResult([0], better_response="ok"), [0], **KW)
    assert single.usable and single.full_agreement and single.kendall_tau is None
    off = judge_prompt(
        RankResult([0], better_response="ok"), [0], **{**KW, "use_better_response": False}
    )
    assert off.better_response is None


def test_round_stats_counts():
    outcomes = [
        judge_prompt(RankResult([0, 1]), [0, 1], **KW),
        judge_prompt(RankResult([1, 0], better_response="b"), [0, 1], **KW),
        judge_prompt(RankResult(None, error="x"), [0, 1], **KW),
    ]
    stats = round_stats(outcomes)
    assert (stats.prompts, stats.ranked, stats.failures, stats.usable) == (3, 2, 1, 2)
    assert (stats.full, stats.not_full, stats.better, stats.agree_len) == (1, 2, 1, 3)
    assert (stats.tau_sum, stats.tau_count) == (0.0, 2)


def test_target_tensors_and_top_candidate():
    outcomes = [
        judge_prompt(RankResult([1, 0]), [0, 1], **KW),
        judge_prompt(RankResult(None, error="x"), [0, 1], **KW),
    ]
    rewards, mask = target_tensors(outcomes, 3, "cpu")
    assert rewards.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True, False], [False, False, False]]
    rewards, mask = append_top_candidate(rewards, mask, torch.tensor([True, True]))
    assert rewards[0].tolist() == [0, 1, 0, 2]  # above the best sampled response
    assert mask[:, 3].tolist() == [True, False]  # no target, no better response either
