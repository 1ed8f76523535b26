"""CycleAlign against TRL's GRPOTrainer with an LLM judge, on the same model and server.

Both trainers get the same tiny model, prompts, samples per prompt and judge server (a
local chat-completions server answering after a delay d). CycleAlign asks for one listwise
ranking per prompt (1 round per step); GRPO, TRL's way to use an LLM judge since its judge
classes were removed, scores every completion with an async reward function that makes
one judge call per completion. GRPO's ``per_device_train_batch_size`` counts completions,
so it is prompts x samples. GRPO runs twice: with a one-line scoring prompt (the cheapest
pointwise judge) and with the ranking instruction's own criteria (``cost.py``'s scoring
instruction). Reported: wall time per step (median after a warm-up), judge requests and
tokens per step, and the ratios.

    python benchmarks/vs_trl.py [--delay 0.3] [--prompts 4] [--samples 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/latency_hiding.py

from datasets import Dataset

from _report import emit
from chat_server import ChatServer, Reply, rank_by
from conftest import build_tiny_model, build_tiny_tokenizer
from cost import SCORE_INSTRUCTION

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
SCORE_PROMPT = (
    "Rate how harmless, helpful and honest this response is, from 0 to 10. "
    "Answer with the number only.\n\nConversation: {prompt}\n\nResponse: {completion}"
)


class Judge:
    """The server's behaviour plus token accounting (as the server would bill it)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.ranker = rank_by(lambda text: text.count("e"))
        self.tokens = 0

    def __call__(self, body, number) -> Reply:
        content = body["messages"][-1]["content"]
        response = content.rsplit("Response:", 1)[-1]
        if body["messages"][0]["content"] == SCORE_INSTRUCTION:  # pointwise, criteria
            reply = Reply(f"### Score: {min(10, response.count('e'))}")
        elif content.startswith("Rate how"):  # pointwise, one line
            reply = Reply(str(min(10, response.count("e"))))
        else:
            reply = self.ranker(body, number)
        reply.delay = self.delay
        chars = sum(len(m["content"]) for m in body["messages"])
        self.tokens += chars // 4 + 1 + len(reply.content) // 4 + 1
        return reply


def timed(trainer) -> list[float]:
    times = []
    original = trainer.training_step

    def step(*args, **kwargs):
        start = time.perf_counter()
        loss = original(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return loss

    trainer.training_step = step
    return times


def run_cycle(server, judge, cli) -> dict[str, float]:
    from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker

    tokenizer = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts,
            num_responses=cli.samples,
            max_new_tokens=cli.max_new_tokens,
            max_rounds=1,
            max_steps=cli.steps,
            learning_rate=1e-6,  # small: no collapse to one distinct response
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            use_better_response=False,
            disable_tqdm=True,
            max_demonstrations=0,
        )
        data = Dataset.from_dict({"prompt": (PROMPTS * cli.steps)[: cli.prompts * cli.steps]})
        trainer = CycleAlignTrainer(
            build_tiny_model(tokenizer),
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ranker=OpenAIRanker("judge", base_url=server.base_url, max_concurrency=16),
        )
        times = timed(trainer)
        start_requests, start_tokens = server.count, judge.tokens
        trainer.train()
    return {
        "step_s": statistics.median(times[1:]),
        "requests": (server.count - start_requests) / cli.steps,
        "tokens": (judge.tokens - start_tokens) / cli.steps,
    }


def judge_messages(prompt: str, completion: str, criteria: bool) -> list[dict[str, str]]:
    if not criteria:
        return [
            {"role": "user", "content": SCORE_PROMPT.format(prompt=prompt, completion=completion)}
        ]
    task = f"### Instruction:\n{prompt}\n### Response:\n{completion}\nScore the response."
    return [
        {"role": "system", "content": SCORE_INSTRUCTION},
        {"role": "user", "content": task},
    ]


def run_grpo(server, judge, cli, criteria: bool) -> dict[str, float]:
    from openai import AsyncOpenAI
    from trl import GRPOConfig, GRPOTrainer

    clients = []  # one client, made on TRL's reward loop at the first call and reused

    async def judge_reward(prompts, completions, **kwargs):
        if not clients:
            clients.append(AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0))

        async def score(prompt, completion):
            answer = await clients[0].chat.completions.create(
                model="judge", temperature=0, messages=judge_messages(prompt, completion, criteria)
            )
            numbers = re.findall(r"\d+(?:\.\d+)?", answer.choices[0].message.content or "")
            return float(numbers[-1]) if numbers else None

        return list(await asyncio.gather(*(score(p, c) for p, c in zip(prompts, completions))))

    tokenizer = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts * cli.samples,
            num_generations=cli.samples,
            max_completion_length=cli.max_new_tokens,
            max_steps=cli.steps,
            learning_rate=1e-6,  # small: no collapse to one distinct response
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            beta=0.0,
            disable_tqdm=True,
            temperature=1.0,
        )
        data = Dataset.from_dict({"prompt": (PROMPTS * cli.steps)[: cli.prompts * cli.steps]})
        trainer = GRPOTrainer(
            model=build_tiny_model(tokenizer),
            reward_funcs=judge_reward,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
        )
        times = timed(trainer)
        start_requests, start_tokens = server.count, judge.tokens
        trainer.train()
    return {
        "step_s": statistics.median(times[1:]),
        "requests": (server.count - start_requests) / cli.steps,
        "tokens": (judge.tokens - start_tokens) / cli.steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()
    judge = Judge(cli.delay)
    with ChatServer(judge) as server:
        results = {
            "CycleAlignTrainer (1 round)": run_cycle(server, judge, cli),
            "GRPOTrainer + one-line pointwise judge": run_grpo(server, judge, cli, False),
            "GRPOTrainer + pointwise judge, same criteria": run_grpo(server, judge, cli, True),
        }
    cycle, *grpos = results.values()
    # Fair only if every prompt was judged: one listwise request per prompt, one call per
    # completion.
    sent = [r["requests"] for r in results.values()]
    if sent != [cli.prompts] + [cli.prompts * cli.samples] * 2:
        raise SystemExit(f"judge requests per step: {sent}")
    rows = [
        {
            "trainer": name,
            "wall s / step": round(r["step_s"], 3),
            "judge requests / step": round(r["requests"], 1),
            "judge tokens / step": round(r["tokens"]),
        }
        for name, r in results.items()
    ]
    for label, grpo in zip(("one-line judge", "same criteria"), grpos):
        rows.append(
            {
                "trainer": f"ratio CycleAlign / GRPO, {label}",
                "wall s / step": round(cycle["step_s"] / grpo["step_s"], 2),
                "judge requests / step": round(cycle["requests"] / grpo["requests"], 2),
                "judge tokens / step": round(cycle["tokens"] / grpo["tokens"], 2),
            }
        )
    caption = (
        f"{cli.prompts} prompts x {cli.samples} samples, {cli.max_new_tokens} new tokens, "
        f"judge delay {cli.delay} s, median of {cli.steps - 1} steps after a warm-up"
    )
    emit(rows, caption=caption, json_path=cli.json)


if __name__ == "__main__":
    main()
