"""RankingLoss base class: validation messages, masking, scoring and a minimal subclass."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from cyclealign.losses import PROLoss, RankingLoss, RankingLossOutput, RRHFLoss
from cyclealign.losses.base import PromptLosses, RankingBatch

F64 = torch.float64


class BestOfTwo(RankingLoss):
    """A deliberately small subclass: hinge between the best and the worst candidate."""

    name = "best_of_two"
    uses_reward_values = False

    def prompt_losses(self, batch: RankingBatch) -> PromptLosses:
        s = batch.sorted(batch.scores)
        last = (batch.num_real - 1).clamp(min=0).unsqueeze(-1)
        rank = torch.relu(s.gather(1, last).squeeze(-1) - s[:, 0])
        sft = -batch.sorted(batch.sum_logps)[:, 0]
        return PromptLosses(rank=rank, sft=sft, total=rank + 0.1 * sft)


def inputs(bsz=2, ncand=3, tokens=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        -torch.rand(bsz, ncand, tokens, generator=gen, dtype=F64),
        torch.ones(bsz, ncand, tokens, dtype=torch.bool),
        torch.randn(bsz, ncand, generator=gen, dtype=F64),
    )


def test_minimal_subclass_gets_masking_sorting_and_averaging():
    logps, mask, _ = inputs()
    rewards = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0]], dtype=F64)
    # Prompt 0: the worst real candidate is 0 (candidate 2 is padding, rewards 0 < 2).
    cmask = torch.tensor([[True, True, False], [True, True, True]])
    out = BestOfTwo()(logps, mask, rewards, cmask)
    means = logps.mean(-1)
    sums = logps.sum(-1)
    rank0 = torch.relu(means[0, 0] - means[0, 1])
    rank1 = torch.relu(means[1, 1] - means[1, 0])
    torch.testing.assert_close(out.rank_loss, (rank0 + rank1) / 2)
    torch.testing.assert_close(out.sft_loss, -(sums[0, 1] + sums[1, 0]) / 2)
    torch.testing.assert_close(out.loss, out.rank_loss + 0.1 * out.sft_loss)
    assert out.scores[0, 2] == float("-inf")
    assert out.extras == {}


def test_base_class_needs_prompt_losses():
    with pytest.raises(NotImplementedError, match="prompt_losses"):
        RankingLoss()(*inputs())


def test_masked_positions_may_hold_anything():
    logps, mask, rewards = inputs()
    mask[..., -1] = False
    dirty = logps.clone()
    dirty[..., -1] = float("-inf")
    clean = logps.clone()
    clean[..., -1] = 123.0
    for loss_fn in (PROLoss(), RRHFLoss()):
        a = loss_fn(dirty.requires_grad_(), mask, rewards)
        b = loss_fn(clean, mask, rewards)
        torch.testing.assert_close(a.loss, b.loss)
        a.loss.backward()
        assert torch.isfinite(dirty.grad).all() and torch.count_nonzero(dirty.grad[..., -1]) == 0
        dirty = dirty.detach()


def test_score_and_ranking_without_rewards():
    logps = torch.tensor([[[-1.0, -1.0], [-0.5, -0.5], [-1.2, -3.0]]], dtype=F64)
    mask = torch.tensor([[[True, True], [True, True], [True, False]]])
    cmask = torch.tensor([[True, False, True]])
    scores = PROLoss().score(logps, mask, cmask)
    torch.testing.assert_close(scores, torch.tensor([[-1.0, float("-inf"), -1.2]], dtype=F64))
    assert PROLoss().ranking(logps, mask) == [[1, 0, 2]]
    assert PROLoss().ranking(logps, mask, cmask) == [[0, 2]]
    # RRHF with length_penalty 0 scores sums: -2, -1, -1.2 (candidate 2 has one token).
    assert RRHFLoss(length_penalty=0.0).ranking(logps, mask) == [[1, 2, 0]]


def test_output_extras_as_attributes_and_copyable():
    out = PROLoss()(*inputs())
    assert out.stage_losses is out.extras["stage_losses"]
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = out.no_such_thing
    clone = pickle.loads(pickle.dumps(out))
    torch.testing.assert_close(clone.stage_losses, out.stage_losses)
    assert isinstance(copy.copy(out), RankingLossOutput)


def test_shape_errors_name_expected_shapes():
    logps, mask, rewards = inputs()
    loss_fn = RRHFLoss()
    with pytest.raises(ValueError, match=r"token_logps must have shape \[B, C, T\].*\[2, 3\]"):
        loss_fn(logps[..., 0], mask, rewards)
    with pytest.raises(
        ValueError,
        match=r"token_mask must have shape \[B, C, T\] = \[2, 3, 4\], got a tensor of shape \[2, 3, 3\]",
    ):
        loss_fn(logps, mask[..., :3], rewards)
    with pytest.raises(
        ValueError,
        match=r"rewards must have shape \[B, C\] = \[2, 3\], got a tensor of shape \[3\]",
    ):
        loss_fn(logps, mask, rewards[0])
    with pytest.raises(
        ValueError, match=r"rewards must have shape \[B, C\] = \[2, 3\], got a list"
    ):
        loss_fn(logps, mask, [[1.0, 2.0, 3.0]] * 2)
    with pytest.raises(ValueError, match=r"candidate_mask must have shape \[B, C\] = \[2, 3\]"):
        loss_fn(logps, mask, rewards, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating point"):
        loss_fn(logps.long(), mask, rewards)
    with pytest.raises(ValueError, match=r"token_mask must have shape"):
        PROLoss().score(logps, mask[:1])


def test_value_errors_for_unusable_candidates():
    logps, mask, rewards = inputs()
    mask[1, 2] = False
    with pytest.raises(ValueError, match=r"candidate 2 of prompt 1 has no scored token.*EOS"):
        PROLoss()(logps, mask, rewards)
    # ...unless that candidate is padding anyway.
    cmask = torch.ones(2, 3, dtype=torch.bool)
    cmask[1, 2] = False
    assert torch.isfinite(PROLoss()(logps, mask, rewards, cmask).loss)
    rewards[0, 1] = float("nan")
    with pytest.raises(ValueError, match="rewards of real candidates must be finite"):
        RRHFLoss()(logps, mask, rewards, cmask)


def test_integer_rewards_and_float_masks_are_accepted():
    logps, mask, _ = inputs()
    out = RRHFLoss()(
        logps,
        mask.float(),
        torch.tensor([[2, 1, 0], [0, 1, 2]]),
        torch.tensor([[1, 1, 1], [1, 1, 0]]),
    )
    assert out.loss.dtype == F64 and torch.isfinite(out.loss)
