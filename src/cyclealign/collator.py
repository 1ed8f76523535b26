"""Turning dataset rows with a ``prompt`` column into left-padded prompt ids.

A prompt is a string or chat messages. With a chat template the tokenizer renders it with
``add_generation_prompt=True``; without one the paper's LLaMA format
``"\\n\\nHuman: {prompt}\\n\\nAssistant:"`` is used (see :func:`render_prompt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .demonstrations import Prompt

__all__ = ["HUMAN_ASSISTANT_FORMAT", "PromptCollator", "render_prompt"]

#: Prompt format for tokenizers without a chat template (the paper's LLaMA setup).
HUMAN_ASSISTANT_FORMAT = "\n\nHuman: {prompt}\n\nAssistant:"

_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def render_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The text the white-box model is conditioned on.

    * With a chat template: a string becomes one user message; messages are rendered with
      ``add_generation_prompt=True``.
    * Without one: a string already ending in ``"Assistant:"`` (HH-RLHF style) is kept as is,
      any other string is wrapped in :data:`HUMAN_ASSISTANT_FORMAT`; messages become
      ``"\\n\\nHuman: ..."`` / ``"\\n\\nAssistant: ..."`` turns ending with ``"\\n\\nAssistant:"``.
    """
    messages = _as_messages(prompt)
    if getattr(tokenizer, "chat_template", None):
        if messages is None:
            messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if messages is None:
        assert isinstance(prompt, str)
        if prompt.rstrip().endswith("Assistant:"):
            return prompt
        return HUMAN_ASSISTANT_FORMAT.format(prompt=prompt)
    turns = [f"\n\n{_ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return "".join(turns) + "\n\nAssistant:"


def _as_messages(prompt: Prompt) -> list[dict[str, Any]] | None:
    if isinstance(prompt, str):
        return None
    if isinstance(prompt, Sequence) and all(
        isinstance(m, Mapping) and "role" in m and "content" in m for m in prompt
    ):
        return [dict(m) for m in prompt]
    raise ValueError(
        "A prompt must be a string or a list of chat messages "
        f'[{{"role": ..., "content": ...}}, ...], got {prompt!r:.200}.'
    )


class PromptCollator:
    """Collate rows with a ``prompt`` column for :class:`~cyclealign.CycleAlignTrainer`.

    Returns ``input_ids`` and ``attention_mask`` (``[B, P]``, left-padded, the longest
    prompts left-truncated to ``max_prompt_length`` tokens) and ``prompts``, the raw prompts as
    a Python list (``Trainer._prepare_inputs`` moves tensors and leaves lists alone).

    Chat-template text is tokenized without extra special tokens (the template writes them);
    the Human/Assistant format gets the tokenizer's usual ones (a BOS for LLaMA).
    """

    def __init__(self, tokenizer: Any, max_prompt_length: int | None = None) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "PromptCollator: the tokenizer has no pad token. Set one, for example "
                "tokenizer.pad_token = tokenizer.eos_token."
            )
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        prompts = []
        for row in features:
            if "prompt" not in row:
                raise ValueError(
                    f"Every row needs a 'prompt' column (a string or chat messages); got a row "
                    f"with columns {sorted(row)}. Rename your column to 'prompt'."
                )
            prompts.append(row["prompt"])
        add_special = not getattr(self.tokenizer, "chat_template", None)
        ids = []
        for prompt in prompts:
            text = render_prompt(prompt, self.tokenizer)
            tokens = self.tokenizer(text, add_special_tokens=add_special)["input_ids"]
            if self.max_prompt_length is not None:
                tokens = tokens[-self.max_prompt_length :]
            ids.append(tokens)
        width = max(len(t) for t in ids)
        if width == 0:
            raise ValueError("PromptCollator: every prompt in the batch tokenized to nothing.")
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, tokens in enumerate(ids):
            if tokens:
                input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
                attention_mask[row, width - len(tokens) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "prompts": prompts}
