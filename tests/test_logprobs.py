"""Log-probs: the causal shift, the gather, memory use, gradients and errors; the forward pass
over completions and over a batch of candidates."""

from __future__ import annotations

import json

import pytest
import torch

from cyclealign.logprobs import (
    accepts_logits_to_keep,
    completion_token_logps,
    pad_last_dim,
    sequence_token_logps,
)
from cyclealign.prompts import PromptCollator
from helpers import REFERENCE_LOSSES, build_tiny_model

CASES = json.loads(REFERENCE_LOSSES.read_text())["cases"]


def naive(logits, input_ids, completion_mask):
    """The textbook version: a full log_softmax, then the shifted gather."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits[..., :-1, :].to(dtype), dim=-1)
    picked = logp.gather(-1, input_ids[..., 1:].unsqueeze(-1)).squeeze(-1)
    return picked, completion_mask[..., 1:].bool()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["name"])
def test_matches_reference_vectors(case):
    inputs = case["inputs"]
    logits = torch.tensor(inputs["logits"], dtype=torch.float64)
    ids = torch.tensor(inputs["input_ids"])
    completion = torch.tensor(inputs["completion_mask"])
    token_logps, token_mask = sequence_token_logps(logits, ids, completion)
    b, c, t = case["num_prompts"], case["num_candidates"], case["seq_len"]
    assert token_logps.shape == (b, c, t - 1) and token_logps.dtype == torch.float64
    assert token_mask.dtype == torch.bool
    torch.testing.assert_close(
        token_logps,
        torch.tensor(inputs["token_logps"], dtype=torch.float64),
        rtol=1e-12,
        atol=1e-12,
    )
    assert torch.equal(token_mask, torch.tensor(inputs["token_mask"]).bool())
    # Scored-token counts and sums agree with the reference's per-candidate summary.
    per = case["outputs"]["per_candidate"]
    assert token_mask.sum(-1).tolist() == per["num_tokens"]
    sums = torch.where(token_mask, token_logps, 0).sum(-1)
    torch.testing.assert_close(sums, torch.tensor(per["sum_logp"], dtype=torch.float64))


def test_shift_by_hand():
    # Vocabulary of 3; logits at position t predict the token at t+1.
    logits = torch.log(
        torch.tensor(
            [[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64
        )
    )
    ids = torch.tensor([2, 1, 0])  # position 0 predicts 1 (p=0.25), position 1 predicts 0 (p=0.1)
    completion = torch.tensor([0, 0, 1])  # a one-token response: only position 1 is scored
    token_logps, token_mask = sequence_token_logps(logits, ids, completion)
    torch.testing.assert_close(
        token_logps, torch.log(torch.tensor([0.25, 0.1], dtype=torch.float64))
    )
    assert token_mask.tolist() == [False, True]


@pytest.mark.parametrize("shape", [(7, 11), (2, 3, 6, 13), (1, 2, 2, 5, 4)])
@pytest.mark.parametrize("chunk_rows", [1, 5, None])
def test_matches_log_softmax(shape, chunk_rows):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=gen) * 3
    ids = torch.randint(0, shape[-1], shape[:-1], generator=gen)
    completion = torch.randint(0, 2, shape[:-1], generator=gen)
    got, mask = sequence_token_logps(logits, ids, completion, chunk_rows=chunk_rows)
    want, want_mask = naive(logits, ids, completion)
    assert got.shape == (*shape[:-2], shape[-2] - 1)
    torch.testing.assert_close(got, want)
    assert torch.equal(mask, want_mask)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    ids = torch.randint(0, 4, (2, 5), generator=gen)
    completion = torch.ones(2, 5, dtype=torch.long)
    assert torch.autograd.gradcheck(
        lambda x: sequence_token_logps(x, ids, completion, chunk_rows=3)[0], (logits,)
    )


def test_gradient_equals_naive_and_skips_last_position():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 6, 9, generator=gen)
    ids = torch.randint(0, 9, (3, 6), generator=gen)
    completion = torch.randint(0, 2, (3, 6), generator=gen)
    weights = torch.randn(3, 5, generator=gen)
    mine = logits.clone().requires_grad_()
    (sequence_token_logps(mine, ids, completion, chunk_rows=4)[0] * weights).sum().backward()
    ref = logits.clone().requires_grad_()
    (naive(ref, ids, completion)[0] * weights).sum().backward()
    torch.testing.assert_close(mine.grad, ref.grad)
    # The last position predicts nothing, so it gets no gradient.
    assert torch.count_nonzero(mine.grad[:, -1]) == 0


def test_sliced_logits_are_read_in_place():
    # Callers score the completion part only, e.g. model(...).logits[:, -(k + 1):]: a
    # non-contiguous view whose gradient must land in the right rows of the full tensor.
    gen = torch.Generator().manual_seed(4)
    full = torch.randn(2, 3, 10, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 7, (2, 3, 6), generator=gen)
    completion = torch.randint(0, 2, (2, 3, 6), generator=gen)
    weights = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    sliced = full[:, :, -6:]
    assert not sliced.is_contiguous()
    got, _ = sequence_token_logps(sliced, ids, completion, chunk_rows=4)
    (got * weights).sum().backward()
    mine = full.grad.clone()
    full.grad = None
    want, _ = naive(full[:, :, -6:], ids, completion)
    torch.testing.assert_close(got, want)
    (want * weights).sum().backward()
    torch.testing.assert_close(mine, full.grad)


def test_bfloat16_computes_in_float32_and_returns_bf16_gradients():
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 8, 300, generator=gen) * 4).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 300, (2, 8), generator=gen)
    completion = torch.ones(2, 8, dtype=torch.long)
    got, _ = sequence_token_logps(logits, ids, completion, chunk_rows=3)
    assert got.dtype == torch.float32
    # Same numbers as the float32 computation on the (exactly representable) bf16 values.
    want, _ = naive(logits.detach().float(), ids, completion)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    got.sum().backward()
    assert logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_no_full_size_copy_is_kept_for_backward():
    # A log_softmax (or a float32 upcast of bf16 logits) kept for backward would be as large
    # as the logits; only the logits themselves and per-row vectors may be saved.
    logits = torch.randn(4, 32, 1000).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 1000, (4, 32))
    completion = torch.ones(4, 32, dtype=torch.long)
    saved_bytes = []

    def pack(t):
        if t.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
            saved_bytes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = sequence_token_logps(logits, ids, completion, chunk_rows=16)
    out.sum().backward()
    logits_bytes = logits.numel() * logits.element_size()
    assert sum(saved_bytes) < 0.05 * logits_bytes
    # The same probe catches the textbook version, so the assertion has teeth.
    saved_bytes.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        naive(logits, ids, completion)
    assert sum(saved_bytes) > logits_bytes


def test_eos_only_response_has_one_scored_token():
    # prompt (3 tokens) + EOS as the whole response: the EOS is the one scored token.
    logits = torch.zeros(4, 5)
    ids = torch.tensor([1, 2, 3, 4])
    completion = torch.tensor([0, 0, 0, 1])
    token_logps, token_mask = sequence_token_logps(logits, ids, completion)
    assert token_mask.tolist() == [False, False, True]
    torch.testing.assert_close(token_logps[2], torch.log(torch.tensor(0.2)))


def test_single_position_gives_empty_output():
    logits = torch.randn(2, 1, 5, requires_grad=True)
    out, mask = sequence_token_logps(logits, torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))
    assert out.shape == (2, 0) and mask.shape == (2, 0)


def test_errors_name_expected_shapes():
    logits = torch.randn(2, 5, 7)
    ids = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.ones(2, 5)
    with pytest.raises(
        ValueError, match=r"input_ids must have shape \[2, 5\].*got a tensor of shape \[2, 4\]"
    ):
        sequence_token_logps(logits, ids[:, :4], mask)
    with pytest.raises(ValueError, match=r"completion_mask must have shape \[2, 5\]"):
        sequence_token_logps(logits, ids, mask[0])
    with pytest.raises(ValueError, match=r"logits must be a tensor of shape \[\.\.\., T, V\]"):
        sequence_token_logps(torch.randn(7), ids, mask)
    with pytest.raises(ValueError, match="floating point"):
        sequence_token_logps(logits.long(), ids, mask)
    with pytest.raises(ValueError, match="integer tensor"):
        sequence_token_logps(logits, ids.float(), mask)
    with pytest.raises(ValueError, match=r"must lie in \[0, 7\).*-100"):
        sequence_token_logps(logits, torch.full((2, 5), -100), mask)
    with pytest.raises(ValueError, match=r"must lie in \[0, 7\)"):
        sequence_token_logps(logits, torch.full((2, 5), 7), mask)
    with pytest.raises(ValueError, match="chunk_rows"):
        sequence_token_logps(logits, ids, mask, chunk_rows=0)


# -- the model forward: completions and candidates ----------------------------------------


def _manual_logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].log_softmax(-1)
    p = len(prompt_ids)
    return torch.stack([logps[p - 1 + t, c] for t, c in enumerate(completion_ids)])


def test_completion_logps_match_an_unpadded_forward(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    batch = PromptCollator(tiny_tokenizer)([{"prompt": "hi"}, {"prompt": "tell me a joke please"}])
    completions = torch.tensor([[10, 11, 12], [13, 14, 0]])
    comp_mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        logps, mask = completion_token_logps(
            model, batch["input_ids"], batch["attention_mask"], completions, comp_mask
        )
    assert mask.tolist() == comp_mask.tolist()
    for row in range(2):
        prompt = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        n = int(comp_mask[row].sum())
        expected = _manual_logps(model, prompt, completions[row, :n].tolist())
        torch.testing.assert_close(logps[row, :n], expected, atol=1e-5, rtol=1e-5)


def test_logits_to_keep_and_chunks_give_the_same_logps_and_a_fixed_forward_count(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    assert accepts_logits_to_keep(model)
    batch = PromptCollator(tiny_tokenizer)([{"prompt": p} for p in ["a", "bb cc", "dd"]])
    completions = torch.randint(5, 200, (3, 4))
    comp_mask = torch.ones(3, 4, dtype=torch.bool)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    args = (model, batch["input_ids"], batch["attention_mask"], completions, comp_mask)
    with torch.no_grad():
        reference, _ = completion_token_logps(*args)
        kept, _ = completion_token_logps(*args, logits_to_keep=True)
        calls.clear()
        chunked, _ = completion_token_logps(*args, logits_to_keep=True, num_chunks=5)
    torch.testing.assert_close(kept, reference)
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=1e-5)
    assert len(calls) == 5  # 3 rows in 5 chunks: empty chunks still run a forward


def test_pad_last_dim():
    x = torch.ones(2, 3)
    assert pad_last_dim(x, 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    assert pad_last_dim(x, 2) is x
