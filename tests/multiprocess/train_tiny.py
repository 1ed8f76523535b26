"""Train the tiny test model with a scripted ranker, on however many processes launched us
(plain DDP, DeepSpeed ZeRO-2/3, FSDP2 and FSDP1, LoRA, activation checkpointing, rankers that
fail, a SIGKILL between checkpoints).

Each process writes ``<out>/rank<i>.json``: a checksum of every parameter, the pool's state,
the prompts it saw, what the run logged and how the checkpointed layers were called, for
``tests/test_multiprocess.py`` to compare across processes and runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from transformers import TrainerCallback  # noqa: E402

from cyclealign import CycleAlignConfig, CycleAlignTrainer  # noqa: E402
from cyclealign.rankers.base import BlackBoxRanker  # noqa: E402
from cyclealign.types import RankResult  # noqa: E402
from helpers import (  # noqa: E402
    PROMPTS,
    WhiteboxTap,
    build_tiny_model,
    build_tiny_tokenizer,
    build_vllm_tiny_model,
)

#: The engine of a --vllm run: fp32 as the training, eager (start-up in seconds), small.
VLLM = dict(
    use_vllm=True,
    vllm_dtype="float32",
    vllm_enforce_eager=True,
    vllm_max_model_length=128,
    vllm_kv_cache_memory_bytes=128 * 2**20,
)


class PreferE(BlackBoxRanker):
    """More "e" is better: a fixed, checkable teacher. Records the prompts it saw."""

    def __init__(self):
        self.seen: list[str] = []

    def rank(self, requests):
        self.seen += [str(r.prompt) for r in requests]
        return [
            RankResult(sorted(range(len(r.responses)), key=lambda i: -r.responses[i].count("e")))
            for r in requests
        ]


class Failing(PreferE):
    def rank(self, requests):
        super().rank(requests)
        return [RankResult(None, error="scripted failure") for _ in requests]


class FailsFirstStep(PreferE):
    """Fails every request of the first training step, then ranks: on every process the
    rounds of step 1 run a forward pass with no backward anywhere."""

    def __init__(self):
        super().__init__()
        self.trainer = None

    def rank(self, requests):
        results = super().rank(requests)
        if self.trainer.state.global_step == 0:
            return [RankResult(None, error="scripted outage") for _ in requests]
        return results


class EchoWhitebox(PreferE):
    """Agrees fully with the white-box ranking, published by the trainer's forward pass."""

    def __init__(self):
        super().__init__()
        self.tap = WhiteboxTap()

    def attach(self, trainer):
        self.tap.attach(trainer)

    def rank(self, requests):
        super().rank(requests)
        return [RankResult(list(w)) for w in self.tap.wait()]


def full_parameters(model) -> list[tuple[str, torch.Tensor]]:
    """(name, whole tensor) sorted by name, named as in the unwrapped model. FSDP2 holds
    DTensor shards (``full_tensor`` gathers them: every process must call it); FSDP1 names
    carry its wrappers (the tensors are whole inside ``gathered``)."""
    params = []
    for name, param in model.named_parameters():
        data = param.full_tensor() if hasattr(param, "full_tensor") else param
        params.append((name.replace("_fsdp_wrapped_module.", ""), data))
    return sorted(params, key=lambda item: item[0])


def checksum(model) -> tuple[str, float]:
    return checksum_of(full_parameters(model))


def checksum_of(named: list[tuple[str, torch.Tensor]]) -> tuple[str, float]:
    digest = hashlib.sha256()
    total = 0.0
    for name, param in named:
        data = param.detach().to(torch.float64).cpu()
        digest.update(name.encode())
        digest.update(data.numpy().tobytes())
        total += float(data.abs().sum())
    return digest.hexdigest(), total


def tensor_sums(model) -> list[float]:
    """Order-free fingerprint of the weights (PEFT renames the base model's parameters)."""
    return sorted(float(p.detach().double().sum()) for _, p in full_parameters(model))


class LayerProbe:
    """Records, per call of the first decoder layer, whether it ran without gradients
    (generation), its checkpointing flag and its sequence length (1 = KV cache in use)."""

    def __init__(self, layer):
        self.calls: list[tuple[bool, bool, int]] = []
        layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
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


class OptimizerSteps(TrainerCallback):
    """Records ``global_step`` at every optimizer step (the inner rounds' and the Trainer's
    own) that changed this process's parameters (its shards, under FSDP)."""

    def __init__(self):
        self.steps: list[int] = []
        self.params: list[torch.Tensor] = []
        self.before: list[torch.Tensor] = []

    def local(self) -> list[torch.Tensor]:
        return [p.to_local() if hasattr(p, "to_local") else p for p in self.params]

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        if not hasattr(inner, "register_step_pre_hook"):
            return  # DeepSpeed's ZeRO optimizers (the engine steps them): not recorded
        self.params = [p for group in inner.param_groups for p in group["params"]]
        inner.register_step_pre_hook(self.snapshot)
        inner.register_step_post_hook(lambda *_: self.compare(state.global_step))

    def snapshot(self, *_):
        self.before = [t.detach().clone() for t in self.local()]

    def compare(self, step: int):
        if any(not torch.equal(a, t) for a, t in zip(self.before, self.local())):
            self.steps.append(step)


def local_numel(model) -> int:
    """Parameter elements this process holds (all of them unless sharded)."""
    return sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())


def gathered(trainer):
    """Full parameters on every process: under ZeRO-3 they are partitioned between steps,
    under FSDP1 too (FSDP2's are gathered one by one in ``full_parameters``)."""
    if trainer.is_fsdp_enabled and trainer.accelerator.state.fsdp_plugin.fsdp_version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(trainer.model_wrapped, writeback=False)
    if not trainer.is_deepspeed_enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(trainer.model.parameters()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    scenarios = ["prefer", "one_fails", "all_fail", "fail_first_step"]
    parser.add_argument("--scenario", default="prefer", choices=scenarios)
    parser.add_argument("--peft", action="store_true")
    parser.add_argument("--vllm", action="store_true", help="sample with a colocated vLLM engine")
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--checkpoint_every_n_layers", type=int, default=1)
    parser.add_argument("--max_rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--ddp_backend", default=None)
    parser.add_argument("--ranker_url", default=None, help="rank through OpenAIRanker here")
    parser.add_argument("--cache", default=None, help="the OpenAIRanker's SQLite cache")
    parser.add_argument("--budget_requests", type=int, default=None, help="OpenAIRanker's budget")
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--kill_at_step", type=int, default=0, help="SIGKILL when it ends")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument(
        "--save_model", action="store_true", help="save_model(out/final) at the end"
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate() before train() (recording a refusal), with eval_on_start, and after",
    )
    cli = parser.parse_args()

    tokenizer = build_tiny_tokenizer()
    build = build_vllm_tiny_model if cli.vllm else build_tiny_model  # vLLM needs head_dim 64
    model = build(tokenizer, seed=0)  # the same initial weights on every process
    initial = checksum(model)
    initial_tensors = tensor_sums(model)
    numel = sum(p.numel() for p in model.parameters())
    checkpointing_kwargs = None
    if cli.checkpoint_every_n_layers > 1:  # the Trainer's own key, not torch.utils.checkpoint's
        checkpointing_kwargs = {"every_n_layers": cli.checkpoint_every_n_layers}
    args = CycleAlignConfig(
        output_dir=cli.out,
        per_device_train_batch_size=2,
        max_steps=cli.steps,
        num_generations=3,
        max_completion_length=6,
        max_rounds=cli.max_rounds,
        stop_on_full_agreement=True,
        use_better_response=False,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps" if cli.save_steps else "no",
        save_steps=cli.save_steps or 500,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        ddp_backend=cli.ddp_backend,
        gradient_checkpointing=cli.gradient_checkpointing,
        gradient_checkpointing_kwargs=checkpointing_kwargs,
        eval_on_start=cli.evaluate,
        **VLLM if cli.vllm else {},
    )
    from datasets import Dataset

    peft_config = None
    if cli.peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    ranker = {"all_fail": Failing, "fail_first_step": FailsFirstStep}.get(cli.scenario, PreferE)()
    if cli.ranker_url:
        from cyclealign.rankers import OpenAIRanker

        ranker = OpenAIRanker(
            "judge",
            base_url=cli.ranker_url,
            cache_path=cli.cache,
            budget_requests=cli.budget_requests,
        )
        ranker.seen = []
    trainer = CycleAlignTrainer(
        model,
        args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        eval_dataset=Dataset.from_dict({"prompt": PROMPTS[:4]}) if cli.evaluate else None,
        processing_class=tokenizer,
        ranker=ranker,
        peft_config=peft_config,
    )
    rank = trainer.accelerator.process_index
    ranker.trainer = trainer
    if cli.scenario == "one_fails":
        ranker = Failing() if rank == 1 else EchoWhitebox()
        if isinstance(ranker, EchoWhitebox):
            ranker.attach(trainer)
        trainer.ranker = ranker
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrapped.get_base_model() if cli.peft else unwrapped
    probe = LayerProbe(base.model.layers[0])
    if cli.kill_at_step:
        trainer.add_callback(KillAtStep(cli.kill_at_step))
    optimizer_steps = OptimizerSteps()
    trainer.add_callback(optimizer_steps)
    refusal = None
    if cli.evaluate:
        try:
            trainer.evaluate()
        except RuntimeError as error:  # FSDP shards the model in train()
            refusal = str(error)
    trainer.train(resume_from_checkpoint=True if cli.resume else None)
    final_eval = trainer.evaluate() if cli.evaluate else None
    saved_model = None
    if cli.save_model:
        final = Path(cli.out) / "final"
        trainer.save_model(str(final))
        trainer.accelerator.wait_for_everyone()
        if (final / "pytorch_model_fsdp_0").exists():  # FSDP1 on CPUs: sharded weights
            from accelerate.utils import merge_fsdp_weights

            merge_fsdp_weights(str(final / "pytorch_model_fsdp_0"), str(final))  # all processes
        if trainer.accelerator.is_main_process:
            from safetensors.torch import load_file

            weights = load_file(str(final / "model.safetensors"))
            saved_model = checksum_of(sorted(weights.items()))
    held = local_numel(trainer.model_wrapped)

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    with gathered(trainer):
        params = full_parameters(unwrapped)
        if rank == 0:  # for comparisons closer than a checksum
            Path(cli.out).mkdir(parents=True, exist_ok=True)
            torch.save({n: p.detach().clone() for n, p in params}, Path(cli.out) / "final.pt")
        base_unchanged = None
        if cli.peft:
            frozen = [p for n, p in params if "lora_" not in n]
            base_unchanged = sorted(float(p.detach().double().sum()) for p in frozen)
            base_unchanged = base_unchanged == initial_tensors
        result = {
            "process_index": rank,
            "num_processes": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "ddp_backend": trainer.args.ddp_backend,
            "initial": initial,
            "final": checksum_of(params),
            "base_unchanged": base_unchanged,
            "checkpointing_flags": [bool(x.gradient_checkpointing) for x in base.model.layers],
            "embedding_hooks": len(unwrapped.get_input_embeddings()._forward_hooks),
            # Parameters ZeRO-3 really partitioned (DeepSpeed keeps small ones whole).
            "partitioned": sum(not getattr(p, "ds_persist", True) for p in unwrapped.parameters()),
        }
    result.update(
        {
            "layer_calls": probe.calls,
            "numel": numel,
            "local_numel": held,
            "optimizer_steps": optimizer_steps.steps,
            "fsdp_version": trainer.accelerator.state.fsdp_plugin.fsdp_version
            if trainer.is_fsdp_enabled
            else None,
            "eval_refused": refusal,
            "final_eval": final_eval,
            "saved_model": saved_model,
            "weights": str(Path(cli.out) / "final.pt") if rank == 0 else None,
            "pool": trainer.pool.state_dict(),
            "prompts_seen": ranker.seen,
            "global_step": trainer.state.global_step,
            "log_history": trainer.state.log_history,
            "vllm_synced_tensors": trainer.vllm.last_sync_tensors if trainer.vllm else None,
        }
    )
    Path(cli.out).mkdir(parents=True, exist_ok=True)
    (Path(cli.out) / f"rank{rank}.json").write_text(json.dumps(result, default=str))
    if torch.distributed.is_initialized():
        # Without it, gloo's threads can still be running at interpreter exit and abort the
        # process ("terminate called without an active exception") after a good run.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
