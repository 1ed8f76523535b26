"""PROLoss: parity with the official code's vectors, hand-worked values, masking, gradients."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cyclealign.logprobs import sequence_token_logps
from cyclealign.losses import PROLoss
from helpers import REFERENCE_LOSSES

F64 = torch.float64
CASES = [c for c in json.loads(REFERENCE_LOSSES.read_text())["cases"] if c["outputs"]["pro"]]
SOURCES = ["logits", "token_logps"]
TRANSFORMS = ["as_given", "shuffled", "padded"]


def t(value, dtype=F64):
    return torch.tensor(value, dtype=dtype)


def tie_preserving_permutation(rewards, gen):
    """A random candidate order per prompt in which tied candidates keep their relative order
    (the stable sort puts the first of tied candidates first, so that order is meaningful)."""
    perms = []
    for row in rewards.tolist():
        perm = torch.randperm(len(row), generator=gen).tolist()
        for value in set(row):
            group = [i for i in range(len(row)) if row[i] == value]
            slots = sorted(p for p, old in enumerate(perm) if old in group)
            for slot, old in zip(slots, group):
                perm[slot] = old
        perms.append(perm)
    return torch.tensor(perms)


def transformed_inputs(case, source, transform, seed=0):
    """(token_logps, token_mask, rewards, candidate_mask, perm): perm[b, c] is the reference
    candidate now at position c, or -1 for an inserted padding candidate."""
    inputs = case["inputs"]
    rewards = t(inputs["rewards"])
    if source == "logits":
        tensors = [
            t(inputs["logits"]),
            t(inputs["input_ids"], torch.long),
            t(inputs["completion_mask"], torch.long),
        ]
    else:
        tensors = [t(inputs["token_logps"]), t(inputs["token_mask"], torch.bool)]
    bsz, ncand = rewards.shape
    gen = torch.Generator().manual_seed(seed)
    perm = torch.arange(ncand).expand(bsz, ncand)
    candidate_mask = None
    if transform == "shuffled":
        perm = tie_preserving_permutation(rewards, gen)

        def take(x):
            index = perm.view(bsz, ncand, *([1] * (x.dim() - 2))).expand_as(x)
            return x.gather(1, index)

        tensors = [take(x) for x in tensors]
        rewards = take(rewards)
    elif transform == "padded":
        # A junk candidate in front with scored tokens and the highest reward: it changes
        # every result unless candidate_mask really removes it.
        def junk(x):
            shape = (bsz, 1, *x.shape[2:])
            if x.dtype == torch.bool:
                return torch.ones(shape, dtype=torch.bool)
            if x.dtype == torch.long:
                return (
                    torch.randint(1, 50, shape, generator=gen)
                    if x.dim() == 3 and x.max() > 1
                    else torch.ones(shape, dtype=torch.long)
                )
            return torch.randn(shape, generator=gen, dtype=F64) * 2 - 1

        tensors = [torch.cat([junk(x), x], dim=1) for x in tensors]
        rewards = torch.cat([torch.full((bsz, 1), 100.0, dtype=F64), rewards], dim=1)
        candidate_mask = torch.cat(
            [torch.zeros(bsz, 1, dtype=torch.bool), torch.ones(bsz, ncand, dtype=torch.bool)], dim=1
        )
        perm = torch.cat([torch.full((bsz, 1), -1), perm], dim=1)
    if source == "logits":
        token_logps, token_mask = sequence_token_logps(*tensors)
    else:
        token_logps, token_mask = tensors
    return token_logps, token_mask, rewards, candidate_mask, perm


def expected_scores(reference_scores, perm):
    ref = t(reference_scores)
    out = torch.full(perm.shape, float("-inf"), dtype=F64)
    real = perm >= 0
    out[real] = ref.gather(1, perm.clamp(min=0))[real]
    return out


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_official_pro(case, source, transform):
    h, ref = case["hyperparameters"], case["outputs"]["pro"]
    loss_fn = PROLoss(sft_weight=h["pro_sft_weight"], eps=h["pro_eps"])
    token_logps, token_mask, rewards, candidate_mask, perm = transformed_inputs(
        case, source, transform
    )
    out = loss_fn(token_logps, token_mask, rewards, candidate_mask)

    def close(actual, expected):
        torch.testing.assert_close(actual, t(expected), rtol=1e-6, atol=1e-9)

    torch.testing.assert_close(
        out.scores, expected_scores(ref["scores"], perm), rtol=1e-6, atol=1e-9
    )
    close(out.rank_loss, ref["rank_loss"])
    close(out.sft_loss, ref["sft_loss_unweighted"])
    close(out.loss, ref["loss"])
    stages = [stage["loss"] for stage in ref["stages"]]
    # A padding candidate adds a stage slot that no prompt uses.
    close(out.stage_losses, stages + [0.0] * (out.stage_losses.numel() - len(stages)))
    close(out.sft_coefficient, [ref["sft_coefficient"]] * case["num_prompts"])
    assert out.loss.dtype == F64


def independent_pro(case, temperature="difference", normalise="mean", eps=True, sft="sum"):
    """PRO in plain Python floats, with switches for tempting mistakes."""
    inputs, h = case["inputs"], case["hyperparameters"]
    rank_total, sft_total = 0.0, 0.0
    for b, rewards in enumerate(inputs["rewards"]):
        scores, sums = [], []
        for logps, mask in zip(inputs["token_logps"][b], inputs["token_mask"][b]):
            total = sum(x for x, m in zip(logps, mask) if m)
            sums.append(total)
            scores.append(total / sum(mask) if normalise == "mean" else total)
        for k in range(len(rewards) - 1):
            if temperature == "difference":
                taus = [rewards[k] - rewards[j] for j in range(k + 1, len(rewards))]
            elif temperature == "inverse":
                taus = [
                    1 / (rewards[k] - rewards[j]) if rewards[k] != rewards[j] else 0.0
                    for j in range(k + 1, len(rewards))
                ]
            else:
                taus = [1.0] * (len(rewards) - k - 1)
            top = max(taus)
            denom = (h["pro_eps"] if eps else 0.0) + math.exp(scores[k] * top)
            denom += sum(math.exp(s * tau) for s, tau in zip(scores[k + 1 :], taus))
            rank_total += math.log(denom) - scores[k] * top
        best = sums[0] if sft == "sum" else sums[0] / sum(inputs["token_mask"][b][0])
        sft_total += -best * h["pro_sft_weight"] * (len(rewards) - 1) ** 2
    bsz = len(inputs["rewards"])
    return rank_total / bsz, (rank_total + sft_total) / bsz


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_tempting_mistakes_would_fail(case):
    ref = case["outputs"]["pro"]
    rank, loss = independent_pro(case)
    assert math.isclose(rank, ref["rank_loss"], rel_tol=1e-9)
    assert math.isclose(loss, ref["loss"], rel_tol=1e-9)
    # Where a mistake changes anything, the reference tolerance catches it. All-equal
    # rewards make every temperature 0, so no score (however normalised) matters there.
    if any(len(set(r)) > 1 for r in case["inputs"]["rewards"]):
        for variant in [
            dict(normalise="sum"),
            dict(temperature="inverse"),
            dict(temperature="none"),
        ]:
            wrong, _ = independent_pro(case, **variant)
            assert not math.isclose(wrong, ref["rank_loss"], rel_tol=1e-6), variant
    # SFT on the best candidate's per-token mean instead of its sum (the same for a
    # one-token best candidate, as in c4_all_equal_rewards).
    if any(sum(masks[0]) > 1 for masks in case["inputs"]["token_mask"]):
        assert not math.isclose(independent_pro(case, sft="mean")[1], ref["loss"], rel_tol=1e-6)
    if case["name"] == "c2_pair":  # the large reward gap makes eps visible
        assert not math.isclose(independent_pro(case, eps=False)[0], ref["rank_loss"], rel_tol=1e-6)


def test_hand_worked_pair():
    # One prompt, two one-token candidates: s0 = -1, s1 = -2, rewards 1 > 0, so tau = 1.
    # stage 0 = log(e^-1 + e^-2) + 1 = log(1 + e^-1) = 0.3132616875...
    # sft = -S_0 = 1, coefficient = 0.05 * (2 - 1)^2 = 0.05 -> loss = 0.3632616875...
    out = PROLoss(eps=0.0)(
        t([[[-1.0], [-2.0]]]), torch.ones(1, 2, 1, dtype=torch.bool), t([[1.0, 0.0]])
    )
    torch.testing.assert_close(out.rank_loss, t(math.log1p(math.exp(-1))))
    torch.testing.assert_close(out.sft_loss, t(1.0))
    torch.testing.assert_close(out.loss, t(math.log1p(math.exp(-1)) + 0.05))
    torch.testing.assert_close(out.scores, t([[-1.0, -2.0]]))


def test_hand_worked_three_candidates_unsorted():
    # Given order rewards [0, 2, 1] -> sorted best-first: candidates 1, 2, 0.
    # Mean log-probs: c0 = -2 (tokens -1, -3), c1 = -1 (one token), c2 = -1.5 (tokens -1, -2).
    # stage 0 (k = c1): taus to c2, c0 = 1, 2; top = 2:
    #   log(e^{-1*2} + e^{-1.5*1} + e^{-2*2}) + 2
    # stage 1 (k = c2): tau to c0 = 1: log(e^{-1.5} + e^{-2}) + 1.5
    # sft = -S_c1 = 1, coefficient = 0.05 * 2^2 = 0.2.
    logps = t([[[-1.0, -3.0], [-1.0, 9.0], [-1.0, -2.0]]])
    mask = torch.tensor([[[True, True], [True, False], [True, True]]])
    out = PROLoss(eps=0.0)(logps, mask, t([[0.0, 2.0, 1.0]]))
    stage0 = math.log(math.exp(-2) + math.exp(-1.5) + math.exp(-4)) + 2
    stage1 = math.log(math.exp(-1.5) + math.exp(-2)) + 1.5
    torch.testing.assert_close(out.stage_losses, t([stage0, stage1]))
    torch.testing.assert_close(out.rank_loss, t(stage0 + stage1))
    torch.testing.assert_close(out.loss, t(stage0 + stage1 + 0.2 * 1.0))
    torch.testing.assert_close(out.scores, t([[-2.0, -1.0, -1.5]]))


def test_per_prompt_candidate_counts():
    # Prompt 0 has 3 real candidates, prompt 1 only 2 (its third is padding): each uses its
    # own (C - 1)^2 and its own stages; the loss is the mean of the per-prompt losses.
    gen = torch.Generator().manual_seed(4)
    logps = -torch.rand(2, 3, 4, generator=gen, dtype=F64)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    rewards = t([[1.0, 3.0, 2.0], [0.5, -0.5, 7.0]])
    cmask = torch.tensor([[True, True, True], [True, True, False]])
    loss_fn = PROLoss(sft_weight=0.1)
    out = loss_fn(logps, mask, rewards, cmask)
    first = loss_fn(logps[:1], mask[:1], rewards[:1])
    second = loss_fn(logps[1:, :2], mask[1:, :2], rewards[1:, :2])
    torch.testing.assert_close(out.loss, (first.loss + second.loss) / 2)
    torch.testing.assert_close(out.rank_loss, (first.rank_loss + second.rank_loss) / 2)
    torch.testing.assert_close(out.sft_coefficient, t([0.1 * 4, 0.1 * 1]))
    assert out.scores[1, 2] == float("-inf")


def test_a_separate_sft_target_is_trained_on_and_not_ranked():
    # The three hand-worked candidates, and a better response (tokens -0.5, -0.25) as the
    # SFT target: it takes no part in the ranking, the SFT term trains on it, and the
    # coefficient counts the 3 ranked candidates only: 0.05 * 2^2 = 0.2.
    logps = t([[[-1.0, -3.0], [-1.0, 9.0], [-1.0, -2.0]]])
    mask = torch.tensor([[[True, True], [True, False], [True, True]]])
    rewards = t([[0.0, 2.0, 1.0]])
    plain = PROLoss(eps=0.0)(logps, mask, rewards)
    out = PROLoss(eps=0.0)(
        logps,
        mask,
        rewards,
        sft_token_logps=t([[-0.5, -0.25]]),
        sft_token_mask=torch.ones(1, 2, dtype=torch.bool),
    )
    torch.testing.assert_close(out.rank_loss, plain.rank_loss)
    torch.testing.assert_close(out.stage_losses, plain.stage_losses)
    torch.testing.assert_close(out.sft_loss, t(0.75))
    torch.testing.assert_close(out.sft_coefficient, t([0.2]))
    torch.testing.assert_close(out.loss, plain.rank_loss + 0.2 * 0.75)
    # A prompt without an SFT target (all-False mask row) keeps its best candidate; one with
    # a single candidate has no pair to rank and contributes nothing, SFT target or not.
    two = PROLoss(eps=0.0)(
        torch.cat([logps, logps, logps]),
        torch.cat([mask, mask, mask]),
        torch.cat([rewards, rewards, rewards]),
        torch.tensor([[True, True, True], [True, True, True], [True, False, False]]),
        sft_token_logps=t([[-0.5, -0.25], [-0.5, -0.25], [-0.5, -0.25]]),
        sft_token_mask=torch.tensor([[False, False], [True, True], [True, True]]),
    )
    torch.testing.assert_close(two.sft_loss, t((1.0 + 0.75) / 2))
    torch.testing.assert_close(two.rank_loss, plain.rank_loss)
    torch.testing.assert_close(two.sft_coefficient, t([0.2, 0.2, 0.0]))
    with pytest.raises(ValueError, match="together"):
        PROLoss()(logps, mask, rewards, sft_token_logps=t([[-1.0]]))
    with pytest.raises(ValueError, match=r"sft_token_mask.*\[B, T\]"):
        PROLoss()(logps, mask, rewards, sft_token_logps=t([[-1.0]]), sft_token_mask=t([[1, 1]]))


def test_prompt_with_one_real_candidate_contributes_nothing():
    gen = torch.Generator().manual_seed(5)
    logps = -torch.rand(2, 3, 4, generator=gen, dtype=F64)
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    rewards = t([[1.0, 3.0, 2.0], [0.5, -0.5, 7.0]])
    cmask = torch.tensor([[True, True, True], [False, True, False]])
    out = PROLoss()(logps, mask, rewards, cmask)
    alone = PROLoss()(logps[:1], mask[:1], rewards[:1])
    torch.testing.assert_close(out.loss, alone.loss)
    torch.testing.assert_close(out.sft_coefficient[1], t(0.0))


def test_all_masked_batch_gives_zero_loss_with_graph():
    logps = torch.randn(2, 3, 4, dtype=F64, requires_grad=True)
    out = PROLoss()(
        logps,
        torch.ones(2, 3, 4),
        t([[1.0, 2.0, 3.0]] * 2),
        torch.tensor([[True, False, False], [False, False, False]]),
    )
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert torch.count_nonzero(logps.grad) == 0


def test_gradient_flows_to_response_tokens_only():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 3, 6, 10, generator=gen, requires_grad=True)
    ids = torch.randint(0, 10, (1, 3, 6), generator=gen)
    completion = torch.tensor([[[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0]]])
    out = PROLoss()(*sequence_token_logps(logits, ids, completion), t([[2.0, 1.0, 0.0]]).float())
    out.loss.backward()
    grad_per_position = logits.grad.abs().sum(-1)
    predicts_response = torch.zeros_like(completion, dtype=torch.bool)
    predicts_response[..., :-1] = completion[..., 1:].bool()
    assert (grad_per_position[predicts_response] > 0).all()
    assert (grad_per_position[~predicts_response] == 0).all()


def test_tied_candidates_get_no_ranking_gradient():
    # With all rewards equal every stage is the constant log(1 + remaining), so with the
    # SFT term off nothing moves.
    logps = torch.randn(1, 4, 3, dtype=F64, requires_grad=True)
    out = PROLoss(sft_weight=0.0)(logps, torch.ones(1, 4, 3), torch.ones(1, 4, dtype=F64))
    torch.testing.assert_close(
        out.rank_loss, t(math.log(4) + math.log(3) + math.log(2)), rtol=1e-9, atol=0
    )
    out.loss.backward()
    assert torch.count_nonzero(logps.grad) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_runs(dtype):
    gen = torch.Generator().manual_seed(7)
    logps = (-torch.rand(3, 4, 5, generator=gen) * 5).to(dtype).requires_grad_()
    out = PROLoss()(logps, torch.ones(3, 4, 5), torch.randn(3, 4, generator=gen))
    assert out.loss.dtype == torch.float32 and out.scores.shape == (3, 4)
    assert torch.isfinite(out.loss) and torch.isfinite(out.scores).all()
    out.loss.backward()
    assert logps.grad.dtype == dtype and torch.isfinite(logps.grad.float()).all()


def test_hyperparameter_validation():
    with pytest.raises(ValueError, match="sft_weight"):
        PROLoss(sft_weight=-1.0)
    with pytest.raises(ValueError, match="eps"):
        PROLoss(eps=float("nan"))
    assert "sft_weight=0.2" in repr(PROLoss(sft_weight=0.2))
    assert PROLoss.name == "pro" and PROLoss.uses_reward_values
