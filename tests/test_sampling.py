"""Sampling candidates, completion masks with pad == EOS, stop strings, the sampling config."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from cyclealign.config import CycleAlignConfig
from cyclealign.sampling import (
    EndedResponse,
    checkpointing_paused,
    end_responses,
    eos_token_ids,
    sample_candidates,
    sampling_config,
)
from helpers import ScriptedGenerator, build_tiny_model, build_tiny_tokenizer, word


def test_masks_come_from_positions_and_duplicates_collapse(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.pad_token_id == eos  # the trap: padding looks like EOS
    a, b = word(tiny_tokenizer, "a"), word(tiny_tokenizer, "b")
    completions = [
        [a, eos, eos, eos],  # prompt 0: "a" + EOS, then padding
        [a, eos, eos, eos],  # duplicate of the first
        [b, b, b, b],  # cut by the length limit: no EOS
        [eos, eos, eos, eos],  # empty response: only its EOS
        [b, a, eos, eos],  # prompt 1
        [b, a, eos, eos],
        [b, a, eos, eos],
        [b, a, eos, eos],
    ]
    prompt = torch.tensor([[5, 6], [0, 7]])
    cands = sample_candidates(
        ScriptedGenerator(completions),
        prompt,
        torch.tensor([[1, 1], [0, 1]]),
        num_generations=4,
        generation_config=None,
        tokenizer=tiny_tokenizer,
        eos_token_ids=[eos],
    )
    assert cands.texts == [["a", "bbbb", ""], ["ba"]]
    assert cands.candidate_mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert cands.truncated == [[False, True, False], [False]]
    assert cands.completion_mask[0].sum(-1).tolist() == [2, 4, 1, 2]  # slot 3 repeats slot 0
    assert cands.completion_mask[1, 0].tolist() == [True, True, True, False]
    assert cands.completion_ids[0, 0, :2].tolist() == [a, eos]
    assert torch.equal(cands.completion_ids[1, 1], cands.completion_ids[1, 0])


def test_eos_ids_and_sampling_config(tmp_path):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, 0]
    assert eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id, 0]
    model.generation_config.eos_token_id = None
    tokenizer.eos_token = None
    with pytest.raises(ValueError, match="EOS"):
        eos_token_ids(model, tokenizer)
    args = CycleAlignConfig(
        output_dir=str(tmp_path), temperature=0.7, generation_kwargs={"top_k": 3}
    )
    config = sampling_config(args, build_tiny_tokenizer(), [2])
    assert config.do_sample and config.temperature == 0.7 and config.top_k == 3
    assert config.max_new_tokens == 64 and config.eos_token_id == [2]


def test_generation_in_chunks_calls_generate_per_chunk(tiny_tokenizer):
    from cyclealign.sampling import sample_candidates

    model = build_tiny_model(tiny_tokenizer)
    calls = []
    original = model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    model.generate = counting
    batch = tiny_tokenizer(["hello world", "one two"], return_tensors="pt", padding=True)
    config = GenerationConfig(
        do_sample=True,
        max_new_tokens=5,
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    cands = sample_candidates(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        num_generations=3,
        generation_config=config,
        tokenizer=tiny_tokenizer,
        eos_token_ids=[tiny_tokenizer.eos_token_id],
        chunk_rows=4,
    )
    assert calls == [4, 2]
    assert cands.completion_ids.shape[:2] == (2, 3) and len(cands.texts) == 2
    assert cands.completion_ids.shape[2] <= 5


def test_checkpointing_paused_keeps_the_configured_settings(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    # Only every second layer checkpointed (the Trainer's `every_n_layers` key).
    model.activation_checkpointing_enable(every_n_layers=2)
    model.train()
    flags = [layer.gradient_checkpointing for layer in model.model.layers]
    hooks = len(model.get_input_embeddings()._forward_hooks)
    assert flags == [True, False]
    with checkpointing_paused(model):
        assert not model.is_activation_checkpointing
        lengths = []
        handle = model.model.layers[0].register_forward_pre_hook(
            lambda module, args, kwargs: lengths.append(
                (args[0] if args else kwargs["hidden_states"]).shape[1]
            ),
            with_kwargs=True,
        )
        prompt = tiny_tokenizer(["hello world"], return_tensors="pt")
        model.generate(**prompt, do_sample=False, max_new_tokens=4, min_new_tokens=4)
        handle.remove()
        # In train mode with checkpointing on, generate would drop the KV cache and feed the
        # whole sequence each step; paused, every step after the first feeds one token.
        assert lengths[1:] == [1, 1, 1]
    assert [layer.gradient_checkpointing for layer in model.model.layers] == flags
    assert len(model.get_input_embeddings()._forward_hooks) == hooks
    with pytest.raises(RuntimeError, match="inside"), checkpointing_paused(model):
        raise RuntimeError("inside")
    assert [layer.gradient_checkpointing for layer in model.model.layers] == flags


# -- stop strings --------------------------------------------------------------------------


class ForceText:
    """A logits processor that makes the model write ``text`` over and over."""

    def __init__(self, tokenizer, text, prompt_len):
        self.script = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.prompt_len = prompt_len

    def __call__(self, input_ids, scores):
        token = self.script[(input_ids.shape[1] - self.prompt_len) % len(self.script)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0
        return forced


def forced_candidates(tmp_path, tokenizer, text, **config):
    """Two prompts x 2 samples from a tiny model that can only write ``text``, repeated."""
    from transformers import LogitsProcessorList

    model = build_tiny_model(tokenizer)
    batch = tokenizer(["hello world", "one two"], return_tensors="pt", padding=True)
    processor = ForceText(tokenizer, text, batch["input_ids"].shape[1])
    original = model.generate
    model.generate = lambda **kw: original(**kw, logits_processor=LogitsProcessorList([processor]))
    args = CycleAlignConfig(output_dir=str(tmp_path), max_completion_length=12, **config)
    eos = tokenizer.eos_token_id
    return sample_candidates(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        num_generations=2,
        generation_config=sampling_config(args, tokenizer, [eos]),
        tokenizer=tokenizer,
        eos_token_ids=[eos],
    )


@pytest.mark.parametrize("pad_is_eos", [True, False])
@pytest.mark.parametrize(
    "config",
    [{"stop_strings": ["Human:"]}, {"generation_kwargs": {"stop_strings": ["Human:"]}}],
    ids=["field", "generation_kwargs"],
)
def test_stop_strings_end_a_response_before_them_with_an_eos(tmp_path, pad_is_eos, config):
    tokenizer = build_tiny_tokenizer(pad_is_eos=pad_is_eos)
    eos = tokenizer.eos_token_id
    # "Human" is one token after a space token: the stop string starts at a token boundary
    # here; the space before it stays in the response.
    cands = forced_candidates(tmp_path, tokenizer, "hello Human: world ", **config)
    assert cands.texts == [["hello "], ["hello "]]
    assert cands.truncated == [[False], [False]]
    hello = tokenizer("hello ", add_special_tokens=False)["input_ids"]
    for b in range(2):
        n = int(cands.completion_mask[b, 0].sum())
        # The response's tokens, then the EOS a finished response scores, then nothing.
        assert cands.completion_ids[b, 0, :n].tolist() == [*hello, eos]
    # Without stop strings the model runs on into the invented turn, to the length limit.
    on = forced_candidates(tmp_path, tokenizer, "hello Human: world ")
    assert all("Human:" in text for texts in on.texts for text in texts)
    assert on.truncated == [[True], [True]] and eos not in on.completion_ids.flatten().tolist()


def test_end_responses_cuts_inside_a_token_and_takes_an_engines_texts(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    ids = tiny_tokenizer("hello Human: world", add_special_tokens=False)["input_ids"]
    kw = dict(tokenizer=tiny_tokenizer, eos_token_ids=[eos])
    # "man:" begins inside the token "Human": that token goes, the text ends before "man:".
    (cut,) = end_responses([ids], stop_strings=["man:"], **kw)
    assert cut.finished and cut.text == "hello " and cut.token_ids[-1] == eos
    assert tiny_tokenizer.decode(cut.token_ids[:-1]) == "hello "
    # The earliest of several stop strings wins; an EOS before any stop string ends it first.
    (first,) = end_responses([ids], stop_strings=["world", "Human:"], **kw)
    assert first.text == "hello "
    hello = tiny_tokenizer("hello", add_special_tokens=False)["input_ids"]
    (by_eos,) = end_responses([[*hello, eos, *ids]], stop_strings=["Human:"], **kw)
    assert by_eos.text == "hello" and by_eos.token_ids == [*hello, eos]
    # An engine that decodes itself passes its texts; no stop string: cut by the length limit.
    (engine,) = end_responses([ids], ["as the engine decoded it"], **kw)
    assert engine == EndedResponse(ids, "as the engine decoded it", False)
    (empty,) = end_responses([[]], **kw)
    assert empty == EndedResponse([eos], "", True)
