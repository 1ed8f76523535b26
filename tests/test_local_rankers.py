"""Local rankers: reward functions, reward models and the local chat model."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import build_tiny_model, build_tiny_reward_model
from cyclealign.rankers.base import RankRequest, is_permutation
from cyclealign.rankers.local import FunctionRanker, LocalChatRanker, RewardModelRanker


def test_function_ranker_sorts_by_score_and_isolates_failures():
    def reward(prompts, completions, **kwargs):
        if any("boom" in c for c in completions):
            raise RuntimeError("boom")
        return [float(len(c)) for c in completions]

    ranker = FunctionRanker(reward, batch_size=3)
    results = ranker.rank(
        [
            RankRequest("p", ["aa", "a", "aaa"]),
            RankRequest("q", ["boom", "x"]),
            RankRequest("r", ["bb", "b"]),
        ]
    )
    assert results[0].ranking == [2, 0, 1] and results[0].scores == [2.0, 1.0, 3.0]
    assert results[1].ranking is None and "boom" in results[1].error
    assert results[2].ranking == [0, 1]
    assert ranker.usage.failures == {"reward_fn": 1} and ranker.usage.requests == 3


def test_function_ranker_async_and_wrong_length():
    async def reward(prompts, completions):
        return [1.0]

    (result,) = FunctionRanker(reward).rank([RankRequest("p", ["a", "b"])])
    assert result.ranking is None and "1 scores for 2 completions" in result.error


@pytest.fixture(scope="module")
def reward_model(tiny_tokenizer):
    return build_tiny_reward_model(tiny_tokenizer)


def test_reward_model_ranker_matches_its_scores_and_batching(reward_model, tiny_tokenizer):
    requests = [
        RankRequest("How do I bake bread?", ["Mix flour.", "No.", "Bake it at 200."]),
        RankRequest([{"role": "user", "content": "hello"}], ["hi", "hello world"]),
    ]
    batched = RewardModelRanker(reward_model, tiny_tokenizer, batch_size=5)
    one_by_one = RewardModelRanker(reward_model, tiny_tokenizer, batch_size=1)
    results = batched.rank(requests)
    for request, result in zip(requests, results):
        single = one_by_one.score([request.prompt] * len(request.responses), request.responses)
        torch.testing.assert_close(result.scores, single, rtol=1e-4, atol=1e-5)
        assert result.ranking == sorted(range(len(single)), key=lambda i: -single[i])
    assert batched.usage.requests == 2


@pytest.fixture(scope="module")
def chat_ranker(tiny_tokenizer):
    return LocalChatRanker(build_tiny_model(tiny_tokenizer, seed=1), tiny_tokenizer, seed=0)


def test_local_chat_ranker_always_returns_valid_permutations(chat_ranker):
    rng = random.Random(0)
    words = ["bread", "flour", "no", "yes", "dog", "cat", "red", "blue"]
    requests = [
        RankRequest(f"question {i}", [" ".join(rng.choices(words, k=3)) for _ in range(n)])
        for i, n in enumerate([2, 3, 4, 5, 6, 2, 3])
    ]
    results = chat_ranker.rank(requests)
    for request, result in zip(requests, results):
        assert is_permutation(result.ranking, len(request.responses)), result
        assert result.raw_text.startswith("### The desired ranking is: [")
    assert [r.ranking for r in chat_ranker.rank(requests)] == [r.ranking for r in results]


def test_local_chat_ranker_picks_the_most_likely_answer(chat_ranker, monkeypatch):
    # With scoring under control, the chosen answer and its mapping back are checkable.
    def score(prefix_ids, texts):
        return [1.0 if t.endswith("[2, 0, 1]") else 0.0 for t in texts]

    monkeypatch.setattr(chat_ranker, "score_continuations", score)
    request = RankRequest("q", ["a", "b", "c"])
    (result,) = chat_ranker.rank([request])
    _, order = chat_ranker.template.build_messages(request, seed=0)
    assert result.ranking == [order[2], order[0], order[1]]


def test_cached_prefix_scoring_equals_a_full_forward(chat_ranker, tiny_tokenizer):
    prefix = tiny_tokenizer("Human: hello world", return_tensors="pt").input_ids
    texts = ["yes", "no maybe good"]
    fast = chat_ranker.score_continuations(prefix, texts)
    for text, value in zip(texts, fast):
        ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
        full = torch.cat([prefix, torch.tensor([ids])], dim=1)
        with torch.no_grad():
            logps = chat_ranker.model(full).logits[0, :-1].log_softmax(-1)
        expected = sum(logps[prefix.shape[1] - 1 + k, t].item() for k, t in enumerate(ids))
        assert value == pytest.approx(expected, abs=1e-4)
