"""Sampling the candidate responses of a round with the white-box model.

Layout: a prompt is left-padded (``[B, P]``), its candidates are right-padded completions
(``[B, C, L]``). A response token is a position from the end of the prompt up to and
including the first EOS; a response cut by ``max_completion_length`` has no EOS and none is
appended. A response that reached a stop string ends before it and gets an EOS: it finished,
as one that ended by itself did. The completion mask is built from these positions, never
from ``!= pad_token_id``, so tokenizers whose pad token is the EOS token work.

:func:`end_responses` is where a sampled completion becomes a response (EOS, stop strings,
truncation); any sampling engine feeds it token ids (and, if it has them, texts).
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
    "EndedResponse",
    "checkpointing_paused",
    "collapse_responses",
    "end_responses",
    "eos_token_ids",
    "sample_candidates",
    "sampling_config",
    "stop_strings_of",
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


@dataclass
class EndedResponse:
    """One sampled completion as a response."""

    token_ids: list[int]  # the response's tokens, its EOS included when it finished
    text: str  # what the ranker sees (special tokens left out)
    finished: bool  # ended by an EOS or a stop string; False: cut by the length limit


def end_responses(
    completions: Sequence[Sequence[int]],
    texts: Sequence[str] | None = None,
    *,
    tokenizer: Any,
    eos_token_ids: Sequence[int],
    stop_strings: Sequence[str] | None = None,
) -> list[EndedResponse]:
    """Where each sampled completion ends, in tokens and text.

    ``completions`` are the token ids an engine generated after the prompt (padding after an
    EOS or a stop string is allowed). ``texts``, when the engine has them, are their decoded
    texts up to the first EOS with any stop string still in them (vLLM:
    ``include_stop_str_in_output=True``); ``None`` decodes here (``skip_special_tokens``).

    A response ends at its first EOS, which it keeps (it finished). One whose text contains a
    stop string ends before the first one: its tokens are the longest prefix whose text
    stops before it, its text is theirs, and it gets ``eos_token_ids[0]``, because it
    finished too (transformers leaves the stop string in its output; so may other engines).
    Any other response was cut by the length limit and has no EOS. An empty completion is an
    empty finished response (its EOS only).
    """
    eos = set(int(i) for i in eos_token_ids)
    stops = [
        s for s in ([stop_strings] if isinstance(stop_strings, str) else stop_strings or []) if s
    ]
    ended: list[EndedResponse] = []
    for i, row in enumerate(completions):
        row = [int(t) for t in row] or [int(eos_token_ids[0])]
        first_eos = next((k for k, t in enumerate(row) if t in eos), None)
        body = row if first_eos is None else row[:first_eos]
        text = texts[i] if texts is not None else _decode(tokenizer, body)
        cut = _before_stop_string(body, text, stops, tokenizer) if stops else None
        if cut is not None:
            ended.append(
                EndedResponse([*cut, int(eos_token_ids[0])], _decode(tokenizer, cut), True)
            )
        elif first_eos is not None:
            ended.append(EndedResponse(row[: first_eos + 1], text, True))
        else:
            ended.append(EndedResponse(row, text, False))
    return ended


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def _before_stop_string(
    ids: list[int], text: str, stops: Sequence[str], tokenizer: Any
) -> list[int] | None:
    """The longest prefix of ``ids`` whose text ends before the first stop string in ``text``
    (``None``: no stop string). A stop string may begin inside a token; that token goes too."""
    starts = [text.find(s) for s in stops if s in text]
    if not starts:
        return None
    target = text[: min(starts)]
    low, high = 0, len(ids)  # binary search: the prefix texts grow with the prefix
    while low < high:
        mid = (low + high + 1) // 2
        if target.startswith(_decode(tokenizer, ids[:mid])):
            low = mid
        else:
            high = mid - 1
    return ids[:low]


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
    ``chunk_rows`` sequences, to bound memory), end them (:func:`end_responses`, with the
    generation config's ``stop_strings``), then collapse identical responses of a prompt
    (same text) to one candidate."""
    prompt_len = prompt_ids.shape[1]
    ids = prompt_ids.repeat_interleave(num_generations, dim=0)
    mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    step = chunk_rows or ids.shape[0]
    stops = stop_strings_of(generation_config)
    # transformers' stop strings need the tokenizer; a generate without them is left alone.
    extra = {"tokenizer": tokenizer} if stops else {}
    outs = [
        model.generate(
            input_ids=ids[start : start + step],
            attention_mask=mask[start : start + step],
            generation_config=generation_config,
            **extra,
        )
        for start in range(0, ids.shape[0], step)
    ]
    # Host-device sync: the completions are read back once, to end, decode and collapse them.
    rows = [row for out in outs for row in out[:, prompt_len:].tolist()]
    ended = end_responses(
        rows, tokenizer=tokenizer, eos_token_ids=eos_token_ids, stop_strings=stops
    )
    return collapse_responses(prompt_ids, prompt_mask, ended, num_generations, eos_token_ids)


def collapse_responses(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    ended: Sequence[EndedResponse],
    num_generations: int,
    eos_token_ids: Sequence[int],
) -> Candidates:
    """A batch's :class:`Candidates` from its ended responses (``num_generations`` per prompt,
    prompt by prompt): identical responses of a prompt (same text) collapse to one candidate,
    the first one sampled. Every sampling engine ends here."""
    batch = prompt_ids.shape[0]
    width = max(len(r.token_ids) for r in ended)
    completions = torch.full((len(ended), width), int(eos_token_ids[0]), dtype=torch.long)
    mask = torch.zeros(len(ended), width, dtype=torch.bool)
    for i, response in enumerate(ended):
        completions[i, : len(response.token_ids)] = torch.tensor(response.token_ids)
        mask[i, : len(response.token_ids)] = True
    completions = completions.view(batch, num_generations, width)
    mask = mask.view(batch, num_generations, width)

    slots = torch.zeros(batch, num_generations, dtype=torch.long)
    candidate_mask = torch.zeros(batch, num_generations, dtype=torch.bool)
    texts: list[list[str]] = []
    truncated: list[list[bool]] = []
    for b in range(batch):
        seen: dict[str, int] = {}
        for j in range(num_generations):
            seen.setdefault(ended[b * num_generations + j].text, j)
        kept = list(seen.values())
        texts.append(list(seen))
        truncated.append([not ended[b * num_generations + j].finished for j in kept])
        slots[b, : len(kept)] = torch.tensor(kept)
        candidate_mask[b, : len(kept)] = True
    index = slots[:, :, None].expand(-1, -1, width)
    device = prompt_ids.device
    return Candidates(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completions.gather(1, index).to(device),
        completion_mask=mask.gather(1, index).to(device),
        candidate_mask=candidate_mask.to(device),
        texts=texts,
        truncated=truncated,
    )


def stop_strings_of(generation_config: Any) -> list[str]:
    """The generation config's ``stop_strings`` as a list (``[]``: none)."""
    stops = getattr(generation_config, "stop_strings", None)
    return [stops] if isinstance(stops, str) else list(stops or [])


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
    ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty`` and ``stop_strings``, overridden
    key by key by ``args.generation_kwargs`` (as TRL's trainers do)."""
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
            "stop_strings": args.stop_strings,
            **(args.generation_kwargs or {}),
        }
    )
