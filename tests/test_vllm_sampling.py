"""Sampling with a colocated vLLM engine (`cyclealign.vllm_sampling`, `use_vllm=True`) against
the transformers path, on a tiny Llama shaped for vLLM's CPU kernels.

The model is first trained to answer the test prompts (`helpers.train_to_answer`) so that every
step of a greedy path has a top-1 margin above `helpers.GREEDY_MARGIN` (checked, in fp32, for
the model each comparison uses): kernel differences between the engines cannot flip an argmax,
and greedy outputs must be equal token for token. One engine serves the whole session (the
process's engine is shared by trainers with the same settings).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from cyclealign import BlackBoxRanker, CycleAlignConfig, CycleAlignTrainer, RankResult
from cyclealign.sampling import sample_candidates
from cyclealign.vllm_sampling import (
    changed_parameter_names,
    sampling_params_kwargs,
    unmappable_generation_kwargs,
)
from helpers import (
    GREEDY_MARGIN,
    PROMPTS,
    WhiteboxTap,
    build_tiny_model,
    build_tiny_tokenizer,
    build_vllm_tiny_model,
    chat_ids,
    greedy_with_margins,
    train_to_answer,
)

engine = pytest.mark.vllm  # needs vLLM: runs in the environment scripts/vllm-env.sh builds
LORA_LR = 1e-2  # the adapter must move the greedy answers; margins stay above the threshold
PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


# -- without an engine (the main environment) ------------------------------------------------


def test_sampling_maps_every_field_the_transformers_path_honours(tmp_path):
    args = CycleAlignConfig(
        output_dir=str(tmp_path),
        num_generations=3,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        min_p=0.05,
        repetition_penalty=1.2,
        max_completion_length=12,
        stop_strings=["Human:"],
        generation_kwargs={"top_k": 7, "min_new_tokens": 2, "stop_strings": "User:"},
    )
    assert sampling_params_kwargs(args, [2, 5]) == {
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 7,  # generation_kwargs win, as on the transformers path
        "min_p": 0.05,
        "repetition_penalty": 1.2,
        "max_tokens": 12,
        "min_tokens": 2,
        "stop": ["User:"],
        "stop_token_ids": [2, 5],
        "include_stop_str_in_output": True,
    }
    args.generation_kwargs = {"do_sample": False}
    assert sampling_params_kwargs(args, [2])["temperature"] == 0.0  # greedy, as generate's


def test_unmappable_generation_kwargs_are_refused(tmp_path):
    assert unmappable_generation_kwargs({"do_sample": True, "num_beams": 1, "top_k": 3}) == []
    assert unmappable_generation_kwargs({"num_beams": 4, "typical_p": 0.9}) == [
        "num_beams",
        "typical_p",
    ]
    with pytest.raises(ValueError, match=r"use_vllm=True cannot honour .*'no_repeat_ngram_size'"):
        CycleAlignConfig(
            output_dir=str(tmp_path), use_vllm=True, generation_kwargs={"no_repeat_ngram_size": 2}
        )
    with pytest.raises(ValueError, match="vllm_mode must be one of"):
        CycleAlignConfig(output_dir=str(tmp_path), use_vllm=True, vllm_mode="server")


def test_only_what_an_update_can_change_is_sent(tiny_tokenizer):
    model = build_vllm_tiny_model(tiny_tokenizer)
    everything = {name for name, _ in model.named_parameters()}
    assert changed_parameter_names(model, PACKED) == everything
    for param in model.model.layers[0].mlp.gate_proj.parameters():
        param.requires_grad_(False)
    for param in model.model.layers[1].parameters():
        param.requires_grad_(False)
    model.model.layers[1].self_attn.k_proj.weight.requires_grad_(True)
    names = changed_parameter_names(model, PACKED)
    # gate_proj is frozen but fused with the trainable up_proj: sent with it; layer 1 sends
    # only its attention's q, k, v (k is trainable; vLLM rebuilds qkv_proj from all three).
    assert "model.layers.0.mlp.gate_proj.weight" in names
    layer1 = sorted(n for n in names if ".layers.1." in n)
    assert layer1 == [f"model.layers.1.self_attn.{x}_proj.weight" for x in "kqv"]


def test_a_lora_model_sends_the_merged_base_weights_of_its_adapted_layers(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        build_vllm_tiny_model(tiny_tokenizer),
        LoraConfig(r=4, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM"),
    )
    names = changed_parameter_names(model, PACKED)
    expected = {
        f"model.layers.{i}.{m}.weight"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")
    }
    assert names == expected


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_without_vllm_the_error_says_how_to_get_it(tmp_path, tiny_tokenizer):
    with pytest.raises(ImportError, match=r"scripts/vllm-env\.sh"):
        CycleAlignTrainer(
            build_tiny_model(tiny_tokenizer),
            CycleAlignConfig(output_dir=str(tmp_path), use_vllm=True, report_to="none"),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=tiny_tokenizer,
            ranker=ByLength(),
        )


# -- with an engine (one for the session) ----------------------------------------------------


@pytest.fixture(scope="module")
def answering_model_dir(tmp_path_factory):
    torch.set_num_threads(1)  # two threads on two shared cores are slower (OpenMP spinning)
    tokenizer = build_tiny_tokenizer()
    model = train_to_answer(build_vllm_tiny_model(tokenizer), tokenizer)
    path = tmp_path_factory.mktemp("answering-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class ByLength(BlackBoxRanker):
    """Longest first: a ranking that disagrees with the white box often enough to train."""

    def rank(self, requests):
        return [
            RankResult(sorted(range(len(r.responses)), key=lambda i: -len(r.responses[i])))
            for r in requests
        ]


class EchoWhitebox(BlackBoxRanker):
    """Agrees fully with the white-box ranking published by the trainer's forward pass."""

    def __init__(self):
        self.tap = WhiteboxTap()

    def rank(self, requests):
        return [RankResult(list(ranking)) for ranking in self.tap.wait()]


def make_trainer(model, path, out, ranker, peft_config=None, **overrides):
    settings = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_generations=3,
        max_completion_length=16,
        max_prompt_length=48,
        max_rounds=2,
        stop_on_full_agreement=False,
        max_steps=1,
        learning_rate=3e-4,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        use_vllm=True,
        vllm_dtype="float32",
        vllm_enforce_eager=True,  # start-up in seconds, not minutes
        vllm_max_model_length=256,  # one engine for the session: the same settings everywhere
        vllm_kv_cache_memory_bytes=256 * 2**20,
    )
    settings.update(overrides)
    from transformers import AutoTokenizer

    return CycleAlignTrainer(
        model,
        CycleAlignConfig(**settings),
        train_dataset=Dataset.from_dict({"prompt": [chat(p) for p in PROMPTS * 2]}),
        processing_class=AutoTokenizer.from_pretrained(path),
        ranker=ranker,
        peft_config=peft_config,
    )


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def prompts_of(tokenizer) -> list[list[int]]:
    return [chat_ids(tokenizer, p) for p in PROMPTS]


@engine
@pytest.mark.slow
def test_after_an_update_the_engine_samples_what_the_updated_model_samples(
    answering_model_dir, tmp_path
):
    model = AutoModelForCausalLM.from_pretrained(answering_model_dir)
    for param in model.model.layers[0].mlp.parameters():  # frozen: never sent after the first
        param.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(model, answering_model_dir, tmp_path, ByLength())
    tokenizer, eos = trainer.processing_class, trainer.eos_token_ids
    prompts = prompts_of(tokenizer)
    original = greedy_with_margins(trainer.model, prompts, 24, eos)

    trainer.train()  # two rounds, each updating; the second round sampled after a sync
    assert trainer.state.log_history[0]["cycle/updates"] == 2
    assert trainer.state.log_history[0]["time/weight_sync"] > 0
    assert trainer.vllm.stale  # the Trainer's own optimizer step came after the last round
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())

    trainer.vllm.sync()
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert 0 < trainer.vllm.last_sync_tensors == len(before) - len(frozen)
    updated = greedy_with_margins(trainer.model, prompts, 24, eos)
    assert min(margin for _, margin in original + updated) > GREEDY_MARGIN
    engine = trainer.vllm.greedy(prompts, 24)
    assert engine == [completion for completion, _ in updated]
    # The update changed what greedy decoding writes: the engine follows the new weights
    # (the tied LM head included), not the folder it loaded.
    assert engine != [completion for completion, _ in original]


@engine
@pytest.mark.slow
def test_stop_strings_and_length_limits_end_responses_as_transformers_does(
    answering_model_dir, tmp_path
):
    model = AutoModelForCausalLM.from_pretrained(answering_model_dir)
    # top_k=1 makes both engines greedy, so the candidates must be the same tensors.
    trainer = make_trainer(
        model,
        answering_model_dir,
        tmp_path,
        ByLength(),
        top_k=1,
        num_generations=2,
        max_completion_length=24,
        stop_strings=["capital", " five"],
    )
    batch = trainer.data_collator([{"prompt": chat(p)} for p in PROMPTS])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    eos = trainer.eos_token_ids
    greedy = greedy_with_margins(trainer.model, prompts_of(trainer.processing_class), 24, eos)
    assert min(margin for _, margin in greedy) > GREEDY_MARGIN

    trainer.vllm.sync()
    engine = trainer.vllm.sample(ids, mask, step=0)
    with torch.no_grad():
        reference = sample_candidates(
            trainer.model,
            ids,
            mask,
            num_generations=2,
            generation_config=trainer.generation_config,
            tokenizer=trainer.processing_class,
            eos_token_ids=trainer.eos_token_ids,
        )
    assert engine.texts == reference.texts
    assert engine.truncated == reference.truncated
    for name in ("completion_ids", "completion_mask", "candidate_mask", "prompt_ids"):
        assert torch.equal(getattr(engine, name), getattr(reference, name)), name
    # All three endings occur: an EOS, a stop string (cut, with an EOS scored), the limit.
    texts = [t for row in engine.texts for t in row]
    assert not any("capital" in t or " five" in t for t in texts)
    assert any(t.startswith("Paris is the") for t in texts) and "four" in texts
    assert any(cut for row in engine.truncated for cut in row)
    assert not all(cut for row in engine.truncated for cut in row)
    eos_scored = engine.completion_ids.masked_fill(~engine.completion_mask, -1) == eos[0]
    assert eos_scored.any(-1)[engine.candidate_mask].sum() == sum(
        not cut for row in engine.truncated for cut in row
    )


@engine
@pytest.mark.slow
def test_a_two_step_run_keeps_the_transformers_bookkeeping(answering_model_dir, tmp_path):
    logs = {}
    for use_vllm in (True, False):
        ranker = EchoWhitebox()
        trainer = make_trainer(
            AutoModelForCausalLM.from_pretrained(answering_model_dir),
            answering_model_dir,
            tmp_path / str(use_vllm),
            ranker,
            use_vllm=use_vllm,
            max_steps=2,
            temperature=2.0,  # distinct samples on both paths, whatever the seed (vLLM's maximum)
        )
        ranker.tap.attach(trainer)
        trainer.train()
        keys = ("cycle/rounds", "cycle/updates", "demos/pool_size", "ranker/requests")
        logs[use_vllm] = [
            {k: h[k] for k in keys} for h in trainer.state.log_history if "cycle/rounds" in h
        ]
    assert logs[True] == logs[False]
    assert [h["demos/pool_size"] for h in logs[True]] == [8, 16]  # 4 prompts x 2 rounds a step


@engine
def test_settings_vllm_refuses_fail_before_an_engine_is_built(answering_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(answering_model_dir)
    with pytest.raises(ValueError, match=r"vLLM refuses these sampling settings .*temperature"):
        make_trainer(model, answering_model_dir, tmp_path, ByLength(), temperature=3.0)


@engine
@pytest.mark.slow
def test_lora_after_an_update_the_engine_samples_what_the_adapted_model_samples(
    answering_model_dir, tmp_path
):
    from peft import LoraConfig

    model = AutoModelForCausalLM.from_pretrained(answering_model_dir)
    trainer = make_trainer(
        model,
        answering_model_dir,
        tmp_path,
        ByLength(),
        learning_rate=LORA_LR,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    tokenizer, eos = trainer.processing_class, trainer.eos_token_ids
    prompts = prompts_of(tokenizer)
    original = greedy_with_margins(trainer.model, prompts, 24, eos)
    trainer.train()
    assert trainer.state.log_history[0]["cycle/updates"] == 2

    trainer.vllm.sync()  # merges the adapter, sends the adapted layers, unmerges
    assert trainer.vllm.last_sync_tensors == 2 * 3  # two layers' q, k and v (fused)
    updated = greedy_with_margins(trainer.model, prompts, 24, eos)
    assert min(margin for _, margin in original + updated) > GREEDY_MARGIN
    engine = trainer.vllm.greedy(prompts, 24)
    assert engine == [completion for completion, _ in updated]
    assert engine != [completion for completion, _ in original]
