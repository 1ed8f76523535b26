"""A run that learns nothing says so (trainer/failures.py): warnings naming the failure kinds,
`max_failed_steps` for failures no retry fixes, and outages that keep training alive."""

from __future__ import annotations

import logging

import pytest
from datasets import Dataset

from chat_server import Reply, rank_by
from cyclealign import CycleAlignConfig, CycleAlignTrainer, OpenAIRanker, RankResult, Usage
from cyclealign.trainer.failures import BlackBoxFailureError, FailureWatch
from cyclealign.trainer.stats import RoundStats
from helpers import PROMPTS as ALL_PROMPTS
from helpers import build_tiny_model

PROMPTS = [ALL_PROMPTS[i] for i in (0, 1)]
REFUSAL = "I'm sorry, but I can't help with comparing these responses."


def make_trainer(tmp_path, tokenizer, ranker, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_rounds=1,
        max_steps=4,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
    )
    return CycleAlignTrainer(
        build_tiny_model(tokenizer),
        CycleAlignConfig(**{**settings, **overrides}),
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
        processing_class=tokenizer,
        ranker=ranker,
    )


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("policy", ["skip", "whitebox"])
def test_a_refusing_server_stops_training_after_max_failed_steps(
    tmp_path, tiny_tokenizer, chat_server, caplog, policy
):
    server = chat_server(lambda body, n: Reply(REFUSAL))
    ranker = OpenAIRanker("judge", base_url=server.base_url, max_retries=0)
    trainer = make_trainer(
        tmp_path, tiny_tokenizer, ranker, max_failed_steps=2, ranker_failure_policy=policy
    )
    with caplog.at_level(logging.WARNING), pytest.raises(BlackBoxFailureError) as info:
        trainer.train()
    message = str(info.value)
    checkpoint = tmp_path / "checkpoint-2"
    assert trainer.state.global_step == 2  # not 4: stopped after the second failed step
    assert "2 consecutive steps" in message and "refusal" in message
    assert str(checkpoint) in message and (checkpoint / "model.safetensors").is_file()
    # One request and one repair per prompt per step, two steps: nothing more was paid.
    assert server.count == 2 * len(PROMPTS) * 2
    if policy == "whitebox":  # a white-box fallback trains, but is no black-box ranking
        assert trainer.state.log_history[0]["cycle/updates"] == 1


@pytest.mark.parametrize("policy", ["skip", "whitebox"])
def test_the_first_logging_interval_warns_with_the_kind_and_an_example(
    tmp_path, tiny_tokenizer, chat_server, caplog, policy
):
    server = chat_server(lambda body, n: Reply(REFUSAL))
    ranker = OpenAIRanker("judge", base_url=server.base_url, max_retries=0)
    trainer = make_trainer(
        tmp_path, tiny_tokenizer, ranker, max_steps=1, ranker_failure_policy=policy
    )
    with caplog.at_level(logging.WARNING):
        trainer.train()  # one step: whatever warned, warned in the first interval
    assert trainer.state.log_history[0]["ranker/failure_rate"] == 1.0
    rate = [m for m in warnings_of(caplog) if "failed for 100% of the prompts" in m]
    assert len(rate) == 1 and "refusal x2" in rate[0] and "unparseable answer" in rate[0]
    no_update = [m for m in warnings_of(caplog) if m.startswith("Step 1 made no update")]
    # A white-box fallback updates the weights: no "no update" warning then.
    assert len(no_update) == (policy == "skip")


def test_an_outage_keeps_training_alive_and_warning(tmp_path, tiny_tokenizer, chat_server, caplog):
    server = chat_server(lambda body, n: Reply(status=503))
    ranker = OpenAIRanker("judge", base_url=server.base_url, max_retries=1, backoff_base=0.01)
    trainer = make_trainer(tmp_path, tiny_tokenizer, ranker, max_steps=3, max_failed_steps=1)
    with caplog.at_level(logging.WARNING):
        output = trainer.train()  # no error: 503s are an outage, not the answers' fault
    assert trainer.state.global_step == 3 and server.count == 3 * len(PROMPTS) * 2
    no_update = [m for m in warnings_of(caplog) if "made no update" in m and "Step" in m]
    assert len(no_update) == 3 and all("server x2" in m for m in no_update)
    assert output.metrics["steps_without_update"] == 3
    assert any("3 of 3 steps made no update" in m for m in warnings_of(caplog))


def test_a_working_server_warns_nothing(tmp_path, tiny_tokenizer, chat_server, caplog):
    server = chat_server(rank_by(len))
    ranker = OpenAIRanker("judge", base_url=server.base_url, max_retries=0)
    trainer = make_trainer(tmp_path, tiny_tokenizer, ranker, max_steps=2)
    with caplog.at_level(logging.WARNING, logger="cyclealign"):
        output = trainer.train()
    assert output.metrics["steps_without_update"] == 0
    assert not [r for r in caplog.records if r.name.startswith("cyclealign.trainer")]


def failed(kind: str) -> RankResult:
    usage = Usage()
    usage.failures[kind] += 1
    return RankResult(None, error=f"{kind} happened", usage=usage)


def step(watch: FailureWatch, results: list[RankResult], updates: int = 0) -> bool:
    stats = RoundStats(prompts=len(results), ranked=sum(r.ok for r in results))
    stats.hard_failures = watch.observe(results)
    return watch.end_step(1, stats, updates)


def test_only_consecutive_steps_of_non_transient_failures_count():
    watch = FailureWatch(max_failed_steps=2)
    assert not step(watch, [failed("refusal"), failed("missing")])
    assert not step(watch, [RankResult([0, 1]), failed("missing")], updates=1)  # streak broken
    assert not step(watch, [failed("timeout"), failed("server"), failed("late")])  # outage
    assert watch.consecutive == 0
    assert not step(watch, [failed("bad_request")])
    assert step(watch, [failed("budget"), failed("timeout")]) and watch.stopped
    assert "bad_request x1" in watch.stop_message("ck") and "budget x1" in watch.stop_message("ck")
    assert "refusal" not in watch.stop_message("ck")  # that streak ended
    assert watch.steps_without_update == 4 and watch.steps_without_ranking == 4


def test_none_never_stops_and_a_rankerless_failure_is_other():
    watch = FailureWatch(max_failed_steps=None)
    for _ in range(5):
        assert not step(watch, [RankResult(None, error="submit() raised")])
    assert watch.consecutive == 5 and "other x5" in watch.describe()
    watch.check_interval(1.0)
    assert watch.describe().startswith("no black-box failure")
