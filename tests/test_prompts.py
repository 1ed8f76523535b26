"""PromptCollator and render_prompt: chat templates, the Human/Assistant format, padding."""

from __future__ import annotations

import pytest

from cyclealign.prompts import HUMAN_ASSISTANT_FORMAT, PromptCollator, render_prompt
from helpers import build_tiny_tokenizer


@pytest.fixture(scope="module")
def plain_tokenizer():
    return build_tiny_tokenizer(chat_template=False, pad_is_eos=False)


def test_chat_template_renders_strings_and_messages(tiny_tokenizer):
    expected = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt("hello", tiny_tokenizer) == expected
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": "hello"},
    ]
    rendered = render_prompt(messages, tiny_tokenizer)
    assert rendered.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes")
    assert rendered.endswith(expected)


def test_without_chat_template_uses_human_assistant(plain_tokenizer):
    assert render_prompt("hello", plain_tokenizer) == HUMAN_ASSISTANT_FORMAT.format(prompt="hello")
    hh = "\n\nHuman: hi\n\nAssistant: yes\n\nHuman: and?\n\nAssistant:"
    assert render_prompt(hh, plain_tokenizer) == hh  # already formatted: left alone
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    assert (
        render_prompt(messages, plain_tokenizer) == "\n\nHuman: hi\n\nAssistant: yes\n\nAssistant:"
    )


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
    full = tiny_tokenizer(render_prompt(long, tiny_tokenizer), add_special_tokens=False)[
        "input_ids"
    ]
    assert ids[1].tolist() == full[-12:]  # the end of the prompt is kept
    assert batch["prompts"] == ["hi", long]  # raw prompts travel as a Python list


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
