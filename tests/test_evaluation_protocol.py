"""The paper's evaluation protocol on tiny models and a local judge server."""

from __future__ import annotations

import pytest

from chat_server import ChatServer, Reply, shown_responses
from cyclealign.evaluation.protocol import (
    generate_responses,
    judge_template,
    pairwise_judgement,
    ranking_accuracy,
    reward_table,
)
from cyclealign.rankers import FunctionRanker, OpenAIRanker, RewardModelRanker
from cyclealign.types import Demonstration
from helpers import build_tiny_model, build_tiny_reward_model

PROMPTS = ["How do I bake bread?", [{"role": "user", "content": "Tell me a joke."}], "hello"]


def test_generation_and_reward_table(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    answers = generate_responses(
        model, tiny_tokenizer, PROMPTS, max_completion_length=5, batch_size=2
    )
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    # Batching and left padding do not change greedy answers.
    assert answers == [
        generate_responses(model, tiny_tokenizer, [p], max_completion_length=5)[0] for p in PROMPTS
    ]
    scorer = RewardModelRanker(build_tiny_reward_model(tiny_tokenizer), tiny_tokenizer)
    rows = reward_table(PROMPTS, answers, ["a", "b", "a"], scorer)
    scores = scorer.score(PROMPTS, answers)
    assert [r["subset"] for r in rows] == ["a", "b", "total"]
    assert rows[0]["reward"] == pytest.approx((scores[0] + scores[2]) / 2)
    assert rows[2] == {"subset": "total", "n": 3, "reward": pytest.approx(sum(scores) / 3)}


def test_generation_ends_answers_at_stop_strings(tiny_tokenizer):
    from transformers import LogitsProcessorList

    from test_sampling import ForceText

    model = build_tiny_model(tiny_tokenizer)
    original = model.generate

    def forced(**kwargs):
        processor = ForceText(tiny_tokenizer, "yes no Human: hello ", kwargs["input_ids"].shape[1])
        return original(**kwargs, logits_processor=LogitsProcessorList([processor]))

    model.generate = forced
    on = generate_responses(model, tiny_tokenizer, PROMPTS, max_completion_length=16)
    assert all(a.startswith("yes no Human:") for a in on)
    cut = generate_responses(
        model, tiny_tokenizer, PROMPTS, max_completion_length=16, stop_strings=["Human:"]
    )
    assert cut == ["yes no"] * 3


def judge_server(pick_first: bool):
    def handler(body, number):
        shown = shown_responses(body["messages"][-1]["content"])
        if pick_first:  # always "A": pure position bias
            return Reply("Response 0 reads better.\n### The desired ranking is: [0, 1]")
        best = max(range(2), key=lambda k: len(shown[k]))  # a judge that likes long answers
        return Reply(f"### The desired ranking is: [{best}, {1 - best}]")

    return ChatServer(handler)


def test_a_judge_that_always_answers_a_gives_only_ties():
    with judge_server(pick_first=True) as server:
        judge = OpenAIRanker("judge", base_url=server.base_url, template=judge_template())
        outcome = pairwise_judgement(PROMPTS, ["long answer"] * 3, ["short"] * 3, judge)
        first = server.requests[0].body["messages"]
    assert outcome["tie"] == 1.0 and outcome["n"] == 3 and outcome["judge_failures"] == 0
    assert "step by step" in first[0]["content"] and len(first) == 2  # no demonstration


def test_a_consistent_judge_gives_wins_and_losses():
    with judge_server(pick_first=False) as server:
        judge = OpenAIRanker("judge", base_url=server.base_url, template=judge_template())
        outcome = pairwise_judgement(
            PROMPTS,
            ["a long answer", "x", "another long one"],
            ["short", "a much longer one", "tiny"],
            judge,
        )
    assert outcome == {"win": 2 / 3, "tie": 0.0, "lose": 1 / 3, "n": 3, "judge_failures": 0}


def test_a_shuffling_judge_is_refused():
    with pytest.raises(ValueError, match="judge_template"):
        pairwise_judgement(PROMPTS, ["a"] * 3, ["b"] * 3, OpenAIRanker("j", base_url="http://x"))


def test_ranking_accuracy_with_and_without_demonstrations():
    seen = []

    def prefers_long(prompts, completions, **kwargs):
        seen.append(len(prompts))
        # TRL's convention: a chat prompt's completion is a message list.
        texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
        return [float(len(t)) for t in texts]

    ranker = FunctionRanker(prefers_long)
    chosen = ["a detailed helpful reply", "short", "another good long reply"]
    rejected = ["no", "a long but rejected reply", "nope"]
    result = ranking_accuracy(PROMPTS, chosen, rejected, ranker)
    assert result == {"accuracy": 2 / 3, "failures": 0.0, "n": 3}
    demo = Demonstration("q", ["good", "bad"], [0, 1])
    with judge_server(pick_first=False) as server:
        judge = OpenAIRanker("judge", base_url=server.base_url)
        with_demos = ranking_accuracy(PROMPTS, chosen, rejected, judge, [demo])
        assert all(len(r.body["messages"]) == 6 for r in server.requests)  # static + demo
    assert with_demos["n"] == 3 and with_demos["failures"] == 0.0
