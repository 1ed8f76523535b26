"""cyclealign.trainer.fsdp in one process: what is refused and why, the optimizer state
created before an FSDP1 resume, and FSDP asked for where accelerate cannot run it.

The real FSDP runs (2 processes, FSDP2 and FSDP1, against DDP; kill and resume; LoRA; one
process) are in ``test_multiprocess.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch
from accelerate import PartialState
from datasets import Dataset

from cyclealign import CycleAlignConfig, CycleAlignTrainer
from cyclealign.rankers.local import FunctionRanker
from cyclealign.trainer.fsdp import (
    check_processes_joined,
    cpu_fsdp_plugin,
    init_optimizer_state,
)
from helpers import PROMPTS, build_tiny_model, build_tiny_tokenizer


@pytest.fixture
def launcher_env(monkeypatch):
    """What ``accelerate launch`` with an FSDP config sets; undone after the test (building
    a plugin writes one variable too)."""

    def set_env(**variables):
        monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
        for name, value in variables.items():
            monkeypatch.setenv(f"FSDP_{name.upper()}", value)

    return set_env


def test_fsdp1_full_state_dict_is_refused_on_cpus(launcher_env):
    launcher_env()
    with pytest.raises(ValueError, match=r"SHARDED_STATE_DICT.*or use FSDP2"):
        cpu_fsdp_plugin({"fsdp_version": 1, "state_dict_type": "FULL_STATE_DICT"})
    # What works there: FSDP1 sharded, FSDP2 either way.
    plugin = cpu_fsdp_plugin({"fsdp_version": 1, "state_dict_type": "SHARDED_STATE_DICT"})
    assert plugin.fsdp_version == 1
    for kind in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):
        assert cpu_fsdp_plugin({"fsdp_version": 2, "state_dict_type": kind}).fsdp_version == 2


def test_fsdp1_module_state_sync_is_refused_on_cpus_with_the_settings_to_use(launcher_env):
    # The launcher's default for FSDP1 is sync_module_states true, which looks for a GPU.
    launcher_env(version="1", sync_module_states="true", state_dict_type="SHARDED_STATE_DICT")
    with pytest.raises(ValueError, match="fsdp_sync_module_states: false") as error:
        cpu_fsdp_plugin(None)
    assert "no available devices" in str(error.value)  # accelerate's own words, kept
    launcher_env(version="2", sync_module_states="true")  # obsolete in FSDP2: fine
    assert cpu_fsdp_plugin(None).fsdp_version == 2


def test_processes_that_never_joined_are_refused():
    with pytest.raises(RuntimeError, match=r"started 2 processes.*ACCELERATE_USE_CPU=1"):
        check_processes_joined(2, 1)
    check_processes_joined(2, 2)


def test_optimizer_state_is_created_without_changing_a_parameter():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": list(layer.parameters()), "lr": 0.1}, {"params": [frozen], "lr": 0.2}],
        weight_decay=0.5,  # decoupled decay would shrink the weights at any lr > 0
    )
    init_optimizer_state(optimizer)
    for param, old in zip(layer.parameters(), before):
        assert torch.equal(param, old) and param.grad is None
        state = optimizer.state[param]
        # One step of Adam on a zero gradient: both moments are exactly zero.
        assert float(state["step"]) == 1.0
        assert torch.equal(state["exp_avg"], torch.zeros_like(param))
        assert torch.equal(state["exp_avg_sq"], torch.zeros_like(param))
    assert frozen not in optimizer.state and frozen.grad is None
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.2]

    # An optimizer that already has state (a stepped one) is left alone.
    snapshot = {k: v.clone() for k, v in optimizer.state[layer.weight].items()}
    init_optimizer_state(optimizer)
    assert all(torch.equal(v, optimizer.state[layer.weight][k]) for k, v in snapshot.items())


def build_trainer(tmp_path):
    tokenizer = build_tiny_tokenizer()
    args = CycleAlignConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    return CycleAlignTrainer(
        build_tiny_model(tokenizer),
        args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS[:2]}),
        processing_class=tokenizer,
        ranker=FunctionRanker(lambda prompts, completions, **_: [len(c) for c in completions]),
    )


def test_fsdp_asked_for_where_accelerate_has_no_distributed_setup(tmp_path, monkeypatch, caplog):
    PartialState()  # this process's state exists before the launcher's variables appear
    # What `accelerate launch --config_file fsdp2_cpu.yaml` sets, without ACCELERATE_USE_CPU=1.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with caplog.at_level(logging.WARNING, logger="cyclealign.trainer.fsdp"):
        trainer = build_trainer(tmp_path)  # one process: it trains, unsharded, and says so
    assert not trainer.is_fsdp_enabled
    assert "not sharded" in caplog.text and "ACCELERATE_USE_CPU=1" in caplog.text
    # Two processes started, each on its own: each would train its own copy.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="started 2 processes, but this one sees 1"):
        build_trainer(tmp_path)
