"""Sampling candidate responses and scoring them with the white-box model.

Layout: a prompt is left-padded (``[B, P]``), its candidates are right-padded completions
(``[B, C, L]``). A response token is a position from the end of the prompt up to and
including the first EOS; a response cut by ``max_completion_length`` has no EOS and none is
appended. The completion mask is built from these positions, never from ``!= pad_token_id``,
so tokenizers whose pad token is the EOS token work.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .logprobs import sequence_token_logps

__all__ = [
    "Candidates",
    "accepts_logits_to_keep",
    "better_response_completions",
    "checkpointing_paused",
    "completion_token_logps",
    "eos_token_ids",
    "finished_response_ids",
    "pad_last_dim",
    "sample_candidates",
    "sampling_config",
]


@dataclass
class Candidates:
    """The distinct sampled responses of a batch of prompts.

    Slot ``j < len(texts[b])`` of prompt ``b`` holds its ``j``-th distinct response (the index
    the ranker sees); the remaining slots repeat slot 0 so that every row is a real sequence,
    and are masked out by ``candidate_mask``.
    """

    prompt_ids: torch.Tensor  # [B, P], left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C, L], right-padded
    completion_mask: torch.Tensor  # [B, C, L] bool, response tokens (EOS included)
    candidate_mask: torch.Tensor  # [B, C] bool, distinct responses
    texts: list[list[str]]  # distinct response texts per prompt
    truncated: list[list[bool]]  # per distinct response: cut by max_completion_length (no EOS)


@contextmanager
def checkpointing_paused(model: Any) -> Iterator[None]:
    """Switch activation checkpointing off inside the block (for ``generate``) and back on
    exactly as it was.

    Checkpointed layers in train mode force ``use_cache=False``, which makes sampling
    quadratic. Calling the model's checkpointing disable/enable instead would re-enable it with
    default settings (losing transformers' ``every_n_layers``/``offload``, which then reach
    ``torch.utils.checkpoint`` and fail) and register one more input-grad hook per call, so
    only the per-module flags are flipped; the checkpoint functions stay as configured.
    """
    flagged = [m for m in model.modules() if getattr(m, "gradient_checkpointing", None) is True]
    for module in flagged:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in flagged:
            module.gradient_checkpointing = True


def sample_candidates(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    num_generations: int,
    generation_config: Any,
    tokenizer: Any,
    eos_token_ids: Sequence[int],
    chunk_rows: int | None = None,
) -> Candidates:
    """Sample ``num_generations`` responses per prompt in one ``generate`` call (or in calls of
    ``chunk_rows`` sequences, to bound memory), then collapse identical responses of a
    prompt (same decoded text) to one candidate."""
    batch, prompt_len = prompt_ids.shape
    ids = prompt_ids.repeat_interleave(num_generations, dim=0)
    mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    step = chunk_rows or ids.shape[0]
    outs = [
        model.generate(
            input_ids=ids[start : start + step],
            attention_mask=mask[start : start + step],
            generation_config=generation_config,
        )
        for start in range(0, ids.shape[0], step)
    ]
    # Chunks stop at different lengths; EOS padding reads as "ended" and is cut below.
    out_width = max(o.shape[1] for o in outs)
    out = torch.cat(
        [
            torch.nn.functional.pad(o, (0, out_width - o.shape[1]), value=int(eos_token_ids[0]))
            for o in outs
        ]
    )
    completions = out[:, prompt_len:]
    if completions.shape[1] == 0:  # nothing generated at all: one empty, truncated token slot
        completions = torch.full_like(out[:, :1], int(eos_token_ids[0]))
    is_eos = torch.isin(completions, torch.tensor(list(eos_token_ids), device=completions.device))
    ended = is_eos.any(dim=1)
    first_eos = is_eos.int().argmax(dim=1)
    lengths = torch.where(ended, first_eos + 1, completions.shape[1])
    width = int(lengths.max())
    completions = completions[:, :width]
    mask = torch.arange(width, device=completions.device)[None, :] < lengths[:, None]
    completions = completions.view(batch, num_generations, width)
    mask = mask.view(batch, num_generations, width)
    lengths_list = lengths.view(batch, num_generations).tolist()
    ended_list = ended.view(batch, num_generations).tolist()

    slots = torch.zeros(batch, num_generations, dtype=torch.long)
    candidate_mask = torch.zeros(batch, num_generations, dtype=torch.bool)
    texts: list[list[str]] = []
    truncated: list[list[bool]] = []
    for b in range(batch):
        seen: dict[str, int] = {}
        for j in range(num_generations):
            n_text = lengths_list[b][j] - (1 if ended_list[b][j] else 0)
            text = tokenizer.decode(completions[b, j, :n_text].tolist(), skip_special_tokens=True)
            if text not in seen:
                seen[text] = j
        kept = list(seen.values())
        texts.append(list(seen))
        truncated.append([not ended_list[b][j] for j in kept])
        slots[b, : len(kept)] = torch.tensor(kept)
        candidate_mask[b, : len(kept)] = True
    slots = slots.to(completions.device)
    index = slots[:, :, None].expand(-1, -1, width)
    return Candidates(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completions.gather(1, index),
        completion_mask=mask.gather(1, index),
        candidate_mask=candidate_mask.to(completions.device),
        texts=texts,
        truncated=truncated,
    )


def better_response_completions(
    texts: Sequence[str | None],
    candidates: Candidates,
    *,
    tokenizer: Any,
    eos_token_id: int,
    max_completion_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Completion ids ``[B, L']``, mask ``[B, L']`` and presence ``[B]`` of the black box's
    improved responses.

    A better response is a finished answer, so it gets an EOS (unless it has to be cut to
    ``max_completion_length``). Prompts without one get a copy of their first candidate, so every
    row is a real sequence and the forward pass has the same shape on every process.
    """
    device = candidates.completion_ids.device
    rows: list[list[int]] = []
    present = []
    for b, text in enumerate(texts):
        if text:
            rows.append(finished_response_ids(text, tokenizer, eos_token_id, max_completion_length))
            present.append(True)
        else:
            n = int(candidates.completion_mask[b, 0].sum())
            rows.append(candidates.completion_ids[b, 0, :n].tolist())
            present.append(False)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        mask[b, : len(row)] = True
    return ids, mask, torch.tensor(present, dtype=torch.bool, device=device)


def finished_response_ids(
    text: str, tokenizer: Any, eos_token_id: int, max_completion_length: int | None
) -> list[int]:
    """Token ids of a finished answer given as text: its tokens and an EOS, cut to
    ``max_completion_length`` (then without the EOS: the answer did not end there). Used for the
    black box's improved responses and for offline ranked data."""
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], eos_token_id]
    return ids if max_completion_length is None else ids[:max_completion_length]


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


def pad_last_dim(tensor: torch.Tensor, width: int, value: float | bool = 0) -> torch.Tensor:
    """Right-pad the last dimension of ``tensor`` to ``width`` with ``value``."""
    missing = width - tensor.shape[-1]
    if missing <= 0:
        return tensor
    pad = tensor.new_full((*tensor.shape[:-1], missing), value)
    return torch.cat([tensor, pad], dim=-1)


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a response: the tokenizer's EOS first, then the generation config's."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in configured if isinstance(configured, list) else [configured]:
        if token is not None and int(token) not in ids:
            ids.append(int(token))
    if not ids:
        raise ValueError(
            "Neither the tokenizer nor the model's generation_config has an EOS token; "
            "responses need one to end. Set tokenizer.eos_token."
        )
    return ids


def sampling_config(args: Any, tokenizer: Any, eos_ids: Sequence[int]) -> Any:
    """The ``GenerationConfig`` of the rounds: sampling with the config's ``temperature``,
    ``top_p``, ``top_k``, ``min_p`` and ``repetition_penalty``, overridden key by key by
    ``args.generation_kwargs`` (as TRL's trainers do)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        **{
            "max_new_tokens": args.max_completion_length,
            "do_sample": True,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "min_p": args.min_p,
            "repetition_penalty": args.repetition_penalty,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": list(eos_ids),
            **(args.generation_kwargs or {}),
        }
    )
