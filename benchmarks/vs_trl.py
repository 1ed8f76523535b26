"""CycleAlign against TRL's GRPOTrainer with an LLM judge, on the same model and server.

Both trainers get the same tiny model, prompts, samples per prompt and judge server (a
local chat-completions server answering after a delay d). CycleAlign asks for one listwise
ranking per prompt (1 round per step); GRPO, TRL's way to use an LLM judge since its judge
classes were removed, scores every completion with an async reward function that makes
one judge call per completion. GRPO's ``per_device_train_batch_size`` counts completions,
so it is prompts x samples. Reported: wall time per step (median after a warm-up), judge
requests and tokens per step, and the ratios.

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
        if "<response id=" in content:
            reply = self.ranker(body, number)
        else:  # a pointwise score request from the GRPO reward function
            response = content.rsplit("Response:", 1)[-1]
            reply = Reply(str(min(10, response.count("e"))))
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


def run_grpo(server, judge, cli) -> dict[str, float]:
    from openai import AsyncOpenAI
    from trl import GRPOConfig, GRPOTrainer

    async def judge_reward(prompts, completions, **kwargs):
        client = AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)

        async def score(prompt, completion):
            answer = await client.chat.completions.create(
                model="judge",
                temperature=0,
                messages=[
                    {
                        "role": "user",
                        "content": SCORE_PROMPT.format(prompt=prompt, completion=completion),
                    }
                ],
            )
            match = re.search(r"\d+(\.\d+)?", answer.choices[0].message.content or "")
            return float(match.group()) if match else None

        try:
            return list(await asyncio.gather(*(score(p, c) for p, c in zip(prompts, completions))))
        finally:
            await client.close()

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
            "GRPOTrainer + pointwise judge": run_grpo(server, judge, cli),
        }
    cycle, grpo = results.values()
    # Fair only if every prompt was judged: one listwise request per prompt, one call per
    # completion.
    expected = {"cycle": cli.prompts, "grpo": cli.prompts * cli.samples}
    if [cycle["requests"], grpo["requests"]] != list(expected.values()):
        raise SystemExit(f"judge requests per step {cycle['requests']}, {grpo['requests']}")
    rows = [
        {
            "trainer": name,
            "wall s / step": round(r["step_s"], 3),
            "judge requests / step": round(r["requests"], 1),
            "judge tokens / step": round(r["tokens"]),
        }
        for name, r in results.items()
    ]
    rows.append(
        {
            "trainer": "ratio CycleAlign / GRPO",
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
