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
from _timing import StepTimer
from chat_server import ChatServer, rank_by
from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker
from helpers import PROMPTS, build_tiny_model, build_tiny_tokenizer


def run(
    delays: list[float], prompts: int, repeats: int, hidden: int, demonstrations: str
) -> dict[float, dict]:
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
            num_generations=4,
            max_completion_length=16,
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
            use_better_response=False,  # the judge writes none: ask for the ranking only
            # "budget": the defaults (as many dynamic demonstrations as 4096 tokens hold, the
            # static one); "none": neither, so each request is the query alone.
            max_demonstrations=None if demonstrations == "budget" else 0,
            use_static_demonstration=demonstrations == "budget",
        )
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]  # the chat template applies
        data = Dataset.from_dict({"prompt": (chats * len(schedule))[: prompts * len(schedule)]})
        trainer = CycleAlignTrainer(
            model,
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ranker=OpenAIRanker("bench", base_url=server.base_url, max_concurrency=prompts),
        )
        forward_ends = []

        class Steps(StepTimer):
            """Sets each step's delay before timing it."""

            def on_step_begin(self, args, state, control, **kwargs):
                current["delay"] = schedule[len(self.times)]
                super().on_step_begin(args, state, control, **kwargs)

        whitebox_ranking = trainer.loss_fn.ranking

        def ranking_at_forward_end(*a, **k):  # the white-box ranking ends the forward pass
            forward_ends.append(time.monotonic())
            return whitebox_ranking(*a, **k)

        trainer.loss_fn.ranking = ranking_at_forward_end
        steps = Steps()
        trainer.add_callback(steps)
        trainer.train()
        walls = steps.times
        arrivals = [r.received for r in server.requests]
    logs = [h for h in trainer.state.log_history if "time/forward" in h]
    assert len(logs) == len(walls) == len(schedule)
    sent = [h["ranker/requests"] for h in logs]
    if sent != [prompts] * len(schedule):
        raise SystemExit(f"every step must send {prompts} ranking requests, sent: {sent}")
    # In flight during the forward pass: the first request of each step reached the server
    # before that step's forward pass ended.
    overlapped = [
        arrivals[i * prompts] < forward_ends[i] for i in range(len(schedule)) if schedule[i] > 0
    ]
    # Dynamic demonstrations per request (the pool fills over the run), over the timed steps.
    shown = [logs[i]["demos/per_request"] for i in range(1, len(schedule))]
    results = {"overlapped": overlapped, "demos_per_request": round(statistics.mean(shown), 1)}
    for d in delays:
        steps = [i for i, s in enumerate(schedule) if s == d and i > 0]
        results[d] = {
            "step_s": statistics.median(walls[i] for i in steps),
            "forward_s": statistics.median(logs[i]["time/forward"] for i in steps),
            # From the requests' dispatch to the answers in hand: the forward pass that runs
            # meanwhile, slowed by the client's threads if they compete for the CPU, plus the
            # wait for whatever is still missing after it.
            "window_s": statistics.median(
                logs[i]["time/forward"] + logs[i]["time/rank_wait"] for i in steps
            ),
        }
    return results


def r3(value: float) -> float:
    return round(value, 3) + 0.0  # no "-0" in the table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="steps per delay")
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 1024], help="widths")
    parser.add_argument(
        "--demonstrations",
        nargs="+",
        choices=["budget", "none"],
        default=["budget", "none"],
        help="'budget': the default demonstrations; 'none': the query alone",
    )
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()
    delays = sorted(set(cli.delays) | {0.0})
    rows, overlapped = [], {}
    for demos, hidden in [(m, h) for m in cli.demonstrations for h in cli.hidden]:
        results = run(delays, cli.prompts, cli.repeats, hidden, demos)
        overlapped[f"{demos}, width {hidden}"] = results.pop("overlapped")
        per_request = results.pop("demos_per_request")
        zero = results[0.0]
        for d, r in results.items():
            ideal = max(0.0, d - zero["forward_s"])
            target = ideal + 0.1 * d
            # The round's extra time, measured two ways: the dispatch-to-answers window over
            # the d=0 steps' (the other phases do not depend on d), and the whole step's wall
            # time over theirs, which adds the noise of sampling and backpropagation.
            extra = r["window_s"] - zero["window_s"]
            extra_wall = r["step_s"] - zero["step_s"]
            rows.append(
                {
                    "demonstrations": demos,
                    "demos / request": per_request,
                    "width": hidden,
                    "delay d (s)": d,
                    "forward (s)": round(r["forward_s"], 3),
                    "extra: forward + wait (s)": r3(extra),
                    "extra: step wall (s)": r3(extra_wall),
                    "ideal max(0, d - fwd)": round(ideal, 3),
                    "target ideal + 0.1 d": round(target, 3),
                    "within (forward + wait)": extra <= target,
                    "within (step wall)": extra_wall <= target,
                    "sequential B*d": round(cli.prompts * d, 3),
                }
            )
    caption = (
        f"B = {cli.prompts} prompts x 4 responses; delays interleaved step by step, median of "
        f"{cli.repeats} steps per delay after a warm-up"
    )
    notes = [
        f"{w}: the first request reached the server before the forward pass ended in "
        f"{sum(o)} of {len(o)} steps with d > 0"
        for w, o in overlapped.items()
    ]
    emit(rows, caption=caption, notes=notes, details={"overlapped": overlapped}, json_path=cli.json)


if __name__ == "__main__":
    main()
