"""Per-prompt rules: failure policy, better responses, agreement, targets as tensors."""

from __future__ import annotations

import pytest
import torch

from cyclealign.sampling import sample_candidates
from cyclealign.targets import (
    add_better_responses,
    append_top_candidate,
    better_response_completions,
    better_response_sft_target,
    linear_rewards,
    prompt_outcome,
    rewards_from_result,
    target_tensors,
)
from cyclealign.types import RankResult
from helpers import ScriptedGenerator, word

KW = dict(failure_policy="skip", reward_mode="linear", use_better_response=True)


def test_successful_ranking():
    o = prompt_outcome(RankResult([0, 1, 2], better_response="best"), [1, 0, 2], **KW)
    assert o.ranked and o.agreement == [0, 2] and not o.full_agreement
    assert o.kendall_tau == pytest.approx(1 / 3)
    assert o.rewards == [2.0, 1.0, 0.0] and o.better_response == "best" and o.usable


def test_failure_policies():
    failed = RankResult(None, error="down")
    skip = prompt_outcome(failed, [1, 0], **KW)
    assert not skip.ranked and skip.rewards is None and not skip.usable
    assert not skip.full_agreement and skip.agreement == []
    own = prompt_outcome(failed, [1, 0], **{**KW, "failure_policy": "whitebox"})
    assert own.rewards == [0.0, 1.0] and own.usable and own.better_response is None


def test_better_response_rules():
    blank = prompt_outcome(RankResult([0], better_response="  "), [0], **KW)
    assert blank.better_response is None and not blank.usable  # one candidate, nothing to rank
    # One sampled candidate and a better response: a pair to rank only where the better
    # response is ranked as a candidate; as the SFT target alone it has no pair.
    single = prompt_outcome(RankResult([0], better_response="ok"), [0], **KW)
    assert single.better_response == "ok" and not single.usable
    assert single.full_agreement and single.kendall_tau is None
    ranked = prompt_outcome(
        RankResult([0], better_response="ok"), [0], **KW, better_response_as="candidate"
    )
    assert ranked.better_response_ranked and ranked.usable
    off = prompt_outcome(
        RankResult([0], better_response="ok"), [0], **{**KW, "use_better_response": False}
    )
    assert off.better_response is None


def test_target_tensors_and_top_candidate():
    outcomes = [
        prompt_outcome(RankResult([1, 0]), [0, 1], **KW),
        prompt_outcome(RankResult(None, error="x"), [0, 1], **KW),
    ]
    rewards, mask = target_tensors(outcomes, 3, "cpu")
    assert rewards.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert mask.tolist() == [[True, True, False], [False, False, False]]
    rewards, mask = append_top_candidate(rewards, mask, torch.tensor([True, True]))
    assert rewards[0].tolist() == [0, 1, 0, 2]  # above the best sampled response
    assert mask[:, 3].tolist() == [True, False]  # no target, no better response either


def test_rewards():
    assert linear_rewards([2, 0, 1]) == [1.0, 0.0, 2.0]
    result = RankResult([2, 0, 1], scores=[0.5, -1.0, 3.0])
    assert rewards_from_result(result, "scores") == [0.5, -1.0, 3.0]
    assert rewards_from_result(result, "linear") == [1.0, 0.0, 2.0]
    for scores in (None, [1.0], [1.0, float("nan"), 2.0], ["a", "b", "c"]):
        fallback = RankResult([2, 0, 1], scores=scores)
        assert rewards_from_result(fallback, "scores") == [1.0, 0.0, 2.0]


def test_better_responses_get_an_eos_and_others_copy_candidate_zero(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    a = word(tiny_tokenizer, "a")
    cands = sample_candidates(
        ScriptedGenerator([[a, eos, eos], [a, a, eos], [a, a, a], [a, eos, eos]]),
        torch.tensor([[3], [4]]),
        torch.ones(2, 1, dtype=torch.long),
        num_generations=2,
        generation_config=None,
        tokenizer=tiny_tokenizer,
        eos_token_ids=[eos],
    )
    ids, mask, present = better_response_completions(
        ["yes", None], cands, tokenizer=tiny_tokenizer, eos_token_id=eos, max_completion_length=8
    )
    expected = tiny_tokenizer("yes", add_special_tokens=False)["input_ids"] + [eos]
    assert ids[0, : len(expected)].tolist() == expected and int(mask[0].sum()) == len(expected)
    assert ids[1, :3].tolist() == [a, a, a] and int(mask[1].sum()) == 3  # truncated candidate
    assert present.tolist() == [True, False]
    ids, mask, _ = better_response_completions(
        ["yes yes yes"], cands, tokenizer=tiny_tokenizer, eos_token_id=eos, max_completion_length=2
    )
    assert ids.shape[1] == 2 and eos not in ids[0].tolist()  # cut, so no EOS


def test_better_responses_as_sft_target_or_as_candidate():
    # Three prompts: a better response and a target; a better response but no target (its
    # ranking failed); no better response (a copy of candidate 0 stands in for it).
    better_logps = torch.tensor([[-0.5, -0.25, 0.0], [-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    better_mask = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
    present = torch.tensor([True, True, False])
    target_mask = torch.tensor([[True, True], [False, False], [True, True]])
    sft = better_response_sft_target((better_logps, better_mask, present), target_mask)
    assert sft["sft_token_logps"] is better_logps
    assert sft["sft_token_mask"].tolist() == [[True, True, False], [False] * 3, [False] * 3]
    # As a candidate: one more column, ranked above all, real where the SFT target would be.
    logps, mask = torch.zeros(3, 2, 2), torch.ones(3, 2, 2, dtype=torch.bool)
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    logps, mask, rewards, target = add_better_responses(
        (better_logps, better_mask, present), logps, mask, rewards, target_mask
    )
    assert logps.shape == (3, 3, 3) and mask[0, 2].tolist() == [True, True, False]
    assert target[:, 2].tolist() == [True, False, False] and rewards[0, 2] == 2.0
