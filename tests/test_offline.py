"""Offline ranking training (the PRO and RRHF baselines) through the cycle's own code."""

from __future__ import annotations

import logging

import datasets
import pytest
import torch
from datasets import Dataset

from cyclealign import CycleAlignConfig, CycleAlignTrainer, OfflineRankingTrainer
from cyclealign.data import load_hh_rlhf
from cyclealign.rankers.base import BlackBoxRanker
from cyclealign.types import RankResult
from helpers import HH_DIR, build_tiny_model, build_tiny_tokenizer


def config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=1,
        max_completion_length=16,
        max_prompt_length=64,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    return CycleAlignConfig(**{**settings, **overrides})


def offline_trainer(tmp_path, rows, tokenizer=None, eval_rows=None, **overrides):
    tokenizer = tokenizer or build_tiny_tokenizer()
    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    return OfflineRankingTrainer(
        build_tiny_model(tokenizer, seed=0),
        config(tmp_path, **overrides),
        train_dataset=dataset,
        eval_dataset=dataset if eval_rows is None else eval_rows,
        processing_class=tokenizer,
    )


def first_log(trainer):
    return next(h for h in trainer.state.log_history if "loss" in h)


@pytest.mark.parametrize("loss", ["pro", "rrhf"])
def test_offline_training_on_hh_rlhf_lowers_the_loss(tmp_path, loss):
    data = load_hh_rlhf(
        HH_DIR, subsets=["helpful-base"], split="test", num_samples=4, format="ranked"
    )
    trainer = offline_trainer(
        tmp_path,
        data,
        ranking_loss=loss,
        max_steps=8,
        max_completion_length=24,
        per_device_eval_batch_size=4,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before
    logged = [h for h in trainer.state.log_history if "loss/rank" in h]
    assert len(logged) == 8
    assert all("cycle/rounds" not in h for h in logged)  # no rounds: plain ranking training


class ScriptedRanker(BlackBoxRanker):
    """Ranks every request worst-index-first and records what it was asked."""

    def __init__(self):
        self.requests = []

    def rank(self, requests):
        self.requests += list(requests)
        return [RankResult(list(range(len(r.responses)))[::-1]) for r in requests]


# What the white box "samples" for each prompt: a duplicate, and different candidate counts.
SAMPLES = {
    "How do I bake bread?": ["Mix flour and water.", "No.", "No."],
    "Tell me a joke.": ["Why did the chicken cross?", "hello world", "yes no maybe"],
}


def scripted_generate(tokenizer, max_completion_length):
    """``generate`` that returns SAMPLES (each ending with EOS, pad == EOS after it), so the
    cycle's real ``sample_candidates`` (EOS search, masks, de-duplication) runs on known text;
    a random tiny model would almost never stop by itself."""
    eos = tokenizer.eos_token_id

    def generate(input_ids, attention_mask, generation_config=None, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt_text = tokenizer.decode(ids[mask.bool()])
            prompt = next(p for p in SAMPLES if p in prompt_text)
            taken = sum(1 for r in rows if r[0] == prompt)
            rows.append((prompt, SAMPLES[prompt][taken]))
        completions = []
        for _, text in rows:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            # The offline path re-tokenizes the decoded text: it must give back these ids.
            assert tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids
            assert len(ids) < max_completion_length
            completions.append([*ids, eos])
        width = max(len(c) for c in completions)
        padded = torch.tensor([c + [eos] * (width - len(c)) for c in completions])
        return torch.cat([input_ids, padded], dim=1)

    return generate


@pytest.mark.parametrize("loss", ["pro", "rrhf"])
def test_cycle_round_log_trained_offline_gives_the_cycle_loss(tmp_path, loss):
    tokenizer = build_tiny_tokenizer()
    ranker = ScriptedRanker()
    model = build_tiny_model(tokenizer, seed=0)
    model.generate = scripted_generate(tokenizer, max_completion_length=24)
    cycle = CycleAlignTrainer(
        model,
        config(
            tmp_path / "cycle",
            ranking_loss=loss,
            num_generations=3,
            max_rounds=1,
            max_completion_length=24,
            use_better_response=False,
            round_log=True,
        ),
        train_dataset=Dataset.from_dict({"prompt": list(SAMPLES)}),
        processing_class=tokenizer,
        ranker=ranker,
    )
    cycle.train()
    assert sorted(len(r.responses) for r in ranker.requests) == [2, 3]  # "No." collapsed

    # The log, loaded as users would, is the offline trainer's dataset as it is.
    log = datasets.load_dataset(
        "json", data_files=str(tmp_path / "cycle" / "round_log.jsonl"), split="train"
    )
    offline = offline_trainer(
        tmp_path / "offline", log, tokenizer, ranking_loss=loss, max_completion_length=24
    )
    assert sorted(offline.train_dataset["prompt"]) == sorted(SAMPLES)
    recorded = {
        r.prompt: (list(r.responses), [1, 0] if len(r.responses) == 2 else [2, 1, 0])
        for r in ranker.requests
    }
    for row in offline.train_dataset:
        assert (row["responses"], row["ranking"]) == recorded[row["prompt"]]
    offline.train()
    for key in ("loss", "loss/rank", "loss/sft"):
        assert first_log(offline)[key] == pytest.approx(first_log(cycle)[key], rel=1e-5), key


class FailFirst(BlackBoxRanker):
    """Fails the first request of every batch, ranks the others in order."""

    def rank(self, requests):
        return [
            RankResult(None, error="scripted")
            if i == 0
            else RankResult(list(range(len(r.responses))))
            for i, r in enumerate(requests)
        ]


def test_round_log_rows_with_a_failed_ranking_are_dropped_and_counted(tmp_path, caplog):
    tokenizer = build_tiny_tokenizer()
    prompts = ["How do I bake bread?", "Tell me a joke.", "hello world", "red green blue"]
    cycle = CycleAlignTrainer(
        build_tiny_model(tokenizer),
        config(
            tmp_path / "cycle",
            max_steps=2,
            max_completion_length=6,
            round_log=True,
            num_generations=3,
            max_rounds=1,
        ),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        ranker=FailFirst(),
    )
    cycle.train()
    log = datasets.load_dataset(
        "json", data_files=str(tmp_path / "cycle" / "round_log.jsonl"), split="train"
    )
    assert len(log) == 4 and sum(1 for r in log["ranking"] if not r) == 2
    with caplog.at_level(logging.WARNING, logger="cyclealign.data"):
        offline = offline_trainer(tmp_path / "offline", log, tokenizer, max_steps=1)
    assert "dropped 2 of 4 rows" in caplog.text
    assert len(offline.train_dataset) == 2
    offline.train()
    assert offline.state.global_step == 1


def test_bad_rows_and_missing_columns_are_named(tmp_path):
    good = {"prompt": "p", "responses": ["a", "b"], "rewards": [1.0, 0.0]}
    with pytest.raises(ValueError, match="train_dataset row 1 has 1 response"):
        offline_trainer(tmp_path, [good, {**good, "responses": ["a"], "rewards": [1.0]}])
    with pytest.raises(ValueError, match="row 0 has 2 responses but 3 rewards"):
        offline_trainer(tmp_path, [{**good, "rewards": [1.0, 0.0, 2.0]}])
    with pytest.raises(ValueError, match=r"ranking must be a permutation.*duplicates \[0\]"):
        offline_trainer(tmp_path, [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}])
    # The evaluation set is checked too, before any training.
    with pytest.raises(ValueError, match="eval_dataset row 0 has 1 response"):
        offline_trainer(
            tmp_path, [good], eval_rows=Dataset.from_list([{**good, "responses": ["a"]}])
        )
    with pytest.raises(ValueError, match=r"trains on ranked data.*use CycleAlignTrainer"):
        offline_trainer(tmp_path, [{"prompt": "p"}])
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(ValueError, match="train_dataset is None"):
        OfflineRankingTrainer(
            build_tiny_model(tokenizer), config(tmp_path), processing_class=tokenizer
        )


def test_prompts_with_different_candidate_counts_share_a_batch(tmp_path):
    rows = [
        {
            "prompt": "How do I bake bread?",
            "responses": ["Mix flour.", "No."],
            "ranking": [0, 1],
            "rewards": None,  # a row may give either
        },
        {
            "prompt": "Tell me a joke.",
            "responses": ["Why did the chicken cross?", "no", "hello world"],
            "ranking": None,
            "rewards": [0.5, -1.0, 2.0],
        },
    ]
    trainer = offline_trainer(tmp_path, rows, max_completion_length=4)
    batch = trainer.data_collator(rows)
    assert batch["candidate_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["rewards"][0, :2].tolist() == [1.0, 0.0]  # ranking -> linear rewards
    assert batch["rewards"][1].tolist() == [0.5, -1.0, 2.0]
    eos = trainer.processing_class.eos_token_id
    tokens = batch["completion_ids"][0, 1][batch["completion_mask"][0, 1]].tolist()
    assert tokens[-1] == eos  # a finished answer ends with EOS
    cut = batch["completion_ids"][1, 0][batch["completion_mask"][1, 0]].tolist()
    assert len(cut) == 4 and eos not in cut  # cut at max_completion_length: did not end there
    trainer.train()
    assert trainer.state.global_step == 1
