"""What both trainers share: precision that learns, and a learning-rate schedule the
DeepSpeed engine cannot take over (the multi-process runs are in test_multiprocess.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset

from cyclealign.config import CycleAlignConfig
from cyclealign.trainer import CycleAlignTrainer
from cyclealign.trainer.base import check_deepspeed_schedule
from helpers import PROMPTS
from test_trainer import CountRanker

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "configs" / "zero3_full.yaml"  # the CycleAlign-PRO run


def precision_fields(config: Path) -> dict:
    """What a shipped config says about precision and the learning rate."""
    fields = yaml.safe_load(config.read_text())
    return {k: fields[k] for k in ("model_init_kwargs", "bf16", "learning_rate") if k in fields}


def train_from_path(tmp_path, model_dir, **fields):
    args = CycleAlignConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=5,
        per_device_train_batch_size=2,
        num_generations=4,
        max_completion_length=16,
        max_rounds=2,
        lr_scheduler_type="constant",
        use_cpu=True,  # bf16=True needs it on a machine without an accelerator
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        **fields,
    )
    trainer = CycleAlignTrainer(
        str(model_dir),
        args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        ranker=CountRanker("e"),
    )
    before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = total = 0
    for name, param in trainer.model.named_parameters():
        changed += int((param.detach().float() != before[name]).sum())
        total += param.numel()
    return trainer, changed / total


def test_the_shipped_recipe_learns_at_the_papers_learning_rate(tmp_path, tiny_model_dir, caplog):
    fields = precision_fields(RECIPE)
    # fp32 weights (no dtype), bf16 autocast, the paper's learning rate.
    assert "dtype" not in (fields.get("model_init_kwargs") or {})
    assert fields["bf16"] is True and fields["learning_rate"] == 5e-7
    with caplog.at_level(logging.WARNING, logger="cyclealign.trainer.base"):
        trainer, changed = train_from_path(tmp_path, tiny_model_dir, **fields)
    assert trainer.model.dtype == torch.float32 and trainer.args.bf16
    assert "rounded away" not in caplog.text
    assert changed >= 0.99, changed


def test_pure_bf16_weights_get_a_warning_that_names_the_fix(tmp_path, tiny_model_dir, caplog):
    fields = {**precision_fields(RECIPE), "model_init_kwargs": {"dtype": "bfloat16"}}
    with caplog.at_level(logging.WARNING, logger="cyclealign.trainer.base"):
        trainer, changed = train_from_path(tmp_path, tiny_model_dir, **fields)
    assert trainer.model.dtype == torch.bfloat16
    assert caplog.text.count("rounded away") == 1  # once, at start
    assert 'drop "dtype" from model_init_kwargs' in caplog.text and "bf16=True" in caplog.text
    assert changed < 0.2, changed  # what the warning is about: most updates vanished


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"scheduler": {"type": "WarmupLR"}}, "'scheduler' section"),
        ({"optimizer": {"type": "AdamW"}}, "'optimizer' section"),
        ({"optimizer": {}, "scheduler": {}}, "'scheduler' and 'optimizer' sections"),
    ],
)
def test_a_deepspeed_config_that_would_own_the_schedule_is_refused(config, named):
    with pytest.raises(ValueError, match=named) as info:
        check_deepspeed_schedule({"zero_optimization": {"stage": 2}, **config})
    assert "Remove the" in str(info.value) and "once per step" in str(info.value)
    check_deepspeed_schedule({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}})
