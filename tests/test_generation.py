"""Sampling candidates, completion masks with pad == EOS, and completion log-probs."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from conftest import build_tiny_model, build_tiny_tokenizer
from cyclealign.collator import PromptCollator
from cyclealign.config import CycleAlignConfig
from cyclealign.generation import (
    accepts_logits_to_keep,
    better_response_completions,
    checkpointing_paused,
    completion_token_logps,
    eos_token_ids,
    pad_last_dim,
    sample_candidates,
    sampling_config,
)


class ScriptedGenerator:
    """Returns fixed completions after the prompt, as ``generate`` does (pad == EOS here)."""

    def __init__(self, completions):
        self.completions = torch.tensor(completions)

    def generate(self, input_ids, attention_mask, generation_config):
        assert input_ids.shape[0] == self.completions.shape[0]
        return torch.cat([input_ids, self.completions], dim=1)


def word(tokenizer, text):
    (token,) = tokenizer(text, add_special_tokens=False)["input_ids"]
    return token


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


def _manual_logps(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].log_softmax(-1)
    p = len(prompt_ids)
    return torch.stack([logps[p - 1 + t, c] for t, c in enumerate(completion_ids)])


def test_completion_logps_match_an_unpadded_forward(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    batch = PromptCollator(tiny_tokenizer)([{"prompt": "hi"}, {"prompt": "tell me a joke please"}])
    completions = torch.tensor([[10, 11, 12], [13, 14, 0]])
    comp_mask = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        logps, mask = completion_token_logps(
            model, batch["input_ids"], batch["attention_mask"], completions, comp_mask
        )
    assert mask.tolist() == comp_mask.tolist()
    for row in range(2):
        prompt = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        n = int(comp_mask[row].sum())
        expected = _manual_logps(model, prompt, completions[row, :n].tolist())
        torch.testing.assert_close(logps[row, :n], expected, atol=1e-5, rtol=1e-5)


def test_logits_to_keep_and_chunks_give_the_same_logps_and_a_fixed_forward_count(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    assert accepts_logits_to_keep(model)
    batch = PromptCollator(tiny_tokenizer)([{"prompt": p} for p in ["a", "bb cc", "dd"]])
    completions = torch.randint(5, 200, (3, 4))
    comp_mask = torch.ones(3, 4, dtype=torch.bool)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    args = (model, batch["input_ids"], batch["attention_mask"], completions, comp_mask)
    with torch.no_grad():
        reference, _ = completion_token_logps(*args)
        kept, _ = completion_token_logps(*args, logits_to_keep=True)
        calls.clear()
        chunked, _ = completion_token_logps(*args, logits_to_keep=True, num_chunks=5)
    torch.testing.assert_close(kept, reference)
    torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=1e-5)
    assert len(calls) == 5  # 3 rows in 5 chunks: empty chunks still run a forward


def test_better_responses_get_an_eos_and_others_copy_candidate_zero(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    a = word(tiny_tokenizer, "a")
    cands = sample_candidates(
        ScriptedGenerator([[a, eos, eos], [a, a, eos], [a, a, a], [a, eos, eos]]),
        torch.tensor([[3], [4]]),
        torch.ones(2, 1, dtype=torch.long),
        num_generations=2,
        generation_config=None,
        tokenizer=tiny_tokenizer,
        eos_token_ids=[eos],
    )
    ids, mask, present = better_response_completions(
        ["yes", None], cands, tokenizer=tiny_tokenizer, eos_token_id=eos, max_completion_length=8
    )
    expected = tiny_tokenizer("yes", add_special_tokens=False)["input_ids"] + [eos]
    assert ids[0, : len(expected)].tolist() == expected and int(mask[0].sum()) == len(expected)
    assert ids[1, :3].tolist() == [a, a, a] and int(mask[1].sum()) == 3  # truncated candidate
    assert present.tolist() == [True, False]
    ids, mask, _ = better_response_completions(
        ["yes yes yes"], cands, tokenizer=tiny_tokenizer, eos_token_id=eos, max_completion_length=2
    )
    assert ids.shape[1] == 2 and eos not in ids[0].tolist()  # cut, so no EOS


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


def test_pad_last_dim():
    x = torch.ones(2, 3)
    assert pad_last_dim(x, 5).tolist() == [[1, 1, 1, 0, 0]] * 2
    assert pad_last_dim(x, 2) is x


def test_generation_in_chunks_calls_generate_per_chunk(tiny_tokenizer):
    from cyclealign.generation import sample_candidates

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
