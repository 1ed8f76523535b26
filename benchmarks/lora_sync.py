"""LoRA with ``use_vllm=True``: merging the adapter and syncing the layers it changed, against
vLLM's own LoRA adapters, on SmolLM2-135M-Instruct with LoRA r=16.

Every round of a LoRA run changes only the adapter. Two ways to let the engine sample from it:

(a) **merge and sync** (what ``use_vllm=True`` does, as TRL's colocate sync): the adapter is
    merged into the base weights of the layers it adapts, those layers (with the shards vLLM
    fuses them with) are sent to the engine (``VLLMSampler.sync``), and the adapter is
    unmerged again;
(b) **vLLM's LoRA**: the engine is built with ``enable_lora`` and keeps the base weights; after
    each update the adapter is saved (``save_pretrained``) and the next ``generate`` gets a new
    ``LoRARequest`` for it, which vLLM loads and applies on the fly.

Per round (median of ``--rounds`` after a warm-up; a round's "update" adds noise to the
adapter's B matrices, so the weights really change): the time to get the new adapter into the
engine, the time to sample the batch with it, and whether greedy samples equal those of the
PEFT model (fp32). Each engine runs in its own process.

    python benchmarks/lora_sync.py                 # SmolLM2-135M, r=16 on q_proj and v_proj
    python benchmarks/lora_sync.py --model tiny --rounds 2 --tokens 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _children import run_as_child, run_child
from _report import emit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import HAVE_VLLM, PROMPTS, model_path, prompt_ids


def peft_model(cli):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path(cli.model), dtype=torch.float32)
    config = LoraConfig(
        r=cli.r,
        lora_alpha=2 * cli.r,
        target_modules=cli.targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def update(model, generator) -> None:
    """A stand-in for an optimizer step: every adapter B matrix moves."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)


def greedy_reference(model, tokenizer, rows, tokens):
    import torch

    out = []
    with torch.no_grad():
        for row in rows:
            ids = model.generate(
                torch.tensor([row]),
                do_sample=False,
                max_new_tokens=tokens,
                pad_token_id=tokenizer.eos_token_id,
            )
            out.append(ids[0, len(row) :].tolist())
    return out


def child_merge(cli) -> dict:
    import torch
    from datasets import Dataset

    from cyclealign import CycleAlignConfig, CycleAlignTrainer
    from cyclealign.rankers.base import BlackBoxRanker

    class Never(BlackBoxRanker):
        def rank(self, requests):
            raise AssertionError("no round runs here")

    model = peft_model(cli)
    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            use_vllm=True,
            vllm_dtype="float32",
            vllm_enforce_eager=True,
            num_generations=cli.samples,
            max_completion_length=cli.tokens,
            generation_kwargs={"min_new_tokens": cli.tokens},
            report_to="none",
            use_cpu=True,
        )
        trainer = CycleAlignTrainer(
            model, args, train_dataset=Dataset.from_dict({"prompt": PROMPTS}), ranker=Never()
        )
        sampler, tokenizer = trainer.vllm, trainer.processing_class
        rows = prompt_ids(tokenizer, cli.prompts)
        tokenizer.padding_side = "left"
        batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        sampler.sync()  # the first sync sends everything
        generator = torch.Generator().manual_seed(0)
        syncs, samples = [], []
        for _ in range(cli.rounds + 1):
            update(model, generator)
            sampler.mark_stale()
            start = time.perf_counter()
            sampler.sync()
            syncs.append(time.perf_counter() - start)
            start = time.perf_counter()
            sampler.sample(batch["input_ids"], batch["attention_mask"], step=len(syncs))
            samples.append(time.perf_counter() - start)
        exact = sampler.greedy(rows, cli.tokens) == greedy_reference(
            model, tokenizer, rows, cli.tokens
        )
        return {
            "sync_s": statistics.median(syncs[1:]),
            "sample_s": statistics.median(samples[1:]),
            "tensors": sampler.last_sync_tensors,
            "greedy_equal": exact,
        }


def child_adapter(cli) -> dict:
    import torch
    from transformers import AutoTokenizer
    from trl.trainer.utils import ensure_master_addr_port
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model = peft_model(cli)
    path = model_path(cli.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = prompt_ids(tokenizer, cli.prompts)
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    ensure_master_addr_port()
    llm = LLM(
        model=path,
        dtype="float32",
        enforce_eager=True,
        distributed_executor_backend="external_launcher",
        kv_cache_memory_bytes=2**30,
        max_model_len=512,
        seed=0,
        enable_lora=True,
        max_lora_rank=cli.r,
        max_loras=1,
    )
    params = SamplingParams(
        n=cli.samples, temperature=1.0, max_tokens=cli.tokens, min_tokens=cli.tokens, seed=0
    )
    prompts = [{"prompt_token_ids": r} for r in rows]
    generator = torch.Generator().manual_seed(0)
    syncs, samples = [], []
    with tempfile.TemporaryDirectory() as out:
        for i in range(1, cli.rounds + 2):
            update(model, generator)
            start = time.perf_counter()
            folder = Path(out) / f"adapter-{i}"
            model.save_pretrained(folder)
            request = LoRARequest(f"round-{i}", i, str(folder))
            llm.llm_engine.add_lora(request)  # loaded now, not inside the timed generate
            if i > 1:
                llm.llm_engine.remove_lora(i - 1)
            syncs.append(time.perf_counter() - start)
            start = time.perf_counter()
            llm.generate(prompts, sampling_params=params, lora_request=request, use_tqdm=False)
            samples.append(time.perf_counter() - start)
        greedy = llm.generate(
            prompts,
            SamplingParams(temperature=0.0, max_tokens=cli.tokens),
            lora_request=request,
            use_tqdm=False,
        )
    engine = [list(o.outputs[0].token_ids) for o in greedy]
    reference = greedy_reference(model, tokenizer, rows, cli.tokens)
    return {
        "sync_s": statistics.median(syncs[1:]),
        "sample_s": statistics.median(samples[1:]),
        "greedy_equal": engine == [r[: len(e)] for r, e in zip(reference, engine)],
    }


CHILDREN = {"merge": child_merge, "adapter": child_adapter}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after a warm-up")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()
    if run_as_child(cli, CHILDREN):
        return
    skipped = "skipped: vLLM is not installed in this environment (scripts/vllm-env.sh)"
    results = {
        name: run_child(__file__, name, cli, 900) if HAVE_VLLM else None for name in CHILDREN
    }
    labels = {
        "merge": "merge and sync the adapted layers (use_vllm=True)",
        "adapter": "vLLM LoRA adapter (save, add_lora)",
    }
    rows = []
    tokens = cli.prompts * cli.samples * cli.tokens
    for name, result in results.items():
        if result is None:
            rows.append({"method": labels[name], "status": skipped})
            continue
        rows.append(
            {
                "method": labels[name],
                "adapter into the engine (s)": round(result["sync_s"], 3),
                "sampling (s)": round(result["sample_s"], 3),
                "sampling tokens/s": round(tokens / result["sample_s"], 1),
                "round total (s)": round(result["sync_s"] + result["sample_s"], 3),
                "greedy = PEFT model": result["greedy_equal"],
                "status": "ran",
            }
        )
    notes = [
        f"{cli.model}, LoRA r={cli.r} on {', '.join(cli.targets)}, fp32 engines (eager); a "
        f"batch of {cli.prompts} prompts x {cli.samples} samples x {cli.tokens} tokens; medians "
        f"of {cli.rounds} rounds after a warm-up, each round after an update of the adapter.",
    ]
    if all(results.values()):
        merge, adapter = results["merge"], results["adapter"]
        ratio = (merge["sync_s"] + merge["sample_s"]) / (adapter["sync_s"] + adapter["sample_s"])
        notes.append(f"merge-and-sync round / vLLM-adapter round: {ratio:.2f}x")
    emit(
        rows,
        caption="LoRA with use_vllm=True: merge and sync against vLLM's LoRA adapters",
        notes=notes,
        details=results,
        json_path=cli.json,
    )


if __name__ == "__main__":
    main()
