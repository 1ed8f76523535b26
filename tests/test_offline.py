"""Offline ranking training (the PRO and RRHF baselines) through the cycle's own code."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

import cyclealign.trainer as trainer_module
from conftest import HH_DIR, build_tiny_model, build_tiny_tokenizer
from cyclealign import CycleAlignConfig, CycleAlignTrainer
from cyclealign.data import load_hh_rlhf
from cyclealign.generation import Candidates
from cyclealign.offline import load_round_log
from cyclealign.rankers.base import BlackBoxRanker, RankResult


def config(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=1,
        max_new_tokens=16,
        max_prompt_length=64,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    return CycleAlignConfig(**{**settings, **overrides})


def offline_trainer(tmp_path, rows, tokenizer=None, **overrides):
    tokenizer = tokenizer or build_tiny_tokenizer()
    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(rows)
    return CycleAlignTrainer(
        build_tiny_model(tokenizer, seed=0),
        config(tmp_path, **overrides),
        train_dataset=dataset,
        eval_dataset=dataset,
        processing_class=tokenizer,
        ranker=None,
    )


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
        max_new_tokens=24,
        per_device_eval_batch_size=4,
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before
    logged = [h for h in trainer.state.log_history if "loss/rank" in h]
    assert logged and all(h["cycle/offline"] == 1.0 for h in logged)


class FixedRanking(BlackBoxRanker):
    def __init__(self, ranking):
        self.ranking = ranking

    def rank(self, requests):
        return [RankResult(list(self.ranking)) for _ in requests]


@pytest.mark.parametrize("loss", ["pro", "rrhf"])
def test_offline_and_cycle_give_the_same_loss(tmp_path, monkeypatch, loss):
    row = {
        "prompt": "How do I bake bread?",
        "responses": ["Mix flour and water.", "No.", "Bake it at two hundred."],
        "ranking": [2, 0, 1],
    }
    tokenizer = build_tiny_tokenizer()
    offline = offline_trainer(
        tmp_path / "offline", [row], tokenizer, per_device_train_batch_size=1, ranking_loss=loss
    )
    offline.train()
    collated = offline.data_collator([row])

    def same_candidates(model, prompt_ids, prompt_mask, **kwargs):
        # The cycle "samples" exactly the offline row's responses.
        assert torch.equal(prompt_ids, collated["input_ids"])
        return Candidates(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=collated["completion_ids"],
            completion_mask=collated["completion_mask"],
            candidate_mask=collated["candidate_mask"],
            texts=[row["responses"]],
            truncated=[[False] * 3],
        )

    monkeypatch.setattr(trainer_module, "sample_candidates", same_candidates)
    cycle = CycleAlignTrainer(
        build_tiny_model(tokenizer, seed=0),
        config(
            tmp_path / "cycle",
            per_device_train_batch_size=1,
            ranking_loss=loss,
            max_rounds=1,
            use_better_response=False,
        ),
        train_dataset=Dataset.from_list([{"prompt": row["prompt"]}]),
        processing_class=tokenizer,
        ranker=FixedRanking(row["ranking"]),
    )
    cycle.train()
    first = next(h for h in offline.state.log_history if "loss" in h)
    second = next(h for h in cycle.state.log_history if "loss" in h)
    for key in ("loss", "loss/rank", "loss/sft"):
        assert second[key] == pytest.approx(first[key], rel=1e-6), key


class FailFirst(BlackBoxRanker):
    """Fails the first request of every batch, ranks the others in order."""

    def rank(self, requests):
        return [
            RankResult(None, error="scripted")
            if i == 0
            else RankResult(list(range(len(r.responses))))
            for i, r in enumerate(requests)
        ]


def test_round_log_is_ranked_data(tmp_path):
    tokenizer = build_tiny_tokenizer()
    prompts = ["How do I bake bread?", "Tell me a joke.", "hello world", "red green blue"]
    cycle = CycleAlignTrainer(
        build_tiny_model(tokenizer),
        config(
            tmp_path / "cycle",
            max_steps=2,
            max_new_tokens=6,
            round_log=True,
            num_responses=3,
            max_rounds=1,
        ),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        ranker=FailFirst(),
    )
    cycle.train()
    ranked = load_round_log(tmp_path / "cycle" / "round_log.jsonl")
    assert len(ranked) == 2  # 4 rows logged, the 2 failed ones dropped
    offline = offline_trainer(tmp_path / "offline", ranked, tokenizer, max_steps=1)
    offline.train()
    assert offline.state.global_step == 1


def test_bad_rows_and_missing_columns_are_named(tmp_path):
    good = {"prompt": "p", "responses": ["a", "b"], "rewards": [1.0, 0.0]}
    with pytest.raises(ValueError, match="row 1 has 1 response"):
        offline_trainer(tmp_path, [good, {**good, "responses": ["a"], "rewards": [1.0]}])
    with pytest.raises(ValueError, match="row 0 has 2 responses but 3 rewards"):
        offline_trainer(tmp_path, [{**good, "rewards": [1.0, 0.0, 2.0]}])
    with pytest.raises(ValueError, match="not a permutation"):
        offline_trainer(tmp_path, [{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 0]}])
    with pytest.raises(ValueError, match="needs either a ranker"):
        offline_trainer(tmp_path, [{"prompt": "p"}])


def test_extra_scored_candidates_join_the_ranked_rows(tmp_path, tiny_tokenizer):
    from conftest import build_tiny_reward_model
    from cyclealign.offline import add_candidates, sample_and_score
    from cyclealign.rankers import RewardModelRanker

    data = load_hh_rlhf(
        HH_DIR, subsets=["helpful-online"], split="test", num_samples=2, format="ranked"
    )
    scorer = RewardModelRanker(build_tiny_reward_model(tiny_tokenizer), tiny_tokenizer)
    samples, scores = sample_and_score(
        data,
        build_tiny_model(tiny_tokenizer),
        tiny_tokenizer,
        scorer.score,
        num_samples=2,
        max_new_tokens=5,
    )
    assert [len(s) for s in samples] == [2, 2] and [len(s) for s in scores] == [2, 2]
    assert scores[0] == pytest.approx(scorer.score([data[0]["prompt"]] * 2, samples[0]), abs=1e-5)
    extended = add_candidates(data, samples, scores)
    assert extended[0]["responses"] == [*data[0]["responses"], *samples[0]]
    assert extended[0]["rewards"] == pytest.approx([1.0, 0.0, *scores[0]])
    trainer = offline_trainer(tmp_path, extended, tiny_tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
    with pytest.raises(ValueError, match="one \\(possibly empty\\) list per row"):
        add_candidates(data, samples[:1], scores)
