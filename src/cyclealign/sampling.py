"""Sampling the candidate responses of a round with the white-box model.

Layout: a prompt is left-padded (``[B, P]``), its candidates are right-padded completions
(``[B, C, L]``). A response token is a position from the end of the prompt up to and
including the first EOS; a response cut by ``max_completion_length`` has no EOS and none is
appended. The completion mask is built from these positions, never from ``!= pad_token_id``,
so tokenizers whose pad token is the EOS token work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .config import CycleAlignConfig

__all__ = [
    "Candidates",
    "checkpointing_paused",
    "eos_token_ids",
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

    def token_ids(self) -> list[list[list[int]]]:
        """Per prompt, each distinct response's token ids (its EOS included when it ended)."""
        ids, mask = self.completion_ids.cpu(), self.completion_mask.cpu()
        return [
            [ids[b, j][mask[b, j]].tolist() for j in range(len(t))]
            for b, t in enumerate(self.texts)
        ]


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
    # Host-device sync: lengths and EOS flags are read back once, to decode and collapse.
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


def sampling_config(args: CycleAlignConfig, tokenizer: Any, eos_ids: Sequence[int]) -> Any:
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
