"""What the CycleAlign machinery costs on top of the work it cannot avoid.

(a) bare: one batched ``generate`` of n samples per prompt, one forward+backward over all
candidates, one optimizer step, written by hand; (b) one ``CycleAlignTrainer`` round
(``max_rounds=1``) on the same prompts with a zero-latency in-process ranker. The overhead
is (b) / (a), medians over steps after a warm-up. Each setting (plain, activation
checkpointing, ``scoring_batch_size`` of half the sequences) runs in its own process so its
peak RSS (``ru_maxrss`` only grows) is its own.

    python benchmarks/cycle_overhead.py              # SmolLM2-135M (target) and a tiny model
    python benchmarks/cycle_overhead.py --models tiny
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/latency_hiding.py

PROMPTS = [
    "How do I keep basil alive?",
    "Why is the sky blue?",
    "Tell me a joke.",
    "What is a mortgage?",
]


def load(model_name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_name == "tiny":
        from conftest import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(tokenizer), tokenizer
    from hh_rlhf import resolve_model

    path = resolve_model("smollm2", str(Path.home() / ".cache" / "cyclealign"))
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def bare(model, tokenizer, cli) -> list[float]:
    import torch

    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS[: cli.prompts]
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    if cli.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    times = []
    for _ in range(cli.steps):
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=True,
                max_new_tokens=cli.max_new_tokens,
                num_return_sequences=cli.responses,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
            )
        model.train()
        prompt_len = batch["input_ids"].shape[1]
        mask = torch.ones_like(out)
        mask[:, :prompt_len] = batch["attention_mask"].repeat_interleave(cli.responses, 0)
        # As lean as a hand-written loop can be: logits only at the completion positions
        # (the trainer does the same), so the overhead is not flattered by a full-vocabulary
        # log-softmax over the prompt.
        completion = out[:, prompt_len:]
        logits = model(
            input_ids=out,
            attention_mask=mask,
            use_cache=False,
            logits_to_keep=completion.shape[1] + 1,
        ).logits[:, :-1]
        logps = logits.log_softmax(-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        (-logps.sum(-1).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def cycle(model, tokenizer, cli) -> list[float]:
    from datasets import Dataset

    from cyclealign import CycleAlignConfig, CycleAlignTrainer
    from cyclealign.rankers import BlackBoxRanker, RankResult

    class Shortest(BlackBoxRanker):
        def rank(self, requests):
            return [
                RankResult(sorted(range(len(r.responses)), key=lambda i: len(r.responses[i])))
                for r in requests
            ]

    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts,
            num_responses=cli.responses,
            max_new_tokens=cli.max_new_tokens,
            max_rounds=1,
            max_steps=cli.steps,
            learning_rate=1e-6,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            use_better_response=False,
            disable_tqdm=True,
            gradient_checkpointing=cli.gradient_checkpointing,
            scoring_batch_size=cli.scoring_batch_size,
            lr_scheduler_type="constant",
        )
        data = Dataset.from_dict({"prompt": (PROMPTS[: cli.prompts]) * cli.steps})
        trainer = CycleAlignTrainer(
            model, args, train_dataset=data, processing_class=tokenizer, ranker=Shortest()
        )
        times = []
        original = trainer.training_step

        def timed(*a, **k):
            start = time.perf_counter()
            loss = original(*a, **k)
            times.append(time.perf_counter() - start)
            return loss

        trainer.training_step = timed
        trainer.train()
        phases = {
            k: statistics.median(h[k] for h in trainer.state.log_history[1:] if k in h)
            for k in ("time/generate", "time/forward", "time/backward", "time/rank_wait")
        }
    return times, phases


def child(cli) -> None:
    model, tokenizer = load(cli.model)
    if cli.mode == "bare":
        times, phases = bare(model, tokenizer, cli), {}
    else:
        times, phases = cycle(model, tokenizer, cli)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"median_s": statistics.median(times[1:]), "peak_rss_mib": peak_mib, "phases": phases}
        )
    )


def measure(cli, model: str, mode: str, gc: bool, scoring: int | None) -> dict:
    """One setting in a fresh process, so its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", "--model", model, "--mode", mode]
    for name in ("prompts", "responses", "max_new_tokens", "steps"):
        command += [f"--{name}", str(getattr(cli, name))]
    if gc:
        command.append("--gradient_checkpointing")
    if scoring is not None:
        command += ["--scoring_batch_size", str(scoring)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table_row(model: str, gc: bool, scoring: int | None, measured: dict) -> dict:
    phases = measured["cycle"]["phases"]
    bare_s, cycle_s = measured["bare"]["median_s"], measured["cycle"]["median_s"]
    return {
        "model": model,
        "gradient checkpointing": gc,
        "scoring_batch_size": scoring,
        "bare step (s)": round(bare_s, 3),
        "cycle round (s)": round(cycle_s, 3),
        "overhead (b)/(a)": round(cycle_s / bare_s, 3),
        "generate / forward / backward (s)": " / ".join(
            f"{phases[k]:.3f}" for k in ("time/generate", "time/forward", "time/backward")
        ),
        "peak RSS bare / cycle (MiB)": f"{measured['bare']['peak_rss_mib']:.0f} / "
        f"{measured['cycle']['peak_rss_mib']:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--responses", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="bare", help=argparse.SUPPRESS)
    parser.add_argument("--gradient_checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scoring_batch_size", type=int, default=None, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        child(cli)
        return
    rows = []
    rows_per_batch = cli.prompts * cli.responses
    # (gradient checkpointing, scoring_batch_size); the bare loop has no scoring_batch_size,
    # so the third setting is compared with the first one's bare step.
    settings = [(False, None), (True, None), (False, max(1, rows_per_batch // 2))]
    for model in cli.models:
        bare_plain = None
        for gc, scoring in settings:
            measured = {"bare": bare_plain} if scoring is not None else {}
            for mode in ("bare", "cycle"):
                if mode not in measured:
                    measured[mode] = measure(cli, model, mode, gc, scoring)
            if not gc and scoring is None:
                bare_plain = measured["bare"]
            rows.append(table_row(model, gc, scoring, measured))
    caption = (
        f"{cli.prompts} prompts x {cli.responses} responses x {cli.max_new_tokens} new tokens, "
        f"median of {cli.steps - 1} steps after a warm-up; each setting in its own process"
    )
    emit(rows, caption=caption, json_path=cli.json)


if __name__ == "__main__":
    main()
