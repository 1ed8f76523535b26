"""RRHFLoss: parity with the paper / fixed-length reference variants, hand-worked values."""

from __future__ import annotations

import json

import pytest
import torch

from cyclealign.logprobs import sequence_token_logps
from cyclealign.losses import RRHFLoss
from helpers import REFERENCE_LOSSES
from test_pro import SOURCES, TRANSFORMS, expected_scores, t, transformed_inputs

F64 = torch.float64
CASES = json.loads(REFERENCE_LOSSES.read_text())["cases"]


def mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_reference_rrhf(case, source, transform):
    h = case["hyperparameters"]
    loss_fn = RRHFLoss(rank_weight=h["rrhf_weight"], length_penalty=h["length_penalty"])
    token_logps, token_mask, rewards, candidate_mask, perm = transformed_inputs(
        case, source, transform, seed=1
    )
    out = loss_fn(token_logps, token_mask, rewards, candidate_mask)

    def close(actual, expected):
        torch.testing.assert_close(actual, t(expected), rtol=1e-6, atol=1e-9)

    if h["length_penalty"] == 1:
        ref = case["outputs"]["rrhf"]["paper"]
        close(out.sft_loss, mean(ref["sft_loss"]))
        close(out.loss, ref["loss_mean"])
    else:  # the paper has no length penalty; the code's, applied to the true lengths
        ref = case["outputs"]["rrhf"]["fixed_length"]
    close(out.rank_loss, mean(ref["rank_loss"]))
    torch.testing.assert_close(
        out.scores, expected_scores(ref["scores"], perm), rtol=1e-6, atol=1e-9
    )
    # The SFT candidate is the reference's best one, wherever it now sits.
    best_now = [row.index(best) for row, best in zip(perm.tolist(), ref["best_index"])]
    assert out.best_index.tolist() == best_now


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_per_prompt_rank_terms(case):
    # The reference stores per-prompt rank terms; one-prompt batches reproduce each.
    h = case["hyperparameters"]
    variant = "paper" if h["length_penalty"] == 1 else "fixed_length"
    ref = case["outputs"]["rrhf"][variant]
    loss_fn = RRHFLoss(rank_weight=h["rrhf_weight"], length_penalty=h["length_penalty"])
    inputs = case["inputs"]
    logps, mask = t(inputs["token_logps"]), t(inputs["token_mask"], torch.bool)
    rewards = t(inputs["rewards"])
    for b in range(case["num_prompts"]):
        out = loss_fn(logps[b : b + 1], mask[b : b + 1], rewards[b : b + 1])
        torch.testing.assert_close(out.rank_loss, t(ref["rank_loss"][b]), rtol=1e-6, atol=1e-9)


def independent_rrhf(case, score="mean", sft="sum", ties_pair=False):
    """RRHF in plain Python floats, with switches for the released code's and other mistakes."""
    inputs, h = case["inputs"], case["hyperparameters"]
    lam, w = h["length_penalty"], h["rrhf_weight"]
    rank_total, loss_total = 0.0, 0.0
    for b, rewards in enumerate(inputs["rewards"]):
        padded_len = max(inputs["prompt_lens"][b] + n for n in inputs["response_lens"][b])
        sums, counts = [], []
        for logps, mask in zip(inputs["token_logps"][b], inputs["token_mask"][b]):
            sums.append(sum(x for x, m in zip(logps, mask) if m))
            counts.append(sum(mask))
        if score == "mean":
            p = [s / n**lam for s, n in zip(sums, counts)]
        elif score == "padded":  # the released code's length bug
            p = [s / padded_len**lam for s in sums]
        else:
            p = list(sums)
        rank = sum(
            max(0.0, p[i] - p[j])
            for i in range(len(p))
            for j in range(len(p))
            if i != j and (rewards[i] <= rewards[j] if ties_pair else rewards[i] < rewards[j])
        )
        best = rewards.index(max(rewards))
        sft_term = -sums[best] if sft == "sum" else -sums[best] / padded_len
        rank_total += rank
        loss_total += w * rank + sft_term
    bsz = len(inputs["rewards"])
    return rank_total / bsz, loss_total / bsz


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_tempting_mistakes_would_fail(case):
    h = case["hyperparameters"]
    variant = "paper" if h["length_penalty"] == 1 else "fixed_length"
    ref = case["outputs"]["rrhf"][variant]
    rank, loss = independent_rrhf(case)
    # The oracle also reproduces the released code, length bug and all.
    released = case["outputs"]["rrhf"]["released"]
    torch.testing.assert_close(
        t(independent_rrhf(case, score="padded", sft="padded")[1]),
        t(released["loss_mean"]),
        rtol=1e-9,
        atol=1e-12,
    )
    torch.testing.assert_close(t(rank), t(mean(ref["rank_loss"])), rtol=1e-9, atol=1e-12)
    if variant == "paper":
        torch.testing.assert_close(t(loss), t(ref["loss_mean"]), rtol=1e-9, atol=1e-12)
        # The released code's SFT term (a mean over the padded length) is not the paper's.
        wrong_loss = independent_rrhf(case, sft="padded")[1]
        assert not torch.isclose(t(wrong_loss), t(ref["loss_mean"]), rtol=1e-6)
    # Wrong scores change the rank term wherever it is not zero anyway.
    if rank > 0:
        for wrong in [dict(score="padded"), dict(score="sum")]:
            wrong_rank = independent_rrhf(case, **wrong)[0]
            assert not torch.isclose(t(wrong_rank), t(mean(ref["rank_loss"])), rtol=1e-6), wrong
    if case["name"] == "c4_all_equal_rewards":
        # Counting tied pairs would give a positive rank term where the reference has 0.
        assert mean(ref["rank_loss"]) == 0.0 < independent_rrhf(case, ties_pair=True)[0]


def test_hand_worked_three_candidates():
    # Rewards [0, 2, 1]; two tokens each, mean log-probs p = [-1, -3, -2].
    # Ordered pairs with r_i < r_j: (0, 1): max(0, -1 - -3) = 2; (0, 2): max(0, -1 - -2) = 1;
    # (2, 1): max(0, -2 - -3) = 1. rank = 4. Best = candidate 1, sft = -S_1 = 6.
    logps = t([[[-1.0, -1.0], [-2.0, -4.0], [-1.0, -3.0]]])
    mask = torch.ones(1, 3, 2, dtype=torch.bool)
    rewards = t([[0.0, 2.0, 1.0]])
    out = RRHFLoss()(logps, mask, rewards)
    torch.testing.assert_close(out.scores, t([[-1.0, -3.0, -2.0]]))
    torch.testing.assert_close(out.rank_loss, t(4.0))
    torch.testing.assert_close(out.sft_loss, t(6.0))
    torch.testing.assert_close(out.loss, t(10.0))
    # rank_weight 0.5 -> 0.5 * 4 + 6; length_penalty 0 scores the sums [-2, -6, -4]:
    # pairs give 4 + 2 + 2 = 8.
    torch.testing.assert_close(RRHFLoss(rank_weight=0.5)(logps, mask, rewards).loss, t(8.0))
    torch.testing.assert_close(RRHFLoss(length_penalty=0.0)(logps, mask, rewards).rank_loss, t(8.0))


def test_sft_weight_scales_only_the_sft_term():
    gen = torch.Generator().manual_seed(11)
    logps = -torch.rand(3, 4, 5, generator=gen, dtype=F64)
    mask = torch.rand(3, 4, 5, generator=gen) > 0.3
    mask[..., 0] = True
    rewards = torch.randn(3, 4, generator=gen, dtype=F64)
    half, whole = RRHFLoss(sft_weight=0.5)(logps, mask, rewards), RRHFLoss()(logps, mask, rewards)
    torch.testing.assert_close(half.rank_loss, whole.rank_loss)
    torch.testing.assert_close(half.sft_loss, whole.sft_loss)
    # The losses differ by exactly half the SFT term; the hand-worked case: 4 + 0.45 * 6.
    torch.testing.assert_close(whole.loss - half.loss, 0.5 * whole.sft_loss)
    hand = t([[[-1.0, -1.0], [-2.0, -4.0], [-1.0, -3.0]]]), torch.ones(1, 3, 2), t([[0, 2, 1.0]])
    torch.testing.assert_close(RRHFLoss(sft_weight=0.45)(*hand).loss, t(4.0 + 0.45 * 6.0))


def test_a_separate_sft_target_replaces_the_best_candidate():
    # The hand-worked candidates (rank 4, best S = -6) and a better response of two tokens
    # (-0.5, -0.25) as SFT target: the rank term is unchanged, sft = 0.75.
    logps = t([[[-1.0, -1.0], [-2.0, -4.0], [-1.0, -3.0]]])
    out = RRHFLoss(sft_weight=0.45)(
        logps,
        torch.ones(1, 3, 2),
        t([[0.0, 2.0, 1.0]]),
        sft_token_logps=t([[-0.5, -0.25, -9.0]]),
        sft_token_mask=torch.tensor([[True, True, False]]),
    )
    torch.testing.assert_close(out.rank_loss, t(4.0))
    torch.testing.assert_close(out.sft_loss, t(0.75))
    torch.testing.assert_close(out.loss, t(4.0 + 0.45 * 0.75))


def test_tied_maximum_uses_first_index_and_ties_never_pair():
    # Candidates 1 and 2 tie for best: SFT uses candidate 1; the tied pair costs nothing
    # even though candidate 2 scores far above candidate 1.
    logps = t([[[-5.0], [-4.0], [-0.5]]])
    out = RRHFLoss()(logps, torch.ones(1, 3, 1), t([[0.0, 1.0, 1.0]]))
    assert out.best_index.tolist() == [1]
    torch.testing.assert_close(out.sft_loss, t(4.0))
    torch.testing.assert_close(out.rank_loss, t(0.0))


def test_masked_candidates_and_empty_batches():
    gen = torch.Generator().manual_seed(8)
    logps = torch.randn(2, 3, 4, generator=gen, dtype=F64, requires_grad=True)
    mask = torch.ones(2, 3, 4)
    rewards = t([[1.0, 3.0, 2.0], [5.0, 1.0, 0.0]])
    one_real = torch.tensor([[True, True, True], [False, True, False]])
    out = RRHFLoss()(logps, mask, rewards, one_real)
    alone = RRHFLoss()(logps[:1], mask[:1], rewards[:1])
    torch.testing.assert_close(out.loss, alone.loss)
    assert out.best_index.tolist() == [1, 1]
    none_real = torch.zeros(2, 3, dtype=torch.bool)
    empty = RRHFLoss()(logps, mask, rewards, none_real)
    assert empty.loss.item() == 0.0 and empty.loss.grad_fn is not None
    assert empty.best_index.tolist() == [-1, -1]
    empty.loss.backward()
    assert torch.count_nonzero(logps.grad) == 0


def test_gradient_reaches_logits():
    gen = torch.Generator().manual_seed(9)
    logits = torch.randn(2, 3, 6, 12, generator=gen, requires_grad=True)
    ids = torch.randint(0, 12, (2, 3, 6), generator=gen)
    completion = torch.zeros(2, 3, 6, dtype=torch.long)
    completion[..., 3:] = 1
    out = RRHFLoss()(
        *sequence_token_logps(logits, ids, completion), torch.randn(2, 3, generator=gen)
    )
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[..., 2:5, :].abs().sum() > 0  # positions predicting response tokens
    assert torch.count_nonzero(logits.grad[..., :2, :]) == 0  # prompt predictions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_runs(dtype):
    gen = torch.Generator().manual_seed(10)
    logps = (-torch.rand(3, 4, 5, generator=gen) * 5).to(dtype).requires_grad_()
    out = RRHFLoss(length_penalty=0.5)(logps, torch.ones(3, 4, 5), torch.randn(3, 4, generator=gen))
    assert out.loss.dtype == torch.float32 and out.scores.shape == (3, 4)
    assert torch.isfinite(out.loss) and torch.isfinite(out.scores).all()
    out.loss.backward()
    assert logps.grad.dtype == dtype and torch.isfinite(logps.grad.float()).all()


def test_hyperparameter_validation():
    with pytest.raises(ValueError, match="rank_weight"):
        RRHFLoss(rank_weight=-1.0)
    with pytest.raises(ValueError, match="length_penalty"):
        RRHFLoss(length_penalty=float("inf"))
    with pytest.raises(ValueError, match="sft_weight"):
        RRHFLoss(sft_weight=-0.1)
    assert "length_penalty=0.5" in repr(RRHFLoss(length_penalty=0.5))
    assert RRHFLoss.name == "rrhf" and not RRHFLoss.uses_reward_values
