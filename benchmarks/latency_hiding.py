"""How much black-box latency a CycleAlign round hides behind its own forward pass.

A local chat-completions server on 127.0.0.1 answers every ranking request after a fixed
delay d. For each d, one CycleAlign round per step runs on the same model and batch of B
prompts; the table puts the round's extra wall time over the zero-delay round next to d,
next to the ideal with full overlap, max(0, d - forward time), and next to B * d (the
cost of sequential calls). All numbers come from one run, side by side.

    python benchmarks/latency_hiding.py [--delays 0 0.25 0.5 1.0] [--prompts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
# On a 2-core machine torch's OpenMP workers spin after each op and starve the threads that
# send and receive the black box's answers (measured: ~1 s of rank wait at zero delay).
# Passive waiting gives those threads the CPU; set it before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from datasets import Dataset

from chat_server import ChatServer, rank_by
from conftest import build_tiny_model, build_tiny_tokenizer
from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker

PROMPTS = [
    "How do I bake bread?",
    "Tell me a joke.",
    "What is the capital of France?",
    "hello world",
    "one two three",
    "red green blue",
    "apple banana cherry",
    "the quick brown fox",
]


def run(delay: float, prompts: int, steps: int, hidden: int) -> dict[str, float]:
    handler = rank_by(lambda text: text.count("e"))

    def slow(body, number):
        reply = handler(body, number)
        reply.delay = delay
        return reply

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=hidden, intermediate_size=4 * hidden)
    with ChatServer(slow) as server, tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=prompts,
            num_responses=4,
            max_new_tokens=16,
            max_rounds=1,
            max_steps=steps,
            learning_rate=1e-4,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            logging_steps=1,
        )
        data = Dataset.from_dict({"prompt": (PROMPTS * prompts)[: prompts * steps]})
        trainer = CycleAlignTrainer(
            model,
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ranker=OpenAIRanker("bench", base_url=server.base_url, max_concurrency=prompts),
        )
        walls = []

        class Timer:
            start = 0.0

        def on_step(*a, **k):
            walls.append(time.perf_counter() - Timer.start)

        original = trainer.training_step

        def timed_step(*a, **k):
            Timer.start = time.perf_counter()
            loss = original(*a, **k)
            on_step()
            return loss

        trainer.training_step = timed_step
        trainer.train()
    logs = [h for h in trainer.state.log_history if "time/forward" in h][1:]  # skip warm-up
    return {
        "step_s": statistics.median(walls[1:]),
        "forward_s": statistics.median(h["time/forward"] for h in logs),
        "rank_wait_s": statistics.median(h["time/rank_wait"] for h in logs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256, help="model width: forward time")
    parser.add_argument("--json", default=None)
    cli = parser.parse_args()
    results = {d: run(d, cli.prompts, cli.steps, cli.hidden) for d in cli.delays}
    base = results[min(cli.delays)]["step_s"]
    rows = []
    for d, r in results.items():
        ideal = max(0.0, d - r["forward_s"])
        extra = r["step_s"] - base
        rows.append(
            {
                "delay d (s)": d,
                "forward (s)": round(r["forward_s"], 3),
                "rank wait (s)": round(r["rank_wait_s"], 3),
                "extra over d=0 (s)": round(extra, 3),
                "ideal max(0, d - fwd)": round(ideal, 3),
                "sequential B*d": round(cli.prompts * d, 3),
                "within target": extra <= ideal + 0.1 * d,
            }
        )
    print(
        f"B = {cli.prompts} prompts x 4 responses, hidden size {cli.hidden}, median of "
        f"{cli.steps - 1} steps\n"
    )
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    if cli.json:
        Path(cli.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
