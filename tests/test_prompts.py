"""PromptCollator and render_prompt: strings as raw text, messages through the chat template
(with chat_template_kwargs) or the Human/Assistant format, padding."""

from __future__ import annotations

import logging

import pytest

from cyclealign.prompts import HUMAN_ASSISTANT_FORMAT, PromptCollator, render_prompt
from helpers import build_tiny_tokenizer


@pytest.fixture(scope="module")
def plain_tokenizer():
    return build_tiny_tokenizer(chat_template=False, pad_is_eos=False)


def test_a_string_is_raw_text_and_messages_get_the_chat_template(tiny_tokenizer):
    # As TRL: a string is used as it is, chat template or not.
    assert render_prompt("hello", tiny_tokenizer) == "hello"
    expected = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "hello"},
    ]
    rendered = render_prompt(messages, tiny_tokenizer)
    assert rendered.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes")
    assert rendered.endswith(expected)


def test_without_chat_template_messages_use_human_assistant(plain_tokenizer):
    hh = "\n\nHuman: hi\n\nAssistant: yes\n\nHuman: and?\n\nAssistant:"
    assert render_prompt(hh, plain_tokenizer) == hh  # raw text: left alone
    assert render_prompt("hello", plain_tokenizer) == "hello"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    assert (
        render_prompt(messages, plain_tokenizer) == "\n\nHuman: hi\n\nAssistant: yes\n\nAssistant:"
    )
    one_turn = render_prompt([{"role": "user", "content": "hello"}], plain_tokenizer)
    assert one_turn == HUMAN_ASSISTANT_FORMAT.format(prompt="hello")


THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if not enable_thinking | default(true) %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_chat_template_kwargs_reach_the_template():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = THINKING_TEMPLATE
    chat = [{"role": "user", "content": "hi"}]
    thinking = render_prompt(chat, tokenizer)
    assert thinking.endswith("<|im_start|>assistant\n")
    off = render_prompt(chat, tokenizer, {"enable_thinking": False})
    assert off == thinking + "<think>\n\n</think>\n\n"
    batch = PromptCollator(tokenizer, chat_template_kwargs={"enable_thinking": False})(
        [{"prompt": chat}]
    )
    assert tokenizer.decode(batch["input_ids"][0]) == off


def test_a_string_with_a_chat_template_warns_once_and_is_tokenized_as_raw_text(
    tiny_tokenizer, caplog
):
    collate = PromptCollator(tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="cyclealign.prompts"):
        batch = collate([{"prompt": "hello"}, {"prompt": "hello world"}])
        collate([{"prompt": "one two three"}])
        collate([{"prompt": [{"role": "user", "content": "hi"}]}])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "used as raw text" in warnings[0]
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert row == tiny_tokenizer("hello")["input_ids"]


def test_bad_prompts_are_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="string or a list of chat messages"):
        render_prompt(42, tiny_tokenizer)
    with pytest.raises(ValueError, match="string or a list of chat messages"):
        render_prompt([{"text": "no role"}], tiny_tokenizer)
    with pytest.raises(ValueError, match="Rename your column to 'prompt'"):
        PromptCollator(tiny_tokenizer)([{"question": "hi"}])


def test_left_padding_and_left_truncation(tiny_tokenizer):
    long = "the quick brown fox jumps over the lazy dog " * 5
    batch = PromptCollator(tiny_tokenizer, max_prompt_length=12)(
        [{"prompt": "hi"}, {"prompt": long}]
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 12) and mask[1].all()
    short_len = int(mask[0].sum())
    assert mask[0, -short_len:].all() and not mask[0, :-short_len].any()  # left-padded
    full = tiny_tokenizer(render_prompt(long, tiny_tokenizer))["input_ids"]
    assert ids[1].tolist() == full[-12:]  # the end of the prompt is kept
    assert batch["prompts"] == ["hi", long]  # raw prompts travel as a Python list


def test_other_columns_travel_with_each_prompt(tiny_tokenizer):
    rows = [{"prompt": "hi", "solution": "2", "level": 1}, {"prompt": "yes", "solution": "3"}]
    batch = PromptCollator(tiny_tokenizer)(rows)
    assert batch["columns"] == [{"solution": "2", "level": 1}, {"solution": "3"}]


def test_tokenizer_without_pad_token_is_refused(plain_tokenizer):
    tokenizer = build_tiny_tokenizer(chat_template=False, pad_is_eos=False)
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        PromptCollator(tokenizer)


def test_the_visible_prompt_is_what_the_white_box_keeps(tiny_tokenizer, plain_tokenizer):
    from cyclealign.prompts import TRUNCATION_MARKER, dialogue_text

    chat = [
        {"role": "user", "content": "hello world " * 40},
        {"role": "assistant", "content": "apple banana cherry"},
        {"role": "user", "content": "How do I bake bread?"},
    ]
    long_text = "one two three " * 60 + "What is the capital of France?"
    for tokenizer in (tiny_tokenizer, plain_tokenizer):
        collator = PromptCollator(tokenizer, max_prompt_length=24)
        out = collator([{"prompt": chat}, {"prompt": long_text}, {"prompt": "hello"}])
        cut_chat, cut_text, short = out["visible_prompts"]
        assert out["prompts"][0] is chat and short == "hello"  # nothing cut: the prompt as is
        kept = [tokenizer.decode(ids[mask.bool()]) for ids, mask in
                zip(out["input_ids"], out["attention_mask"])]  # fmt: skip
        # The same turns the white box kept, the marker where earlier text was cut.
        assert [m["role"] for m in cut_chat] == [m["role"] for m in chat[-len(cut_chat) :]]
        assert len(cut_chat) < len(chat) and cut_chat[-1]["content"].endswith(chat[-1]["content"])
        assert cut_chat[0]["content"].startswith(TRUNCATION_MARKER)
        tail = cut_chat[0]["content"].removeprefix(TRUNCATION_MARKER).strip()
        assert not tail or tail in kept[0]
        assert cut_text.startswith(TRUNCATION_MARKER) and cut_text.endswith("France?")
        assert cut_text.removeprefix(TRUNCATION_MARKER).strip() in kept[1]
        assert len(dialogue_text(cut_text)) < 200 < len(long_text)
