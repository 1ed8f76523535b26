"""CycleAlignTrainer end to end on a tiny Llama with scripted black-box rankers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_dataset
from transformers import TrainerCallback

from cyclealign.config import CycleAlignConfig
from cyclealign.logprobs import completion_token_logps
from cyclealign.prompts import PromptCollator
from cyclealign.rankers.base import BlackBoxRanker
from cyclealign.trainer import CycleAlignTrainer
from cyclealign.types import RankResult
from helpers import PROMPTS as ALL_PROMPTS
from helpers import WhiteboxTap, build_tiny_model, build_tiny_tokenizer

PROMPTS = ALL_PROMPTS[:6]


def by_count(substring: str, sign: int = 1):
    """A ranking best-first by how often ``substring`` occurs (``sign=-1``: the fewer the better)."""

    def ranking(responses):
        return sorted(range(len(responses)), key=lambda i: -sign * responses[i].count(substring))

    return ranking


class CountRanker(BlackBoxRanker):
    """Prefers responses with more (or fewer) occurrences of a substring."""

    def __init__(self, substring="e", sign=1):
        self.order = by_count(substring, sign)
        self.requests = []

    def rank(self, requests):
        self.requests.extend(requests)
        self.usage.requests += len(requests)
        return [RankResult(self.order(r.responses)) for r in requests]


class UpdateCounter:
    """Counts optimizer steps that really changed a parameter, per global step."""

    def __init__(self, optimizer, params, trainer_ref):
        self.params, self.trainer_ref = list(params), trainer_ref
        self.per_step: dict[int, int] = {}
        optimizer.register_step_pre_hook(self._before)
        optimizer.register_step_post_hook(self._after)

    def _before(self, *_):
        self.snapshot = [p.detach().clone() for p in self.params]

    def _after(self, *_):
        if any(not torch.equal(a, p) for a, p in zip(self.snapshot, self.params)):
            step = self.trainer_ref[0].state.global_step
            self.per_step[step] = self.per_step.get(step, 0) + 1


def make_args(tmp_path, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        max_completion_length=6,
        num_generations=4,
        max_rounds=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return CycleAlignConfig(**kwargs)


def make_trainer(tmp_path, ranker, *, tokenizer=None, model=None, prompts=PROMPTS, **overrides):
    tokenizer = tokenizer or build_tiny_tokenizer()
    model = model if model is not None else build_tiny_model(tokenizer)
    return CycleAlignTrainer(
        model,
        make_args(tmp_path, **overrides),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        ranker=ranker,
    )


def logged(trainer, name):
    return [h[name] for h in trainer.state.log_history if name in h and "train_runtime" not in h]


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# -- learning ------------------------------------------------------------------------------


def _log_p_of_substring(model, tokenizer, substring):
    """Mean over prompts of log P(first response token contains ``substring``)."""
    token_set = [i for i in range(len(tokenizer)) if substring in tokenizer.decode([i])]
    batch = PromptCollator(tokenizer, 64)([{"prompt": p} for p in PROMPTS])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = logits[:, -1].log_softmax(-1)[:, token_set]
    return torch.logsumexp(logps, dim=-1).mean().item()


def test_learns_what_the_ranker_prefers(tmp_path):
    tokenizer = build_tiny_tokenizer()
    results = {}
    for sign in (1, -1):
        model = build_tiny_model(tokenizer, seed=0)
        before = _log_p_of_substring(model, tokenizer, "e")
        trainer = make_trainer(
            tmp_path / str(sign),
            CountRanker("e", sign),
            tokenizer=tokenizer,
            model=model,
            max_steps=10,
            learning_rate=3e-3,
        )
        trainer.train()
        results[sign] = (before, _log_p_of_substring(model, tokenizer, "e"))
    (before, preferred), (_, control) = results[1], results[-1]
    # Seeds 0-5 gave margins of 0.32-1.03 over the control; seed 0 is used here.
    assert preferred > before
    assert preferred > control + 0.2


# -- rounds and updates --------------------------------------------------------------------


class WhiteboxEcho(BlackBoxRanker):
    """Returns the reverse of the trainer's white-box ranking in the first ``disagree_rounds``
    rounds of a step, the white-box ranking itself afterwards.

    It waits for the trainer's forward pass to publish the white-box ranking, which only
    works if the trainer scores the candidates while the ranking is in flight.
    """

    def __init__(self, disagree_rounds):
        self.disagree_rounds = disagree_rounds
        self.tap = WhiteboxTap()
        self.round_in_step = 0
        self.calls = 0

    def attach(self, trainer):
        self.tap.attach(trainer)
        ranker = self

        class ResetRounds(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                ranker.round_in_step = 0

        trainer.add_callback(ResetRounds())

    def rank(self, requests):
        whitebox = self.tap.wait()
        self.calls += 1
        self.round_in_step += 1
        agree = self.round_in_step > self.disagree_rounds
        return [RankResult(list(w) if agree else list(reversed(w))) for w in whitebox]


def _counted_trainer(tmp_path, ranker, **overrides):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ref = []
    counter = UpdateCounter(optimizer, model.parameters(), ref)
    trainer = CycleAlignTrainer(
        model,
        make_args(tmp_path, **overrides),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        ranker=ranker,
        optimizers=(optimizer, None),
    )
    ref.append(trainer)
    return trainer, counter


def test_full_agreement_in_round_two_ends_the_step_after_two_updates(tmp_path):
    ranker = WhiteboxEcho(disagree_rounds=1)
    trainer, counter = _counted_trainer(tmp_path, ranker, max_rounds=5, max_steps=2)
    ranker.attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    assert ranker.calls == 4
    assert logged(trainer, "cycle/rounds") == [2, 2]
    assert logged(trainer, "agreement/full_rate") == [0.5, 0.5]  # round 1: 0, round 2: 1
    # Keyed by global_step before the Trainer's own step increments it: 2 updates per step.
    assert counter.per_step == {0: 2, 1: 2}


def test_without_agreement_every_round_updates_and_global_step_moves_once(tmp_path):
    ranker = WhiteboxEcho(disagree_rounds=99)
    trainer, counter = _counted_trainer(tmp_path, ranker, max_rounds=3, max_steps=2)
    ranker.attach(trainer)
    trainer.train()
    assert trainer.state.global_step == 2
    assert ranker.calls == 6
    assert logged(trainer, "cycle/rounds") == [3, 3]
    assert logged(trainer, "cycle/updates") == [3, 3]
    assert counter.per_step == {0: 3, 1: 3}


def test_stop_on_full_agreement_false_runs_every_round(tmp_path):
    ranker = WhiteboxEcho(disagree_rounds=0)
    trainer, counter = _counted_trainer(
        tmp_path, ranker, max_rounds=3, max_steps=1, stop_on_full_agreement=False
    )
    ranker.attach(trainer)
    trainer.train()
    assert logged(trainer, "cycle/rounds") == [3]
    assert logged(trainer, "agreement/full_rate") == [1.0]
    assert sum(counter.per_step.values()) == 3


# -- failures ------------------------------------------------------------------------------


class SwitchableRanker(CountRanker):
    def __init__(self):
        super().__init__("e")
        self.fail = False

    def rank(self, requests):
        if self.fail:
            return [RankResult(None, error="service unavailable") for _ in requests]
        return super().rank(requests)


def test_steps_without_any_usable_ranking_leave_weights_bitwise_identical(tmp_path):
    ranker = SwitchableRanker()
    trainer, counter = _counted_trainer(tmp_path, ranker, max_steps=4, max_rounds=2)
    snapshot = {}

    class FailAfterTwoSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                ranker.fail = True
                snapshot.update(params_of(trainer.model))

    trainer.add_callback(FailAfterTwoSteps())
    initial = params_of(trainer.model)
    trainer.train()
    assert trainer.state.global_step == 4
    # AdamW has momentum and weight decay > 0 from the first two steps ...
    assert any(not torch.equal(initial[n], snapshot[n]) for n in initial)
    assert len(trainer.optimizer.state) > 0
    # ... and yet nothing moved once no ranking could be used.
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, snapshot[name]), name
    assert logged(trainer, "cycle/updates")[2:] == [0, 0]
    assert logged(trainer, "ranker/failures")[2:] == [4, 4]  # 2 prompts x 2 rounds
    assert counter.per_step == {0: 2, 1: 2}  # the failing steps 2 and 3 changed nothing


class FlakyRanker(BlackBoxRanker):
    """Per request: 50% errors, 25% invalid permutations, 25% good; some calls raise or
    return the wrong number of results."""

    def __init__(self):
        self.calls = 0
        self.seen = 0
        self.bad = 0

    def rank(self, requests):
        self.calls += 1
        if self.calls % 5 == 0:
            self.bad += len(requests)
            raise RuntimeError("connection reset")
        if self.calls % 7 == 0:
            self.bad += len(requests)
            return [RankResult([0])]
        results = []
        for r in requests:
            kind = self.seen % 4
            self.seen += 1
            n = len(r.responses)
            if kind in (0, 1):
                self.bad += 1
                results.append(RankResult(None, error="rate limited", raw_text="429"))
            elif kind == 2:
                self.bad += 1
                results.append(RankResult([0] * (n + 1), raw_text="[0, 0, 0]"))
            else:
                results.append(RankResult(list(range(n)), raw_text=str(list(range(n)))))
        return results


def test_flaky_ranker_never_stops_training_and_failures_are_counted(tmp_path):
    ranker = FlakyRanker()
    trainer = make_trainer(tmp_path, ranker, max_steps=6, max_rounds=2, round_log=True)
    trainer.train()
    assert trainer.state.global_step == 6
    assert sum(logged(trainer, "ranker/failures")) == ranker.bad > 0
    # The round log holds failures and successes with the same column types.
    path = os.path.join(trainer.args.output_dir, "round_log.jsonl")
    rows = load_dataset("json", data_files=path, split="train")
    assert sum(1 for e in rows["error"] if e) == ranker.bad
    assert len(rows) == 2 * sum(logged(trainer, "cycle/rounds"))  # 2 prompts per round


def test_whitebox_failure_policy_still_trains(tmp_path):
    ranker = SwitchableRanker()
    ranker.fail = True
    trainer = make_trainer(tmp_path, ranker, max_steps=1, ranker_failure_policy="whitebox")
    before = params_of(trainer.model)
    trainer.train()
    assert logged(trainer, "cycle/updates") == [2]
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


# -- TRL reward functions as the ranker -------------------------------------------------------

THINK = "<think>a</think>b"


def _first_sample_thinks(model, tokenizer, num_generations):
    """Make the first of each prompt's samples ``THINK`` (then EOS), the rest as sampled."""
    eos = tokenizer.eos_token_id
    think = torch.tensor(tokenizer(THINK, add_special_tokens=False)["input_ids"] + [eos])
    sample = model.generate

    def generate(input_ids, attention_mask, generation_config):
        out = sample(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
        )
        start = input_ids.shape[1]
        out = torch.nn.functional.pad(
            out, (0, max(0, start + len(think) - out.shape[1])), value=eos
        )
        out[::num_generations, start:] = eos
        out[::num_generations, start : start + len(think)] = think
        return out

    model.generate = generate


def test_think_format_reward_ranks_the_thinking_candidate_first(tmp_path):
    from trl.rewards import think_format_reward

    from cyclealign.rankers import FunctionRanker

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    _first_sample_thinks(model, tokenizer, num_generations=4)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    ranker = FunctionRanker(think_format_reward)
    trainer = make_trainer(
        tmp_path, ranker, tokenizer=tokenizer, model=model, prompts=chats, round_log=True
    )
    trainer.train()
    log = Path(trainer.args.output_dir, "round_log.jsonl").read_text()
    rows = [json.loads(line) for line in log.splitlines()]
    assert rows and all(r["responses"][0] == THINK for r in rows)
    assert all(r["ranking"][0] == 0 and r["scores"][0] == 1.0 for r in rows)
    assert all(s == 0.0 for r in rows for s in r["scores"][1:])
    assert sum(logged(trainer, "cycle/updates")) >= 1


def test_a_reward_function_receives_dataset_columns_and_the_trainer_state(tmp_path):
    from cyclealign.rankers import FunctionRanker

    seen = []

    def reward(prompts, completions, completion_ids, solution, trainer_state, **kwargs):
        seen.append((list(zip(prompts, solution)), trainer_state, completion_ids, completions))
        return [float(len(c)) for c in completions]

    tokenizer = build_tiny_tokenizer()
    prompts = PROMPTS[:4]
    trainer = CycleAlignTrainer(
        build_tiny_model(tokenizer),
        make_args(tmp_path, max_steps=1),
        train_dataset=Dataset.from_dict({"prompt": prompts, "solution": ["s0", "s1", "s2", "s3"]}),
        processing_class=tokenizer,
        ranker=FunctionRanker(reward),
    )
    trainer.train()
    assert seen
    for pairs, state, ids, completions in seen:
        assert all(solution == f"s{prompts.index(p)}" for p, solution in pairs)
        assert state is trainer.state
        for token_ids, text in zip(ids, completions):
            assert tokenizer.decode(token_ids, skip_special_tokens=True) == text


def test_a_reward_function_that_raises_stops_training_with_its_traceback(tmp_path):
    import traceback

    from cyclealign.rankers import FunctionRanker

    def broken_reward(completions, **kwargs):
        return [len(c) / 0 for c in completions]

    trainer = make_trainer(tmp_path, FunctionRanker(broken_reward), max_steps=2)
    with pytest.raises(ZeroDivisionError) as info:
        trainer.train()
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "broken_reward" in frames and "training_step" in frames
    assert trainer.state.global_step == 0


# -- round log, evaluation ------------------------------------------------------------------


def test_round_log_loads_with_datasets_as_ranked_data(tmp_path):
    trainer = make_trainer(tmp_path, CountRanker("e"), max_steps=2, max_rounds=2, round_log=True)
    trainer.train()
    rows = load_dataset(
        "json", data_files=os.path.join(trainer.args.output_dir, "round_log.jsonl"), split="train"
    )
    rounds = logged(trainer, "cycle/rounds")
    assert len(rows) == 2 * sum(rounds)
    assert {"prompt", "responses", "ranking", "whitebox_ranking", "agreement", "raw_text"} <= set(
        rows.column_names
    )
    assert sorted(set(rows["step"])) == [0, 1]
    for row in rows:
        assert row["prompt"] in PROMPTS
        assert sorted(row["ranking"]) == list(range(len(row["responses"])))
        assert sorted(row["whitebox_ranking"]) == list(range(len(row["responses"])))
        assert row["ranking"] == by_count("e")(row["responses"])


def test_evaluate_reports_agreement_and_loss_without_updating(tmp_path):
    trainer = make_trainer(
        tmp_path, CountRanker("e"), per_device_eval_batch_size=3, scoring_batch_size=5
    )
    trainer.eval_dataset = Dataset.from_dict({"prompt": PROMPTS})
    before, pool_before = params_of(trainer.model), len(trainer.pool)
    metrics = trainer.evaluate()
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, before[name])
    assert len(trainer.pool) == pool_before
    assert metrics["eval_ranker/requests"] == len(PROMPTS)
    assert 1 <= metrics["eval_agreement/length"] <= 4
    assert 0 <= metrics["eval_agreement/full_rate"] <= 1
    assert -1 <= metrics["eval_agreement/kendall_tau"] <= 1
    assert torch.isfinite(torch.tensor(metrics["eval_loss"])) and metrics["eval_loss"] > 0


# -- checkpoint and resume -------------------------------------------------------------------


class CachedRanker(BlackBoxRanker):
    """Pays for a request only the first time its exact content (demonstrations included)
    is seen; the cache outlives the ranker, like an on-disk cache."""

    def __init__(self, cache):
        self.cache = cache
        self.paid = 0
        self.order = by_count("e")

    def rank(self, requests):
        results = []
        for r in requests:
            key = json.dumps([r.prompt, list(r.responses), [d.to_dict() for d in r.demonstrations]])
            if key in self.cache:
                self.usage.cache_hits += 1
            else:
                self.paid += 1
                self.usage.requests += 1
                self.cache[key] = self.order(r.responses)
            results.append(RankResult(list(self.cache[key])))
        return results


def test_resume_restores_pool_and_usage_and_pays_nothing_twice(tmp_path):
    cache = {}
    tokenizer = build_tiny_tokenizer()
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, max_rounds=2)
    first = make_trainer(tmp_path, CachedRanker(cache), tokenizer=tokenizer, **common)
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    with open(os.path.join(checkpoint, "cyclealign_state.json")) as handle:
        saved = json.load(handle)
    assert saved["rankers"][0]["usage"]["requests"] > 0
    assert "api_key" not in json.dumps(saved)

    resumed_ranker = CachedRanker(cache)
    resumed = make_trainer(tmp_path, resumed_ranker, tokenizer=tokenizer, **common)
    resumed.train(resume_from_checkpoint=checkpoint)
    saved_requests = saved["rankers"][0]["usage"]["requests"]
    assert resumed_ranker.paid == 0
    # Usage restored from the checkpoint; steps 3-4 were answered from the cache.
    assert resumed_ranker.usage.requests == saved_requests
    assert resumed_ranker.usage.cache_hits == first.ranker.usage.requests - saved_requests > 0
    assert resumed.pool.state_dict() == first.pool.state_dict()
    for (name, a), b in zip(first.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), name


# -- models, tokenizers, prompts -------------------------------------------------------------


def test_peft_lora_trains_only_the_adapter_and_saves_it(tmp_path):
    peft = pytest.importorskip("peft")
    tokenizer = build_tiny_tokenizer()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = CycleAlignTrainer(
        build_tiny_model(tokenizer),
        make_args(tmp_path, learning_rate=1e-2),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        ranker=CountRanker("e"),
        peft_config=config,
    )
    before = params_of(trainer.model)
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    trainer.save_model(str(tmp_path / "adapter"))
    files = set(os.listdir(tmp_path / "adapter"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files


def test_same_seed_same_lora_weights_whatever_the_rng_state(tmp_path):
    import random

    import numpy as np
    import peft

    tokenizer = build_tiny_tokenizer()
    adapters = []
    for disturbance in (1, 2):
        model = build_tiny_model(tokenizer)  # seeds torch itself: disturb the state after it
        torch.manual_seed(1000 + disturbance)  # a different global RNG state each time
        random.seed(disturbance)
        np.random.seed(disturbance)
        torch.randn(disturbance * 7)
        trainer = CycleAlignTrainer(
            model,
            make_args(tmp_path / str(disturbance), seed=3),
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=tokenizer,
            ranker=CountRanker("e"),
            # init_lora_weights=False draws lora_B at random too, so both matrices are compared
            peft_config=peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False),
        )
        adapters.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()
                         if "lora_" in n})  # fmt: skip
    first, second = adapters
    assert first and first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_model_path_and_chat_message_prompts(tmp_path, tiny_model_dir):
    ranker = CountRanker("e")
    messages = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    trainer = CycleAlignTrainer(
        str(tiny_model_dir),
        make_args(tmp_path, max_steps=1, model_init_kwargs='{"dtype": "float32"}'),
        train_dataset=Dataset.from_dict({"prompt": messages}),
        ranker=ranker,
    )
    assert trainer.model.dtype == torch.float32
    trainer.train()
    assert trainer.state.global_step == 1
    assert ranker.requests and all(r.prompt in messages for r in ranker.requests)


def test_tokenizer_without_chat_template_uses_human_assistant_format(tmp_path):
    tokenizer = build_tiny_tokenizer(chat_template=False, pad_is_eos=False)
    ranker = CountRanker("e")
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    trainer = make_trainer(tmp_path, ranker, tokenizer=tokenizer, prompts=chats, max_steps=1)
    batch = trainer.data_collator([{"prompt": [{"role": "user", "content": "Tell me a joke."}]}])
    assert tokenizer.decode(batch["input_ids"][0]) == "\n\nHuman: Tell me a joke.\n\nAssistant:"
    raw = "\n\nHuman: hi\n\nAssistant:"  # a string is raw text, as in TRL
    assert tokenizer.decode(trainer.data_collator([{"prompt": raw}])["input_ids"][0]) == raw
    trainer.train()
    assert trainer.state.global_step == 1 and ranker.requests


class BetterResponseRanker(CountRanker):
    def __init__(self, better):
        super().__init__("e")
        self.better = better

    def rank(self, requests):
        return [RankResult(r.ranking, better_response=self.better) for r in super().rank(requests)]


def record_loss_calls(trainer):
    """Every call of the trainer's ranking loss: (positional inputs, keyword inputs, output)."""
    calls = []
    forward = trainer.loss_fn.forward

    def recording(*args, **kwargs):
        out = forward(*args, **kwargs)
        calls.append((args, kwargs, out))
        return out

    trainer.loss_fn.forward = recording
    return calls


@pytest.mark.parametrize("mode", ["sft_target", "candidate"])
def test_better_response_is_learned(tmp_path, mode):
    better = "Paris is the capital of France."
    tokenizer = build_tiny_tokenizer()
    trainer = make_trainer(
        tmp_path,
        BetterResponseRanker(better),
        tokenizer=tokenizer,
        max_steps=3,
        better_response_as=mode,
    )

    def better_logp():
        batch = trainer.data_collator([{"prompt": p} for p in PROMPTS[:2]])
        ids = tokenizer(better, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        completion = torch.tensor([ids, ids])
        with torch.no_grad():
            logps, mask = completion_token_logps(
                trainer.model,
                batch["input_ids"],
                batch["attention_mask"],
                completion,
                torch.ones_like(completion, dtype=torch.bool),
            )
        return (logps * mask).sum().item()

    before = better_logp()
    trainer.train()
    assert logged(trainer, "ranker/better_responses") == [4, 4, 4]  # 2 prompts x 2 rounds
    assert better_logp() > before + 5


def test_better_response_is_the_sft_target_and_not_ranked_by_default(tmp_path):
    better = "Paris is the capital of France."
    trainer = make_trainer(
        tmp_path, BetterResponseRanker(better), max_steps=1, max_rounds=1, max_completion_length=32
    )
    assert trainer.args.better_response_as == "sft_target"
    calls = record_loss_calls(trainer)
    trainer.train()
    ((args, kwargs, out),) = calls
    logps, _, rewards, candidate_mask = args
    # The ranking term sees the 4 sampled candidates only (no fifth column) ...
    assert logps.shape[1] == rewards.shape[1] == 4
    assert candidate_mask.any(dim=1).all()
    # ... the SFT term the better response: its tokens and an EOS, on every prompt.
    tokenizer = trainer.processing_class
    ids = tokenizer(better, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert kwargs["sft_token_mask"].sum(-1).tolist() == [len(ids)] * 2
    sft = -(kwargs["sft_token_logps"] * kwargs["sft_token_mask"]).sum(-1).mean()
    torch.testing.assert_close(out.sft_loss, sft.to(out.sft_loss.dtype))
    # PRO's SFT weight counts the k = 4 sampled candidates (all distinct here): 0.05 * 3^2.
    assert candidate_mask.sum(-1).tolist() == [4, 4]
    torch.testing.assert_close(out.sft_coefficient, torch.tensor([0.45, 0.45]))


def test_better_response_as_candidate_keeps_the_top_candidate(tmp_path):
    trainer = make_trainer(
        tmp_path,
        BetterResponseRanker("Paris."),
        max_steps=1,
        max_rounds=1,
        better_response_as="candidate",
    )
    calls = record_loss_calls(trainer)
    trainer.train()
    ((args, kwargs, out),) = calls
    logps, _, rewards, candidate_mask = args
    assert kwargs == {} and logps.shape[1] == 5  # a fifth candidate column ...
    assert candidate_mask[:, 4].all()
    top = rewards[:, 4]
    assert bool((top[:, None] > torch.where(candidate_mask[:, :4], rewards[:, :4], -1e9)).all())
    # ... ranked above all, and counted by PRO's SFT weight: 0.05 * (real candidates - 1)^2.
    real = candidate_mask.sum(-1).to(out.sft_coefficient.dtype)
    torch.testing.assert_close(out.sft_coefficient, 0.05 * (real - 1) ** 2)


class ShiftingRanker(BlackBoxRanker):
    """Ranks by how often "e" occurs, then the reverse, round after round: the rounds differ."""

    def __init__(self):
        self.calls = 0

    def rank(self, requests):
        self.calls += 1
        sign = 1 if self.calls % 2 else -1
        return [RankResult(by_count("e", sign)(r.responses)) for r in requests]


def test_logged_loss_is_the_mean_of_the_rounds_that_updated(tmp_path):
    trainer = make_trainer(
        tmp_path, ShiftingRanker(), max_steps=2, max_rounds=3, stop_on_full_agreement=False
    )
    calls = record_loss_calls(trainer)
    trainer.train()
    losses = [float(out.loss) for *_, out in calls]
    assert len(losses) == 6 and len(set(losses)) == 6  # the rounds differ
    expected = [sum(losses[:3]) / 3, sum(losses[3:]) / 3]
    assert logged(trainer, "loss") == pytest.approx(expected, rel=1e-6)
    assert logged(trainer, "loss") != pytest.approx([losses[2], losses[5]], rel=1e-6)


def test_use_better_response_false_ignores_it(tmp_path):
    trainer = make_trainer(
        tmp_path, BetterResponseRanker("yes"), max_steps=1, use_better_response=False
    )
    trainer.train()
    assert logged(trainer, "ranker/better_responses") == [0]


def test_dynamic_demonstrations_reach_the_ranker_and_can_be_switched_off(tmp_path):
    on = CountRanker("e")
    make_trainer(tmp_path / "on", on, max_steps=2).train()
    assert any(r.demonstrations for r in on.requests)
    off = CountRanker("e")
    trainer = make_trainer(tmp_path / "off", off, max_steps=2, use_dynamic_demonstrations=False)
    trainer.train()
    assert not any(r.demonstrations for r in off.requests)
    assert len(trainer.pool) == 0
    assert logged(trainer, "ablation/dynamic_demonstrations") == [0, 0]


def test_completion_and_phase_metrics_are_logged_each_step(tmp_path):
    # max_completion_length=2: most responses are cut (no EOS), a few end at once.
    trainer = make_trainer(tmp_path, CountRanker(), max_completion_length=2, max_rounds=2)
    trainer.train()
    lengths = logged(trainer, "completions/mean_length")
    clipped = logged(trainer, "completions/clipped_ratio")
    assert len(lengths) == len(clipped) == 2
    assert all(1 <= n <= 2 for n in lengths) and all(0 <= r <= 1 for r in clipped)
    for phase in ("generate", "forward", "rank_wait", "backward"):
        times = logged(trainer, f"time/{phase}")
        assert len(times) == 2 and all(t >= 0 for t in times), phase
    assert all(t > 0 for t in logged(trainer, "time/generate"))


def test_trainer_refuses_gradient_accumulation_and_a_missing_ranker(tmp_path):
    args = make_args(tmp_path)
    args.gradient_accumulation_steps = 2
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        CycleAlignTrainer(
            build_tiny_model(tokenizer), args, processing_class=tokenizer, ranker=CountRanker()
        )
    # No ranker: the error names the trainer for ranked data.
    with pytest.raises(ValueError, match=r"needs a ranker.*use cyclealign.OfflineRankingTrainer"):
        CycleAlignTrainer(
            build_tiny_model(tokenizer), make_args(tmp_path), processing_class=tokenizer
        )
    with pytest.raises(TypeError, match="BlackBoxRanker"):
        CycleAlignTrainer(
            build_tiny_model(tokenizer),
            make_args(tmp_path),
            processing_class=tokenizer,
            ranker=lambda requests: None,
        )


@pytest.mark.parametrize("peft", [False, True])
def test_gradient_checkpointing_works_with_the_cycle(tmp_path, peft):
    import math

    from peft import LoraConfig

    trainer = make_trainer(tmp_path, CountRanker(), gradient_checkpointing=True)
    if peft:
        trainer = CycleAlignTrainer(
            build_tiny_model(trainer.processing_class),
            make_args(tmp_path, gradient_checkpointing=True),
            train_dataset=trainer.train_dataset,
            processing_class=trainer.processing_class,
            ranker=CountRanker(),
            peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),
        )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.model.is_gradient_checkpointing
    assert logged(trainer, "cycle/updates") == [2.0, 2.0]
    assert all(math.isfinite(v) for v in logged(trainer, "loss/rank"))
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and (not peft or all("lora_" in n for n in changed))


@pytest.mark.parametrize("disable", [True, False])
def test_dropout_is_disabled_unless_asked_to_keep_it(tmp_path, disable):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, attention_dropout=0.25)
    trainer = make_trainer(
        tmp_path, CountRanker(), tokenizer=tokenizer, model=model, disable_dropout=disable
    )
    rates = {layer.self_attn.attention_dropout for layer in trainer.model.model.layers}
    assert rates == ({0.0} if disable else {0.25})


class PartlyAgrees(WhiteboxEcho):
    """The white-box ranking with its last two swapped: the agreement is all but one."""

    def __init__(self):
        super().__init__(disagree_rounds=0)
        self.requests = []

    def rank(self, requests):
        self.requests.extend(requests)
        whitebox = self.tap.wait()
        return [RankResult(w[:-2] + w[-2:][::-1]) for w in whitebox]


def test_demonstrations_grow_round_by_round_at_the_defaults(tmp_path):
    ranker = PartlyAgrees()
    trainer = make_trainer(
        tmp_path,
        ranker,
        max_steps=1,
        max_rounds=5,
        per_device_train_batch_size=1,
        stop_on_full_agreement=False,
        max_completion_length=8,
    )
    args = trainer.args
    assert args.max_demonstrations is None and args.demonstration_max_tokens == 4096
    ranker.attach(trainer)
    trainer.train()
    assert all(len(r.responses) >= 3 for r in ranker.requests)  # so each round adds one
    # Each round's agreement on this prompt joins the next requests, the newest last.
    assert [len(r.demonstrations) for r in ranker.requests] == [0, 1, 2, 3, 4]
    for earlier, later in zip(ranker.requests, ranker.requests[1:]):
        assert later.demonstrations[:-1] == earlier.demonstrations
        assert later.demonstrations[-1].prompt == earlier.prompt
    assert logged(trainer, "demos/per_request") == [2.0]  # (0 + 1 + 2 + 3 + 4) / 5
    # The budget bounds them: with room for about two, every request stays within it.
    tokens = [ranker.demonstration_tokens(d) for d in ranker.requests[-1].demonstrations]
    budget = max(tokens) * 2
    small = PartlyAgrees()
    capped = make_trainer(
        tmp_path / "capped",
        small,
        max_steps=1,
        max_rounds=5,
        per_device_train_batch_size=1,
        stop_on_full_agreement=False,
        max_completion_length=8,
        demonstration_max_tokens=budget,
    )
    small.attach(capped)
    capped.train()
    counts = [len(r.demonstrations) for r in small.requests]
    assert counts[:3] == [0, 1, 2] and counts[-1] < 4
    for request in small.requests:
        assert sum(small.demonstration_tokens(d) for d in request.demonstrations) <= budget
