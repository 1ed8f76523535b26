"""The trainer with the real OpenAIRanker against a real local chat-completions server."""

from __future__ import annotations

import time

import pytest
from datasets import Dataset

import cyclealign.trainer.cycle as cycle_module
from chat_server import ChatServer, rank_by
from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker
from helpers import PROMPTS as ALL_PROMPTS
from helpers import build_tiny_model

PROMPTS = [ALL_PROMPTS[i] for i in (0, 1, 3, 5)]


def make_trainer(tmp_path, tokenizer, ranker, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=3,
        max_completion_length=6,
        max_rounds=1,
        max_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    args = CycleAlignConfig(**{**settings, **overrides})
    return CycleAlignTrainer(
        build_tiny_model(tokenizer),
        args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tokenizer,
        ranker=ranker,
    )


@pytest.mark.slow
def test_black_box_latency_is_hidden_behind_the_forward_pass(tmp_path, tiny_tokenizer, monkeypatch):
    delay = 2.0
    forward = {}
    original = cycle_module.candidate_token_logps

    def timed_forward(*args, **kwargs):
        forward.setdefault("start", time.monotonic())
        # The tiny model's forward takes milliseconds; a real one takes longer than sending
        # a few HTTP requests. Stand in for that compute time.
        time.sleep(0.3)
        out = original(*args, **kwargs)
        forward.setdefault("end", time.monotonic())
        return out

    monkeypatch.setattr(cycle_module, "candidate_token_logps", timed_forward)
    handler = rank_by(lambda text: text.count("e"))

    def slow(body, number):
        reply = handler(body, number)
        reply.delay = delay
        return reply

    with ChatServer(slow) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url, max_concurrency=8)
        trainer = make_trainer(tmp_path, tiny_tokenizer, ranker)
        trainer.train()
        arrivals = [r.received for r in server.requests]
    metrics = trainer.state.log_history[0]
    assert len(arrivals) == len(PROMPTS)
    # All requests were on the wire while the forward pass ran (each is answered only
    # `delay` later), so the trainer waited less than one delay after its forward pass.
    assert max(arrivals) < forward["end"]
    assert max(arrivals) - min(arrivals) < 0.5 * delay  # sent together, not one by one
    assert metrics["time/rank_wait"] < delay
    assert metrics["ranker/requests"] == len(PROMPTS)
    assert metrics["cycle/updates"] == 1


def test_cached_rerun_makes_no_request(tmp_path, tiny_tokenizer):
    cache = tmp_path / "answers.sqlite"
    with ChatServer(rank_by(len)) as server:
        for run in range(2):
            ranker = OpenAIRanker("judge", base_url=server.base_url, cache_path=cache)
            trainer = make_trainer(tmp_path / f"run{run}", tiny_tokenizer, ranker, seed=3)
            trainer.train()
            ranker.close()
        assert server.count == len(PROMPTS)  # the second run was served from the cache
    assert trainer.state.log_history[0]["ranker/cache_hits"] == len(PROMPTS)


def test_dynamic_demonstration_switches_reach_the_prompt(tmp_path, tiny_tokenizer):
    def user_turns(body):
        return [m["content"] for m in body["messages"] if m["role"] == "user"]

    with ChatServer(rank_by(len)) as server:
        for run, dynamic in enumerate([True, False]):
            ranker = OpenAIRanker("judge", base_url=server.base_url)
            make_trainer(
                tmp_path / f"r{run}",
                tiny_tokenizer,
                ranker,
                max_rounds=2,
                stop_on_full_agreement=False,
                use_dynamic_demonstrations=dynamic,
                max_demonstrations=2,
            ).train()
        with_dynamic = [user_turns(r.body) for r in server.requests[: 2 * len(PROMPTS)]]
        without = [user_turns(r.body) for r in server.requests[2 * len(PROMPTS) :]]
    # Round 2 of the first run shows the static demonstration and pool demonstrations.
    assert max(len(turns) for turns in with_dynamic) > 2
    # Without dynamic demonstrations: the static one and the query, every time.
    assert {len(turns) for turns in without} == {2}
    assert all("landlord" in turns[0] for turns in without)


def test_without_any_demonstration_the_prompt_is_bare(tmp_path, tiny_tokenizer):
    with ChatServer(rank_by(len)) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url)
        trainer = make_trainer(
            tmp_path,
            tiny_tokenizer,
            ranker,
            max_rounds=2,
            stop_on_full_agreement=False,
            use_dynamic_demonstrations=False,
            use_static_demonstration=False,
        )
        trainer.train()
        roles = {tuple(m["role"] for m in r.body["messages"]) for r in server.requests}
    assert roles == {("system", "user")}  # instruction and query only: "w/o ICL"
    logged = trainer.state.log_history[0]
    assert logged["ablation/static_demonstration"] == 0.0
    assert logged["ablation/dynamic_demonstrations"] == 0.0


def test_a_default_openai_ranker_asks_for_the_better_response_the_trainer_uses(
    tmp_path, tiny_tokenizer
):
    from cyclealign.rankers.prompt import BETTER_MARKER, RankingTemplate

    ranked = rank_by(len)

    def with_better(body, number):
        reply = ranked(body, number)
        reply.content += f"\n{BETTER_MARKER}\nParis is the capital of France."
        return reply

    asks = RankingTemplate().better_response_instruction
    with ChatServer(with_better) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url)
        assert ranker.request_better_response is None  # the default: follow the trainer
        trainer = make_trainer(tmp_path, tiny_tokenizer, ranker)  # use_better_response=True
        trainer.train()
        tasks = [r.body["messages"][-1]["content"] for r in server.requests]
    assert len(tasks) == len(PROMPTS) and all(task.endswith(asks) for task in tasks)
    assert trainer.state.log_history[0]["ranker/better_responses"] == len(PROMPTS)
    # Turned off in the trainer, the same default asks for none.
    with ChatServer(with_better) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url)
        make_trainer(tmp_path / "off", tiny_tokenizer, ranker, use_better_response=False).train()
        assert not any(asks in r.body["messages"][-1]["content"] for r in server.requests)
