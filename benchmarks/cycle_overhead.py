"""What the CycleAlign machinery costs on top of the work it cannot avoid.

(a) bare: one batched ``generate`` of n samples per prompt, one forward+backward over all
candidates, gradient clipping and one AdamW step, written by hand; (b) one
``CycleAlignTrainer`` step of one round (``max_rounds=1``) on the same batch with a
zero-latency in-process ranker, timed from the Trainer's step begin to its step end (the
optimizer step included). The overhead is (b) / (a), medians over steps after a warm-up.
Each setting (plain, activation checkpointing, ``scoring_batch_size`` of half the
sequences) runs in its own process, which imports the same modules in both modes, so its
peak RSS (``ru_maxrss`` only grows) is its own; the growth over the loaded model during the
steps is sampled from /proc as well, since loading can peak higher than training.

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
import threading
import time
from pathlib import Path

from _report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
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
        from helpers import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(tokenizer), tokenizer
    from cyclealign.scripts.train import resolve_model

    path = resolve_model("smollm2", str(Path.home() / ".cache" / "cyclealign"))
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


class RssSampler:
    """Largest resident set size seen while running (sampled every 5 ms from /proc), so the
    growth during the measured steps shows even when loading the model peaked higher."""

    def __init__(self) -> None:
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def current() -> int:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bare(model, tokenizer, cli) -> tuple[list[float], dict[str, list[float]]]:
    """The round's unavoidable work, by hand, as a careful user would write it."""
    import torch

    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS[: cli.prompts]
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    # The optimizer the Trainer builds at its defaults (optim="adamw_torch_fused",
    # weight_decay=0.0): timing torch's default (foreach) AdamW instead made the bare step's
    # optimizer twice as slow as the trainer's, and the overhead read below 1.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0, fused=True)
    if cli.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    times, phases = [], {"generate": [], "forward": [], "backward": [], "optimizer": []}
    for _ in range(cli.steps):
        start = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=True,
                max_new_tokens=cli.max_completion_length,
                num_return_sequences=cli.responses,
                top_k=0,
                pad_token_id=tokenizer.pad_token_id,
            )
        model.train()
        t_generate = time.perf_counter()
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
        loss = -logps.sum(-1).mean()
        t_forward = time.perf_counter()
        loss.backward()
        t_backward = time.perf_counter()
        # The Trainer clips at max_grad_norm=1.0 by default: the same work here.
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        times.append(end - start)
        for name, (a, b) in {
            "generate": (start, t_generate),
            "forward": (t_generate, t_forward),
            "backward": (t_forward, t_backward),
            "optimizer": (t_backward, end),
        }.items():
            phases[name].append(b - a)
    return times, phases


def cycle(model, tokenizer, cli) -> tuple[list[float], dict[str, list[float]], dict]:
    from datasets import Dataset

    from _timing import StepTimer
    from cyclealign import CycleAlignConfig, CycleAlignTrainer
    from cyclealign.rankers import BlackBoxRanker, RankResult

    class Shortest(BlackBoxRanker):
        def rank(self, requests):
            return [
                RankResult(sorted(range(len(r.responses)), key=lambda i: len(r.responses[i])))
                for r in requests
            ]

    generate_calls = []
    original_generate = model.generate

    def counting_generate(*args, **kwargs):
        generate_calls.append(kwargs["input_ids"].shape[0])
        return original_generate(*args, **kwargs)

    model.generate = counting_generate
    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts,
            num_generations=cli.responses,
            max_completion_length=cli.max_completion_length,
            max_rounds=1,
            max_steps=cli.steps,
            learning_rate=1e-6,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            use_better_response=False,
            disable_tqdm=True,
            logging_steps=1,
            gradient_checkpointing=cli.gradient_checkpointing,
            scoring_batch_size=cli.scoring_batch_size,
            lr_scheduler_type="constant",
            train_sampling_strategy="sequential",  # every batch is the bare loop's batch
        )
        # Chat messages: the chat template applies, as in the bare loop (a string is raw text).
        chats = [[{"role": "user", "content": p}] for p in PROMPTS[: cli.prompts]]
        data = Dataset.from_dict({"prompt": chats * cli.steps})
        timer = StepTimer()
        trainer = CycleAlignTrainer(
            model,
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ranker=Shortest(),
            callbacks=[timer],
        )
        trainer.train()
        logs = [h for h in trainer.state.log_history if "time/generate" in h]
        phases = {k: [h[f"time/{k}"] for h in logs] for k in ("generate", "forward", "backward")}
    checks = {
        "activation_checkpointing": bool(trainer.model.is_activation_checkpointing),
        "generate_rows_per_call": sorted(set(generate_calls)),
    }
    return timer.times, phases, checks


def child(cli) -> None:
    import torch  # noqa: F401  both modes import the same modules: RSS compares training
    import transformers  # noqa: F401
    from datasets import Dataset  # noqa: F401

    from cyclealign import CycleAlignTrainer  # noqa: F401

    model, tokenizer = load(cli.model)
    loaded = RssSampler.current()
    with RssSampler() as sampler:
        if cli.mode == "bare":
            (times, phases), checks = bare(model, tokenizer, cli), {}
        else:
            times, phases, checks = cycle(model, tokenizer, cli)
    result = {
        "median_s": statistics.median(times[1:]),
        "phases": {k: statistics.median(v[1:]) for k, v in phases.items()},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "growth_mib": (sampler.peak - loaded) / 2**20,
        "checks": checks,
    }
    print(json.dumps(result))


def measure(cli, model: str, mode: str, gc: bool, scoring: int | None) -> dict:
    """One setting in a fresh process, so its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", "--model", model, "--mode", mode]
    for name in ("prompts", "responses", "max_completion_length", "steps"):
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
    bare, cycle = measured["bare"], measured["cycle"]
    phases = " / ".join(f"{cycle['phases'][k]:.3f}" for k in ("generate", "forward", "backward"))
    bare_phases = " / ".join(
        f"{bare['phases'][k]:.3f}" for k in ("generate", "forward", "backward", "optimizer")
    )
    return {
        "model": model,
        "gradient checkpointing": gc,
        "scoring_batch_size": scoring,
        "bare step (s)": round(bare["median_s"], 3),
        "cycle step (s)": round(cycle["median_s"], 3),
        "overhead (b)/(a)": round(cycle["median_s"] / bare["median_s"], 3),
        "bare: generate / forward / backward / optimizer (s)": bare_phases,
        "cycle: generate / forward / backward (s)": phases,
        "peak RSS bare / cycle (MiB)": f"{bare['peak_rss_mib']:.0f} / {cycle['peak_rss_mib']:.0f}",
        "growth in steps bare / cycle (MiB)": f"{bare['growth_mib']:.0f} / "
        f"{cycle['growth_mib']:.0f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--responses", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
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
    rows, checks = [], []
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
            checks.append(measured["cycle"]["checks"])
    caption = (
        f"{cli.prompts} prompts x {cli.responses} responses x {cli.max_completion_length} new tokens, "
        f"median of {cli.steps - 1} steps after a warm-up; each setting in its own process"
    )
    emit(rows, caption=caption, details={"cycle_checks": checks}, json_path=cli.json)


if __name__ == "__main__":
    main()
