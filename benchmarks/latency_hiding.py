"""How much black-box latency a CycleAlign round hides behind its own forward pass.

A local chat-completions server on 127.0.0.1 answers every ranking request after a delay d
that changes from step to step. One CycleAlign round per step runs on the same model and
batch of B prompts; the table puts the round's extra wall time over the zero-delay rounds
next to d, next to the ideal with full overlap, max(0, d - forward time), and next to B * d
(the cost of sequential calls). Two model widths: a short forward pass dominated by Python
(which competes with the ranker's client for the GIL) and a longer one dominated by matmuls.

    python benchmarks/latency_hiding.py [--delays 0 0.25 0.5 1.0] [--hidden 256 1024]
"""

from __future__ import annotations

import argparse
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

from _report import emit
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


def run(delays: list[float], prompts: int, repeats: int, hidden: int) -> dict[float, dict]:
    """One training run in which the server's delay changes from step to step, so every
    delay is measured on the same model, in the same process, interleaved (slow drift of a
    shared machine hits all delays alike). The first step (delay 0) is a warm-up."""
    handler = rank_by(lambda text: text.count("e"))
    schedule = [0.0] + [d for _ in range(repeats) for d in delays]
    current = {"delay": 0.0}

    def slow(body, number):
        reply = handler(body, number)
        reply.delay = current["delay"]
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
            max_steps=len(schedule),
            # Small: a model that learns fast collapses to one distinct response per prompt,
            # and a single response needs no ranking request (nothing would be measured).
            learning_rate=1e-6,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            logging_steps=1,
            disable_tqdm=True,
        )
        data = Dataset.from_dict({"prompt": (PROMPTS * len(schedule))[: prompts * len(schedule)]})
        trainer = CycleAlignTrainer(
            model,
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ranker=OpenAIRanker("bench", base_url=server.base_url, max_concurrency=prompts),
        )
        walls = []
        original = trainer.training_step

        def timed_step(*a, **k):
            current["delay"] = schedule[len(walls)]
            start = time.perf_counter()
            loss = original(*a, **k)
            walls.append(time.perf_counter() - start)
            return loss

        trainer.training_step = timed_step
        trainer.train()
    logs = [h for h in trainer.state.log_history if "time/forward" in h]
    assert len(logs) == len(walls) == len(schedule)
    sent = [h["ranker/requests"] for h in logs]
    if sent != [prompts] * len(schedule):
        raise SystemExit(f"every step must send {prompts} ranking requests, sent: {sent}")
    results = {}
    for d in delays:
        steps = [i for i, s in enumerate(schedule) if s == d and i > 0]
        results[d] = {
            "step_s": statistics.median(walls[i] for i in steps),
            "forward_s": statistics.median(logs[i]["time/forward"] for i in steps),
            "rank_wait_s": statistics.median(logs[i]["time/rank_wait"] for i in steps),
        }
    return results


def r3(value: float) -> float:
    return round(value, 3) + 0.0  # no "-0" in the table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="steps per delay")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024], help="widths")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()
    delays = sorted(set(cli.delays) | {0.0})
    rows = []
    for hidden in cli.hidden:
        results = run(delays, cli.prompts, cli.repeats, hidden)
        base = results[0.0]["step_s"]
        for d, r in results.items():
            ideal = max(0.0, d - r["forward_s"])
            # The latency the round did not hide is its wait for the answers after the forward
            # pass (the other phases do not depend on d). The step's wall time over the d=0
            # steps says the same, with the noise of every other phase added.
            extra = r["rank_wait_s"] - results[0.0]["rank_wait_s"]
            rows.append(
                {
                    "width": hidden,
                    "delay d (s)": d,
                    "forward (s)": round(r["forward_s"], 3),
                    "extra: rank wait (s)": r3(extra),
                    "ideal max(0, d - fwd)": round(ideal, 3),
                    "extra - ideal (s)": r3(extra - ideal),
                    "target ideal + 0.1 d": round(ideal + 0.1 * d, 3),
                    "within target": extra <= ideal + 0.1 * d,
                    "step wall over d=0 (s)": r3(r["step_s"] - base),
                    "sequential B*d": round(cli.prompts * d, 3),
                }
            )
    caption = (
        f"B = {cli.prompts} prompts x 4 responses; delays interleaved step by step, median of "
        f"{cli.repeats} steps per delay after a warm-up"
    )
    emit(rows, caption=caption, json_path=cli.json)


if __name__ == "__main__":
    main()
