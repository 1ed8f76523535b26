"""Per-token log-probabilities of given tokens under a causal LM, without a log-softmax copy.

The ranking losses only need ``log p(token)`` for the tokens that were actually generated.
``torch.log_softmax(logits)`` would materialise a second ``[..., T, V]`` tensor (and, for
bfloat16 logits, a float32 one twice the size) and keep it alive for the backward pass. Here
the log-prob is ``logit[target] - logsumexp(logit)``; the log-sum-exp is computed in chunks
of rows and the backward pass recomputes the softmax from the logits chunk by chunk, so the
only ``[..., T, V]`` tensors are the logits themselves and, during backward, their gradient.
"""

from __future__ import annotations

import torch

__all__ = ["sequence_token_logps"]

# Rows (sequence positions) per chunk: 4096 rows of a 150k vocabulary in float32 is ~2.4 GiB
# of temporaries at most, a bound that stays small next to the logits of a real batch.
DEFAULT_CHUNK_ROWS = 4096


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision log-sum-exp over a large vocabulary loses whole digits; sums of
    # hundreds of token log-probs lose more. float64 input stays float64.
    return torch.promote_types(dtype, torch.float32)


def _windows(num_seqs: int, num_pos: int, chunk_rows: int):
    """(sequence slice, position slice) pairs covering ``[num_seqs, num_pos]`` with about
    ``chunk_rows`` positions each: whole sequences when they are short, parts of one
    sequence when a single sequence is longer than ``chunk_rows``."""
    if num_pos == 0:
        return
    if num_pos <= chunk_rows:
        step = max(1, chunk_rows // num_pos)
        for n0 in range(0, num_seqs, step):
            yield slice(n0, n0 + step), slice(0, num_pos)
    else:
        for n0 in range(num_seqs):
            for t0 in range(0, num_pos, chunk_rows):
                yield slice(n0, n0 + 1), slice(t0, min(t0 + chunk_rows, num_pos))


class _TokenLogps(torch.autograd.Function):
    """``logits[n, t, targets[n, t]] - logsumexp(logits[n, t])`` for ``t < T - 1``.

    Takes the full ``[N, T, V]`` logits (any strides) so that the gradient is produced for
    them directly, without a slice-backward copy; the last position gets zero gradient.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int):
        out_dtype = _compute_dtype(logits.dtype)
        num_seqs, num_pos = targets.shape
        scored = logits[:, :num_pos]
        out = scored.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(out_dtype)
        lse = torch.empty_like(out)
        for n, t in _windows(num_seqs, num_pos, chunk_rows):
            lse[n, t] = torch.logsumexp(scored[n, t].to(out_dtype), dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_rows = chunk_rows
        return out - lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        num_seqs, num_pos = targets.shape
        grad_logits = torch.empty_like(logits)
        grad_logits[:, num_pos:] = 0
        grad_out = grad_out.to(lse.dtype)
        for n, t in _windows(num_seqs, num_pos, ctx.chunk_rows):
            g = grad_out[n, t].unsqueeze(-1)
            # d/dx (x[target] - lse(x)) = onehot(target) - softmax(x)
            grad = torch.exp(logits[n, t].to(lse.dtype) - lse[n, t].unsqueeze(-1))
            grad.mul_(-g)
            grad.scatter_add_(-1, targets[n, t].unsqueeze(-1), g)
            grad_logits[n, t] = grad.to(logits.dtype)
        return grad_logits, None, None


def sequence_token_logps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the next tokens, with the causal shift applied.

    ``logits[..., t, :]`` is the model's distribution for ``input_ids[..., t + 1]``, so

    * ``token_logps[..., t] = log_softmax(logits[..., t, :])[input_ids[..., t + 1]]``
    * ``token_mask[..., t] = completion_mask[..., t + 1]``

    for ``t = 0 .. T-2``. Only positions where ``token_mask`` is true are response tokens;
    the others hold the ordinary log-prob of whatever token sits there (prompt or padding)
    and must be ignored by the caller, as the ranking losses do.

    Generated responses count their terminating EOS as a response token (callers put it in
    ``completion_mask``), so even an empty response has one scored token.

    Args:
        logits: ``[..., T, V]`` raw model outputs (float32, bfloat16, float16 or float64).
        input_ids: ``[..., T]`` token ids in ``[0, V)``.
        completion_mask: ``[..., T]``, true (or 1) on response tokens.
        chunk_rows: how many positions share one log-sum-exp pass; bounds the temporary
            memory. ``None`` processes all rows at once.

    Returns:
        ``(token_logps, token_mask)``, both ``[..., T-1]``. ``token_logps`` is float32 for
        half-precision logits (computed in float32), otherwise the logits' dtype;
        ``token_mask`` is bool. Gradients flow back to ``logits``.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise ValueError(
            "sequence_token_logps: logits must be a tensor of shape [..., T, V], got "
            f"{_describe(logits)}."
        )
    if not logits.is_floating_point():
        raise ValueError(
            f"sequence_token_logps: logits must be floating point, got {logits.dtype}."
        )
    expected = tuple(logits.shape[:-1])
    for arg_name, tensor in (("input_ids", input_ids), ("completion_mask", completion_mask)):
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
            raise ValueError(
                f"sequence_token_logps: {arg_name} must have shape {list(expected)} "
                f"(logits' shape [..., T, V] without V), got {_describe(tensor)}."
            )
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(
            f"sequence_token_logps: input_ids must be an integer tensor, got {input_ids.dtype}."
        )
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(
            f"sequence_token_logps: chunk_rows must be a positive int, got {chunk_rows!r}."
        )

    vocab = logits.shape[-1]
    seq_len = logits.shape[-2]
    token_mask = completion_mask[..., 1:] != 0
    targets = input_ids[..., 1:]
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"sequence_token_logps: input_ids must lie in [0, {vocab}) for a vocabulary of "
            f"{vocab}, got values in [{int(targets.min())}, {int(targets.max())}]. Replace "
            "ignore labels such as -100 by the pad token id and exclude them via completion_mask."
        )
    # flatten() is a view for model outputs, even sliced ones (logits[:, -k:]); the windows
    # then read the logits in place instead of copying them into a [N*T, V] matrix.
    flat_logits = logits.flatten(0, -3) if logits.dim() > 2 else logits.unsqueeze(0)
    flat_targets = targets.reshape(flat_logits.shape[0], max(seq_len - 1, 0)).long()
    logps = _TokenLogps.apply(flat_logits, flat_targets, chunk_rows or max(1, targets.numel()))
    return logps.reshape(targets.shape), token_mask


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"{type(value).__name__}"
