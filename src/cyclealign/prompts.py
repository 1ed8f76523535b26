"""Prompts as both models see them: the one role map, rendering, and the collator.

A prompt is a string or chat messages, treated as TRL treats them (:func:`render_prompt`): a
string is raw text, given to the white-box model as it is; messages go through the
tokenizer's chat template (``add_generation_prompt=True``, with ``chat_template_kwargs``),
or, without one, become the paper's LLaMA format ``"\n\nHuman: ...\n\nAssistant:"``. The
black box is shown the conversation as plain dialogue lines, ``"Human: ..."`` /
``"Assistant: ..."`` (:func:`dialogue_text`). Local judge models render chats the same way as
the white box (:func:`render_chat`). All three use :data:`ROLE_NAMES`.

Both models see the same conversation: when :class:`PromptCollator` cuts a prompt to
``max_prompt_length`` tokens, it also returns the prompt as the white box sees it
(:func:`visible_prompt`): the same turns, the first one cut where the tokens were, with
:data:`TRUNCATION_MARKER` where earlier text was cut. That is what the black box ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .types import Prompt

__all__ = [
    "HUMAN_ASSISTANT_FORMAT",
    "ROLE_NAMES",
    "TRUNCATION_MARKER",
    "PromptCollator",
    "as_messages",
    "dialogue_text",
    "render_chat",
    "render_prompt",
    "role_name",
    "visible_prompt",
]

logger = logging.getLogger(__name__)

#: Prompt format for tokenizers without a chat template (the paper's LLaMA setup).
HUMAN_ASSISTANT_FORMAT = "\n\nHuman: {prompt}\n\nAssistant:"

#: How chat roles are written in plain-text dialogue (HH-RLHF's speaker names).
ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}

#: Put where the start of a prompt was cut (the black box is shown what the white box sees).
TRUNCATION_MARKER = "[...]"


def role_name(role: Any) -> str:
    """The speaker name of a chat role; unknown roles are title-cased (``"tool"`` -> ``"Tool"``)."""
    return ROLE_NAMES.get(str(role), str(role).title())


def as_messages(prompt: Prompt) -> list[dict[str, Any]] | None:
    """Chat messages (copied) of a message-list prompt; ``None`` for a string prompt."""
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


def dialogue_text(prompt: Prompt) -> str:
    """A prompt as readable dialogue, one ``"Speaker: text"`` line per message (strings as they
    are). What the black box is shown."""
    messages = as_messages(prompt)
    if messages is None:
        assert isinstance(prompt, str)
        return prompt.strip()
    return "\n".join(f"{role_name(m['role'])}: {m['content']}" for m in messages).strip()


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    add_generation_prompt: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Chat messages as the model's input text: the tokenizer's chat template (given
    ``chat_template_kwargs``, e.g. ``enable_thinking``), or without one ``"\n\nHuman: ..."`` /
    ``"\n\nAssistant: ..."`` turns (ending with ``"\n\nAssistant:"`` when
    ``add_generation_prompt``)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **(chat_template_kwargs or {}),
        )
    turns = "".join(f"\n\n{role_name(m['role'])}: {m['content']}" for m in messages)
    return turns + ("\n\nAssistant:" if add_generation_prompt else "")


def render_prompt(
    prompt: Prompt, tokenizer: Any, chat_template_kwargs: Mapping[str, Any] | None = None
) -> str:
    """The text the white-box model is conditioned on, as TRL builds it.

    * A string is raw text, used as it is, chat template or not (HH-RLHF's
      ``"\n\nHuman: ...\n\nAssistant:"`` for a base model, for example).
    * Messages go through the chat template with ``add_generation_prompt=True`` and
      ``chat_template_kwargs``; without a template they become ``"\n\nHuman: ..."`` /
      ``"\n\nAssistant: ..."`` turns ending with ``"\n\nAssistant:"``.
    """
    messages = as_messages(prompt)
    if messages is None:
        assert isinstance(prompt, str)
        return prompt
    return render_chat(messages, tokenizer, chat_template_kwargs=chat_template_kwargs)


def visible_prompt(prompt: Prompt, rendered: str, cut: int) -> Prompt:
    """``prompt`` as the white box sees it when ``rendered`` (its :func:`render_prompt` text)
    is kept from character ``cut`` on: whole turns before the cut dropped, the turn the cut
    falls in kept from there, :data:`TRUNCATION_MARKER` at the start of what is left.

    ``prompt`` itself (not a copy) when nothing of it was cut, or when its text cannot be
    found in ``rendered`` (a chat template that rewrites the content).
    """
    if cut <= 0:
        return prompt
    messages = as_messages(prompt)
    if messages is None:
        assert isinstance(prompt, str)
        start = rendered.find(prompt)
        if start < 0 or cut <= start:
            return prompt
        return f"{TRUNCATION_MARKER} {prompt[cut - start :].lstrip()}".rstrip()
    spans, position = [], 0
    for message in messages:
        start = rendered.find(str(message["content"]), position)
        if start < 0:
            return prompt
        position = start + len(str(message["content"]))
        spans.append((start, position))
    kept = [i for i, (_, end) in enumerate(spans) if end > cut]
    if not kept:  # only template text is left: no turn is seen
        return [{**messages[-1], "content": TRUNCATION_MARKER}]
    first = kept[0]
    start = spans[first][0]
    if first == 0 and start >= cut:
        return prompt  # only template text before the first turn was cut
    content = str(messages[first]["content"])
    tail = content[max(0, cut - start) :].lstrip()
    shown = [dict(m) for m in messages[first:]]
    shown[0]["content"] = f"{TRUNCATION_MARKER} {tail}".rstrip()
    return shown


class PromptCollator:
    """Collate rows with a ``prompt`` column for :class:`~cyclealign.CycleAlignTrainer`.

    Returns ``input_ids`` and ``attention_mask`` (``[B, P]``, left-padded, the longest
    prompts left-truncated to ``max_prompt_length`` tokens), ``prompts``, the raw prompts as
    a Python list (``Trainer._prepare_inputs`` moves tensors and leaves lists alone), and
    ``columns``, each row's other columns as a dict (what reward functions receive as keyword
    lists, as in TRL).
    ``visible_prompts``, each prompt as the white box sees it after truncation
    (:func:`visible_prompt`; the raw prompt when nothing was cut).

    Chat-template text is tokenized without extra special tokens (the template writes them);
    raw text and the Human/Assistant format get the tokenizer's usual ones (a BOS for LLaMA).
    A string prompt meeting a tokenizer with a chat template is used as raw text, as in TRL,
    with a warning the first time (pass messages to have the template applied).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_prompt_length: int | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "PromptCollator: the tokenizer has no pad token. Set one, for example "
                "tokenizer.pad_token = tokenizer.eos_token."
            )
        self.tokenizer = tokenizer
        self.max_prompt_length = max_prompt_length
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._warned_raw_string = False

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch  # here, so rankers and data helpers can render prompts without torch

        prompts, columns = [], []
        for row in features:
            if "prompt" not in row:
                raise ValueError(
                    f"Every row needs a 'prompt' column (a string or chat messages); got a row "
                    f"with columns {sorted(row)}. Rename your column to 'prompt'."
                )
            prompts.append(row["prompt"])
            columns.append({k: v for k, v in row.items() if k != "prompt"})
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        ids, visible = [], []
        for prompt in prompts:
            text = render_prompt(prompt, self.tokenizer, self.chat_template_kwargs)
            is_string = isinstance(prompt, str)
            if is_string and has_template and not self._warned_raw_string:
                self._warned_raw_string = True
                logger.warning(
                    "A string prompt is used as raw text, without the tokenizer's chat template "
                    "(as TRL does): %.60r. For a chat, pass messages "
                    '[{"role": "user", "content": ...}]; this warning is shown once.',
                    prompt,
                )
            special = is_string or not has_template  # a template writes its special tokens
            tokens = self.tokenizer(text, add_special_tokens=special)["input_ids"]
            if self.max_prompt_length is not None and len(tokens) > self.max_prompt_length:
                tokens = tokens[-self.max_prompt_length :]
                prompt = visible_prompt(prompt, text, self._cut(text, tokens, special))
            ids.append(tokens)
            visible.append(prompt)
        width = max(len(t) for t in ids)
        if width == 0:
            raise ValueError("PromptCollator: every prompt in the batch tokenized to nothing.")
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, tokens in enumerate(ids):
            if tokens:
                input_ids[row, width - len(tokens) :] = torch.tensor(tokens, dtype=torch.long)
                attention_mask[row, width - len(tokens) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prompts": prompts,
            "columns": columns,
            "visible_prompts": visible,
        }

    def _cut(self, text: str, kept: list[int], add_special: bool) -> int:
        """Where in ``text`` the ``kept`` (last) tokens begin."""
        if getattr(self.tokenizer, "is_fast", False):
            encoded = self.tokenizer(
                text, add_special_tokens=add_special, return_offsets_mapping=True
            )
            offsets = encoded["offset_mapping"][-len(kept) :]
            starts = [start for start, end in offsets if end > start]
            if starts:
                return starts[0]
        tail = self.tokenizer.decode(kept, skip_special_tokens=True)
        return max(0, len(text) - len(tail))
