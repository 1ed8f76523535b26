"""Scoring with the white-box model: per-token log-probabilities of given tokens, and the
forward pass that gives them for every candidate response of a batch.

:func:`sequence_token_logps` computes ``log p(token)`` without a log-softmax copy (below);
:func:`completion_token_logps` and :func:`candidate_token_logps` run the model on prompts
plus completions (``[N, L]`` and ``[B, C, L]`` layouts) and return those log-probs with the
mask of response tokens.

The ranking losses only need ``log p(token)`` for the tokens that were actually generated.
``torch.log_softmax(logits)`` would materialise a second ``[..., T, V]`` tensor (and, for
bfloat16 logits, a float32 one twice the size) and keep it alive for the backward pass. Here
the log-prob is ``logit[target] - logsumexp(logit)``; the log-sum-exp is computed in chunks
of rows and the backward pass recomputes the softmax from the logits chunk by chunk, so the
only ``[..., T, V]`` tensors are the logits themselves and, during backward, their gradient.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from ._checks import describe

__all__ = [
    "accepts_logits_to_keep",
    "candidate_token_logps",
    "completion_token_logps",
    "pad_last_dim",
    "sequence_token_logps",
]

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
            f"{describe(logits)}."
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
                f"(logits' shape [..., T, V] without V), got {describe(tensor)}."
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
    # Host-device sync (two scalars read back); cheap next to the forward pass that made the
    # logits, and an out-of-range id would otherwise read garbage or crash in the gather.
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


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether ``model.forward`` can skip the LM head on prompt positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def completion_token_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    logits_to_keep: bool = False,
    num_chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``[N, L]`` of completions given their prompts, and the mask of
    response tokens ``[N, L]``.

    ``prompt_*`` are ``[N, P]`` (left-padded), ``completion_*`` ``[N, L]`` (right-padded).
    Position ids follow the attention mask, as in ``generate``, so left padding does not shift
    them. ``num_chunks > 1`` splits the rows into that many forward passes (for no-grad
    scoring); an empty chunk still runs one row so that every process makes the same number
    of forward calls (each one is a collective under DeepSpeed ZeRO-3).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.to(torch.long), completion_mask.to(torch.long)], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    prompt_len, comp_len = prompt_ids.shape[1], completion_ids.shape[1]
    # Positions P-1 .. P+L-1 predict the completion; the first one is a prompt position.
    scored_mask = torch.cat([torch.zeros_like(completion_mask[:, :1]), completion_mask], dim=1)
    scored_ids = input_ids[:, prompt_len - 1 :]
    kwargs: dict[str, Any] = {"use_cache": False}
    if logits_to_keep:
        kwargs["logits_to_keep"] = comp_len + 1

    logps = []
    for rows in torch.arange(input_ids.shape[0], device=input_ids.device).tensor_split(
        max(1, num_chunks)
    ):
        batch = {
            "input_ids": input_ids[rows] if rows.numel() else input_ids[:1],
            "attention_mask": attention_mask[rows] if rows.numel() else attention_mask[:1],
            "position_ids": position_ids[rows] if rows.numel() else position_ids[:1],
        }
        logits = model(**batch, **kwargs).logits
        if not rows.numel():
            continue  # only run to keep the number of forward calls equal on every process
        logits = logits[:, -(comp_len + 1) :]
        token_logps, _ = sequence_token_logps(logits, scored_ids[rows], scored_mask[rows])
        logps.append(token_logps)
    return torch.cat(logps, dim=0), completion_mask.bool()


def candidate_token_logps(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    logits_to_keep: bool = False,
    num_chunks: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs ``[B, C, L]`` of ``C`` candidate completions per prompt, and their
    response-token mask ``[B, C, L]``: the forward pass a ranking loss needs.

    ``prompt_*`` are ``[B, P]`` (left-padded), ``completion_*`` ``[B, C, L]`` (right-padded);
    each prompt is repeated for its candidates and the ``B * C`` rows go through
    :func:`completion_token_logps` (``num_chunks`` passes).
    """
    batch, num_candidates, width = completion_ids.shape
    logps, token_mask = completion_token_logps(
        model,
        prompt_ids.repeat_interleave(num_candidates, dim=0),
        prompt_mask.repeat_interleave(num_candidates, dim=0),
        completion_ids.reshape(batch * num_candidates, width),
        completion_mask.reshape(batch * num_candidates, width),
        logits_to_keep=logits_to_keep,
        num_chunks=num_chunks,
    )
    return logps.view(batch, num_candidates, width), token_mask.view(batch, num_candidates, width)


def pad_last_dim(tensor: torch.Tensor, width: int, value: float | bool = 0) -> torch.Tensor:
    """Right-pad the last dimension of ``tensor`` to ``width`` with ``value``."""
    missing = width - tensor.shape[-1]
    if missing <= 0:
        return tensor
    pad = tensor.new_full((*tensor.shape[:-1], missing), value)
    return torch.cat([tensor, pad], dim=-1)
