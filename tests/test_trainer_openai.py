"""The trainer with the real OpenAIRanker against a real local chat-completions server."""

from __future__ import annotations

import json
import time

import pytest
from datasets import Dataset

import cyclealign.trainer.cycle as cycle_module
from chat_server import ChatServer, rank_by
from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker
from helpers import PROMPTS as ALL_PROMPTS
from helpers import build_tiny_model

PROMPTS = [ALL_PROMPTS[i] for i in (0, 1, 3, 5)]


def make_trainer(tmp_path, tokenizer, ranker, prompts=PROMPTS, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=3,
        max_completion_length=6,
        max_rounds=1,
        max_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    args = CycleAlignConfig(**{**settings, **overrides})
    return CycleAlignTrainer(
        build_tiny_model(tokenizer),
        args,
        train_dataset=Dataset.from_dict({"prompt": list(prompts)}),
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


def test_a_planted_key_is_in_no_file_written_even_when_the_server_echoes_it(
    tmp_path, tiny_tokenizer, caplog
):
    from chat_server import ECHO_KEY, ECHO_MASKED_KEY, Reply

    secret = "sk-PLANTED-0123456789abcdefXYZ"
    judge = rank_by(len)
    error = {"error": {"message": f"Incorrect API key provided: {ECHO_MASKED_KEY}", "type": "x"}}

    def echoing(body, number):
        if number % 3 == 2:  # a rejected request quoting the key, masked, in its error
            return Reply(status=400, error_body=error)
        reply = judge(body, number)
        reply.content = (
            f"Key {ECHO_KEY} ({ECHO_MASKED_KEY}).\n{reply.content}\n"
            f"### A better response is:\nYour key is {ECHO_KEY}, part {ECHO_KEY[:14]}"
        )
        return reply

    with ChatServer(echoing) as server, caplog.at_level("DEBUG"):
        ranker = OpenAIRanker(
            "judge",
            base_url=server.base_url,
            api_key=secret,
            cache_path=tmp_path / "out" / "answers.sqlite",
            request_better_response=True,
            max_retries=0,
        )
        trainer = make_trainer(
            tmp_path / "out",
            tiny_tokenizer,
            ranker,
            max_steps=2,
            save_strategy="steps",
            save_steps=1,
            round_log=True,
            logging_steps=1,
        )
        trainer.train()
        ranker.close()
        assert any(secret in json.dumps(r.headers) for r in server.requests)
    assert trainer.state.log_history[0]["ranker/better_responses"] > 0  # echoes were used
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "round_log.jsonl" for p in files)
    assert any(p.name.startswith("answers.sqlite") for p in files)
    assert any("checkpoint-2" in p.parts for p in files)
    pieces = {secret[i : i + 8] for i in range(len(secret) - 7)}
    pieces.add(f"{secret[:12]}****{secret[-4:]}")
    for path in files:
        blob = path.read_bytes()
        leaked = [p for p in pieces if p.encode() in blob]
        assert not leaked, f"{path} holds {leaked}"
    assert not [p for p in pieces if p in caplog.text]


@pytest.mark.slow
def test_a_round_ends_at_its_deadline_and_the_late_answer_is_cached_for_a_rerun(
    tmp_path, tiny_tokenizer
):

    judge = rank_by(len)
    slow_prompt = PROMPTS[1]

    def handler(body, number):
        reply = judge(body, number)
        if slow_prompt in body["messages"][-1]["content"]:
            reply.trickle_s = 6.0  # a valid answer, far slower than the round's deadline
        return reply

    cache = tmp_path / "answers.sqlite"
    with ChatServer(handler) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url, cache_path=cache, timeout=30)
        trainer = make_trainer(tmp_path / "run0", tiny_tokenizer, ranker, ranking_deadline=2.0)
        start = time.monotonic()
        trainer.train()
        took = time.monotonic() - start
        logged = trainer.state.log_history[0]
        slow = [i for i, r in enumerate(server.requests) if slow_prompt in r.last_user_message]
        assert len(slow) == 1 and server.count == len(PROMPTS)
        deadline = time.monotonic() + 20
        while slow[0] not in server.completed and time.monotonic() < deadline:
            time.sleep(0.1)
        assert slow[0] in server.completed  # the late answer was sent whole, not cancelled
        time.sleep(0.5)  # and cached by the ranker's background loop
        ranker.close()
        rerun_ranker = OpenAIRanker("judge", base_url=server.base_url, cache_path=cache)
        rerun = make_trainer(tmp_path / "run1", tiny_tokenizer, rerun_ranker, ranking_deadline=2.0)
        rerun.train()
        assert server.count == len(PROMPTS)  # the re-run paid for nothing
    assert took < 6.0  # the round did not wait for the trickled answer
    assert logged["ranker/late"] == 1 and logged["ranker/failures"] == 1
    assert logged["cycle/updates"] == 1  # trained on the three rankings that came in time
    again = rerun.state.log_history[0]
    assert again["ranker/late"] == 0 and again["ranker/cache_hits"] == len(PROMPTS)


def test_a_bad_row_is_reported_at_construction_before_any_request(tmp_path, tiny_tokenizer, caplog):
    prompts = [ALL_PROMPTS[i % len(ALL_PROMPTS)] for i in range(120)]
    prompts[100] = None
    with ChatServer(rank_by(len)) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url)
        with caplog.at_level("WARNING"):
            trainer = CycleAlignTrainer(
                build_tiny_model(tiny_tokenizer),
                CycleAlignConfig(
                    output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=3,
                    max_completion_length=6, max_rounds=1, max_steps=1, report_to="none",
                    save_strategy="no", use_cpu=True,
                ),
                train_dataset=Dataset.from_dict({"prompt": prompts}),
                processing_class=tiny_tokenizer,
                ranker=ranker,
            )  # fmt: skip
        assert server.count == 0  # reported before anything was sent
        assert "1 of 120 rows dropped" in caplog.text and "row 100: None" in caplog.text
        assert len(trainer.train_dataset) == 119
        trainer.train()
    summary = trainer.state.log_history[-1]
    assert "train_runtime" in summary
    assert summary["data/invalid_rows"] == 1 and summary["data/invalid_rows/no_prompt"] == 1


def test_the_black_box_is_shown_the_truncated_conversation(tmp_path, tiny_tokenizer):
    question = "How do I bake bread?"
    huge = "hello world " * 8334 + question  # 100,000 characters and more
    assert len(huge) > 100_000
    with ChatServer(rank_by(len)) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url)
        prompts = [huge, *PROMPTS[1:]]
        trainer = make_trainer(
            tmp_path, tiny_tokenizer, ranker, prompts, max_prompt_length=32, round_log=True
        )
        trainer.train()
        sent = [r.last_user_message for r in server.requests if question in r.last_user_message]
    (task,) = sent
    assert "### Instruction:\n[...] " in task  # marked where it was cut
    assert len(task) < 2_000  # not the whole prompt
    shown = task.split("### Responses:")[0]
    assert shown.count("hello world") < 20
    rows = [json.loads(line) for line in (tmp_path / "round_log.jsonl").open()]
    (row,) = [r for r in rows if r["prompt"] == huge]
    assert row["ranker_prompt"].startswith("[...]") and row["ranker_prompt"].endswith(question)
    assert row["ranker_prompt"] in task


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
