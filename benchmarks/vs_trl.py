"""CycleAlign against TRL's GRPOTrainer with an LLM judge, on the same model and server.

Both trainers get the same tiny model, chat-formatted prompts, samples per prompt, sampling
settings (temperature 1, no top-k/top-p), precision (fp32), no activation checkpointing and
judge server. CycleAlign asks for one listwise ranking per prompt (1 round per step); GRPO,
TRL's way to use an LLM judge since its judge classes were removed, scores every
completion with an async reward function that makes one judge call per completion (one
client, reused). GRPO's ``per_device_train_batch_size`` counts completions, so it is
prompts x samples. GRPO runs with a one-line scoring prompt and with the ranking
instruction's own criteria (``cost.py``'s scoring instruction).

Two judge latency models: a fixed delay per request (the issue's setting), and a delay that
also grows with the request's prompt and answer tokens, as a real server's prefill and
decoding do (a listwise answer is longer than a score). Whole optimizer steps are timed
(step begin to step end); the trainers alternate, ``--repeats`` runs each.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/latency_hiding.py

from datasets import Dataset

from _report import emit
from _timing import StepTimer
from chat_server import ChatServer, Reply, rank_by
from cost import SCORE_INSTRUCTION
from helpers import PROMPTS, build_tiny_model, build_tiny_tokenizer

SCORE_PROMPT = (
    "Rate how harmless, helpful and honest this response is, from 0 to 10. "
    "Answer with the number only.\n\nConversation: {prompt}\n\nResponse: {completion}"
)


class Judge:
    """The server's behaviour, its latency model and its token accounting (chars / 4, as the
    test server bills)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.prefill_s = self.decode_s = 0.0  # per prompt / answer token
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
        prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4 + 1
        answer_tokens = len(reply.content) // 4 + 1
        reply.delay = self.delay + self.prefill_s * prompt_tokens + self.decode_s * answer_tokens
        self.tokens += prompt_tokens + answer_tokens
        return reply


def train(trainer, server, judge, steps: int) -> dict[str, float | list[float]]:
    timer = StepTimer()
    trainer.add_callback(timer)
    start_requests, start_tokens = server.count, judge.tokens
    trainer.train()
    assert len(timer.times) == steps
    return {
        "step_s": timer.times[1:],  # the first step warms up
        "requests": (server.count - start_requests) / steps,
        "tokens": (judge.tokens - start_tokens) / steps,
    }


def run_cycle(server, judge, cli) -> dict:
    from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker

    tokenizer = build_tiny_tokenizer()
    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts,
            num_generations=cli.samples,
            max_completion_length=cli.max_completion_length,
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
        chats = [[{"role": "user", "content": p}] for p in PROMPTS]  # as GRPO's prompts below
        data = Dataset.from_dict({"prompt": (chats * cli.steps)[: cli.prompts * cli.steps]})
        trainer = CycleAlignTrainer(
            build_tiny_model(tokenizer),
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ranker=OpenAIRanker("judge", base_url=server.base_url, max_concurrency=16),
        )
        assert not args.bf16 and not args.gradient_checkpointing
        return train(trainer, server, judge, cli.steps)


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


def run_grpo(server, judge, cli, criteria: bool) -> dict:
    from openai import AsyncOpenAI
    from trl import GRPOConfig, GRPOTrainer

    clients = []  # one client, made on TRL's reward loop at the first call and reused

    async def judge_reward(prompts, completions, **kwargs):
        if not clients:
            clients.append(AsyncOpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0))

        async def score(prompt, completion):
            # Conversational data: the last user turn and the completion's text.
            prompt, completion = prompt[-1]["content"], completion[0]["content"]
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
            max_completion_length=cli.max_completion_length,
            max_steps=cli.steps,
            learning_rate=1e-6,  # small: no collapse to one distinct response
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            beta=0.0,
            disable_tqdm=True,
            # TRL's defaults are bf16 and activation checkpointing; CycleAlign runs fp32
            # without it here, so GRPO must too.
            bf16=False,
            gradient_checkpointing=False,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
        )
        # Chat-formatted prompts, as the CycleAlign collator formats its prompts.
        prompts = (PROMPTS * cli.steps)[: cli.prompts * cli.steps]
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
        trainer = GRPOTrainer(
            model=build_tiny_model(tokenizer),
            reward_funcs=judge_reward,
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
        )
        assert not trainer.args.bf16 and not trainer.model.is_activation_checkpointing
        return train(trainer, server, judge, cli.steps)


TRAINERS = {
    "CycleAlignTrainer (1 round)": lambda s, j, c: run_cycle(s, j, c),
    "GRPOTrainer + one-line pointwise judge": lambda s, j, c: run_grpo(s, j, c, False),
    "GRPOTrainer + pointwise judge, same criteria": lambda s, j, c: run_grpo(s, j, c, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.3, help="seconds per request")
    parser.add_argument("--prefill_ms", type=float, default=0.1, help="per prompt token")
    parser.add_argument("--decode_ms", type=float, default=10.0, help="per answer token")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each trainer")
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()
    latency_models = {
        f"fixed {cli.delay} s": (0.0, 0.0),
        f"{cli.delay} s + {cli.prefill_ms} ms/prompt token + {cli.decode_ms} ms/answer token": (
            cli.prefill_ms / 1000,
            cli.decode_ms / 1000,
        ),
    }
    judge = Judge(cli.delay)
    rows = []
    with ChatServer(judge) as server:
        for latency, (judge.prefill_s, judge.decode_s) in latency_models.items():
            runs = {name: [] for name in TRAINERS}
            for _ in range(cli.repeats):  # alternating, so drift hits every trainer alike
                for name, run in TRAINERS.items():
                    runs[name].append(run(server, judge, cli))
            results = {
                name: {
                    "step_s": statistics.median(t for r in rs for t in r["step_s"]),
                    "requests": statistics.mean(r["requests"] for r in rs),
                    "tokens": statistics.mean(r["tokens"] for r in rs),
                }
                for name, rs in runs.items()
            }
            # Fair only if every prompt was judged: one listwise request per prompt, one call
            # per completion.
            sent = [r["requests"] for r in results.values()]
            if sent != [cli.prompts] + [cli.prompts * cli.samples] * 2:
                raise SystemExit(f"judge requests per step: {sent}")
            rows += latency_rows(latency, results)
    caption = (
        f"{cli.prompts} prompts x {cli.samples} samples, {cli.max_completion_length} new tokens; "
        f"median of {cli.repeats} x {cli.steps - 1} steps after warm-ups, trainers alternating"
    )
    emit(rows, caption=caption, json_path=cli.json)


def latency_rows(latency: str, results: dict[str, dict[str, float]]) -> list[dict]:
    rows = [
        {
            "judge latency": latency,
            "trainer": name,
            "wall s / step": round(r["step_s"], 3),
            "judge requests / step": round(r["requests"], 1),
            "judge tokens / step": round(r["tokens"]),
        }
        for name, r in results.items()
    ]
    cycle, *grpos = results.values()
    for label, grpo in zip(("one-line judge", "same criteria"), grpos):
        rows.append(
            {
                "judge latency": latency,
                "trainer": f"ratio CycleAlign / GRPO, {label}",
                "wall s / step": round(cycle["step_s"] / grpo["step_s"], 2),
                "judge requests / step": round(cycle["requests"] / grpo["requests"], 2),
                "judge tokens / step": round(cycle["tokens"] / grpo["tokens"], 2),
            }
        )
    return rows


if __name__ == "__main__":
    main()
