"""Train the tiny test model for a few steps on however many processes launched us, in the
settings ``tests/multiprocess/train_tiny.py`` does not cover: activation checkpointing, a
first step where no process has a usable ranking, DeepSpeed over two processes, a SIGKILL
between two checkpoints.

Each process writes ``<out>/rank<i>.json`` (parameter checksums, pool, prompts, log history)
for ``tests/test_distributed.py`` to compare across processes and runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "multiprocess")]

from train_tiny import PROMPTS, PreferE, checksum, tensor_sums  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from conftest import build_tiny_model, build_tiny_tokenizer  # noqa: E402
from cyclealign import CycleAlignConfig, CycleAlignTrainer  # noqa: E402
from cyclealign.rankers.base import RankResult  # noqa: E402


class FailsFirstStep(PreferE):
    """Fails every request of the first training step on every process, then ranks: the
    rounds of step 1 run a forward pass with no backward anywhere."""

    def __init__(self):
        super().__init__()
        self.trainer = None

    def rank(self, requests):
        results = super().rank(requests)
        if self.trainer.state.global_step == 0:
            return [RankResult(None, error="scripted outage") for _ in requests]
        return results


class LayerProbe:
    """Records, per call of the first decoder layer, whether it ran without gradients
    (generation), its checkpointing flag and its sequence length (1 = KV cache in use)."""

    def __init__(self, layer):
        self.calls: list[tuple[bool, bool, int]] = []
        self.layer = layer
        layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        import torch

        hidden = args[0] if args else kwargs["hidden_states"]
        self.calls.append(
            (not torch.is_grad_enabled(), bool(module.gradient_checkpointing), hidden.shape[1])
        )


class KillAtStep(TrainerCallback):
    """SIGKILL (no cleanup, like a lost machine) when a given step ends."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenario", default="prefer", choices=["prefer", "fail_first_step"])
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--checkpoint_every_n_layers", type=int, default=1)
    parser.add_argument("--peft", action="store_true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max_rounds", type=int, default=2)
    parser.add_argument("--ddp_backend", default=None)
    parser.add_argument("--ranker_url", default=None, help="rank through OpenAIRanker here")
    parser.add_argument("--cache", default=None, help="the OpenAIRanker's SQLite cache")
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--kill_at_step", type=int, default=0, help="SIGKILL when it ends")
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, seed=0)  # the same initial weights on every process
    initial, initial_tensors = checksum(model), tensor_sums(model)
    checkpointing_kwargs = None
    if cli.checkpoint_every_n_layers > 1:  # transformers' own key, not torch.utils.checkpoint's
        checkpointing_kwargs = {"every_n_layers": cli.checkpoint_every_n_layers}
    args = CycleAlignConfig(
        output_dir=cli.out,
        per_device_train_batch_size=2,
        max_steps=cli.steps,
        num_responses=3,
        max_new_tokens=6,
        max_rounds=cli.max_rounds,
        use_better_response=False,
        learning_rate=1e-3,
        save_strategy="steps" if cli.save_steps else "no",
        save_steps=cli.save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        ddp_backend=cli.ddp_backend,
        gradient_checkpointing=cli.gradient_checkpointing,
        activation_checkpointing_kwargs=checkpointing_kwargs,
    )
    from datasets import Dataset

    peft_config = None
    if cli.peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    ranker = FailsFirstStep() if cli.scenario == "fail_first_step" else PreferE()
    if cli.ranker_url:
        from cyclealign.rankers import OpenAIRanker

        ranker = OpenAIRanker("judge", base_url=cli.ranker_url, cache_path=cli.cache)
        ranker.seen = []
    trainer = CycleAlignTrainer(
        model,
        args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        ranker=ranker,
        peft_config=peft_config,
    )
    ranker.trainer = trainer
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrapped.get_base_model() if cli.peft else unwrapped
    probe = LayerProbe(base.model.layers[0])
    if cli.kill_at_step:
        trainer.add_callback(KillAtStep(cli.kill_at_step))
    trainer.train(resume_from_checkpoint=True if cli.resume else None)

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    with gathered(trainer):
        result = summary(trainer, unwrapped, base, cli, initial, initial_tensors)
    result.update(
        {
            "layer_calls": probe.calls,
            "pool": trainer.pool.state_dict(),
            "prompts_seen": ranker.seen,
            "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history,
        }
    )
    Path(cli.out).mkdir(parents=True, exist_ok=True)
    name = f"rank{trainer.accelerator.process_index}.json"
    (Path(cli.out) / name).write_text(json.dumps(result, default=str))
    import torch

    if torch.distributed.is_initialized():
        # Without it, gloo's threads can still be running at interpreter exit and abort a rank
        # ("terminate called without an active exception") after a good run.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def gathered(trainer):
    """Full parameters on every process: under ZeRO-3 they are partitioned between steps."""
    if not trainer.is_deepspeed_enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()))


def summary(trainer, unwrapped, base, cli, initial, initial_tensors) -> dict:
    return {
        "process_index": trainer.accelerator.process_index,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "initial": initial,
        "final": checksum(unwrapped),
        "base_unchanged": sorted(
            float(p.detach().double().sum())
            for n, p in unwrapped.named_parameters()
            if "lora_" not in n
        )
        == initial_tensors,
        "checkpointing_flags": [bool(layer.gradient_checkpointing) for layer in base.model.layers],
        "embedding_hooks": len(unwrapped.get_input_embeddings()._forward_hooks),
        # Parameters ZeRO-3 really partitioned (DeepSpeed keeps small ones whole by default).
        "partitioned": sum(not getattr(p, "ds_persist", True) for p in unwrapped.parameters()),
    }


if __name__ == "__main__":
    main()
