"""Local rankers: reward models and the local chat model (reward functions:
test_reward_functions.py)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from cyclealign.agreement import is_permutation
from cyclealign.rankers.local import LocalChatRanker, RewardModelRanker
from cyclealign.rankers.prompt import RankingTemplate
from cyclealign.types import RankRequest
from helpers import build_tiny_model, build_tiny_reward_model, build_tiny_tokenizer

# A short instruction and no static demonstration keep the prompt (and the tests) small.
SHORT = RankingTemplate(instruction="Rank the responses.", static_demonstration=None)


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


def test_reward_model_without_chat_template_and_left_truncation(reward_model):
    tokenizer = build_tiny_tokenizer(chat_template=False)
    ranker = RewardModelRanker(reward_model, tokenizer, max_length=8)
    assert ranker.text("Why?", "Because.") == "\n\nHuman: Why?\n\nAssistant: Because."
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bread?"},
    ]
    assert ranker.text(chat, "Yes.") == (
        "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bread?\n\nAssistant: Yes."
    )
    # Truncation keeps the end of the text, where the response is.
    text = ranker.text("How do I bake bread at home?", "Mix flour, water and yeast.")
    tail = tokenizer(text).input_ids[-8:]
    with torch.no_grad():
        expected = reward_model(input_ids=torch.tensor([tail])).logits[0, 0].item()
    (score,) = ranker.score(["How do I bake bread at home?"], ["Mix flour, water and yeast."])
    assert score == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def chat_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer, seed=1)


@pytest.fixture(scope="module")
def chat_ranker(chat_model, tiny_tokenizer):
    return LocalChatRanker(chat_model, tiny_tokenizer, template=SHORT, seed=0)


def random_requests(seed: int, sizes: list[int]) -> list[RankRequest]:
    rng = random.Random(seed)
    words = ["bread", "flour", "no", "yes", "dog", "cat", "red", "blue", "hello", "world"]
    return [
        RankRequest(
            " ".join(rng.choices(words, k=4)),
            [" ".join(rng.choices(words, k=rng.randint(1, 5))) for _ in range(n)],
        )
        for n in sizes
    ]


def test_local_chat_ranker_always_returns_valid_permutations(chat_ranker):
    requests = random_requests(0, [2, 3, 4, 5, 6, 7, 2, 3, 4, 6, 2, 3, 1])
    results = chat_ranker.rank(requests)
    for request, result in zip(requests, results):
        assert is_permutation(result.ranking, len(request.responses)), result
        assert result.error is None and result.raw_text.startswith("### The desired ranking is: [")
        # raw_text is the answer in displayed indices; mapped back it is the ranking.
        displayed = [int(i) for i in re.findall(r"\d+", result.raw_text)]
        _, order = chat_ranker.template.build_messages(request, seed=0)
        assert chat_ranker.template.map_back(displayed, order) == result.ranking
    assert chat_ranker.usage.requests >= len(requests)
    # The same seed, another instance: the same rankings.
    again = LocalChatRanker(chat_ranker.model, chat_ranker.tokenizer, template=SHORT, seed=0)
    some = requests[3:7]  # n = 5, 6, 7, 2: both paths
    assert [r.ranking for r in again.rank(some)] == [r.ranking for r in results[3:7]]


def test_local_chat_ranker_with_the_default_template_and_demonstrations(chat_model, tiny_tokenizer):
    from cyclealign.types import Demonstration

    ranker = LocalChatRanker(chat_model, tiny_tokenizer)
    demo = Demonstration("hello", ["yes", "no", "maybe"], [2, 0, 1])
    requests = [RankRequest(r.prompt, r.responses, [demo]) for r in random_requests(1, [3, 6])]
    for request, result in zip(requests, ranker.rank(requests)):
        assert is_permutation(result.ranking, len(request.responses))
    assert ranker.rank([RankRequest("p", [])])[0].error == "no responses to rank"
    assert ranker.usage.requests == 3 and ranker.usage.failures == {"empty": 1}


def test_local_chat_ranker_picks_the_most_likely_answer(chat_ranker, monkeypatch):
    # With scoring under control, the chosen answer and its mapping back are checkable.
    def score(prefix_ids, texts):
        return [1.0 if t.endswith("2, 0, 1]") else 0.0 for t in texts]

    monkeypatch.setattr(chat_ranker, "score_continuations", score)
    request = RankRequest("q", ["a", "b", "c"])
    (result,) = chat_ranker.rank([request])
    _, order = chat_ranker.template.build_messages(request, seed=0)
    assert order != [0, 1, 2]  # the mapping back is exercised, not the identity
    assert result.ranking == [order[2], order[0], order[1]]
    assert result.raw_text == "### The desired ranking is: [2, 0, 1]"


def test_greedy_ranking_beyond_five_follows_the_scores(chat_ranker, monkeypatch):
    target = [3, 5, 0, 1, 4, 2]  # displayed indices, best first

    def score(prefix, texts):
        # Each text starts with the index it proposes next; earlier in target scores higher.
        return [-float(target.index(int(re.match(r"\s*(\d+)", t).group(1)))) for t in texts]

    monkeypatch.setattr(chat_ranker, "score_continuations", score)
    request = RankRequest("q", [f"response {i}" for i in range(6)])
    (result,) = chat_ranker.rank([request])
    _, order = chat_ranker.template.build_messages(request, seed=0)
    assert result.ranking == chat_ranker.template.map_back(target, order)
    assert result.raw_text == "### The desired ranking is: [3, 5, 0, 1, 4, 2]"


@pytest.mark.parametrize("favourite", ["3", "5"])
def test_a_biased_model_puts_its_favourite_index_first(chat_model, tiny_tokenizer, favourite):
    # Raise the logit of one digit everywhere: the greedy path (n = 6) must open with it.
    token = tiny_tokenizer.convert_tokens_to_ids(favourite)
    ranker = LocalChatRanker(chat_model, tiny_tokenizer, template=SHORT)

    def boost(module, inputs, output):
        output[..., token] += 30.0
        return output

    handle = chat_model.lm_head.register_forward_hook(boost)
    try:
        request = RankRequest("pick one", [f"option {c}" for c in "abcdef"])
        (result,) = ranker.rank([request])
    finally:
        handle.remove()
    _, order = ranker.template.build_messages(request, seed=0)
    assert result.ranking[0] == order[int(favourite)]
    assert is_permutation(result.ranking, 6)


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
    # A prefix state gives the same scores as the ids, and extends to longer prefixes.
    state = chat_ranker.encode_prefix(prefix)
    assert chat_ranker.score_continuations(state, texts) == pytest.approx(fast, abs=1e-5)
    more = tiny_tokenizer(" yes", add_special_tokens=False, return_tensors="pt").input_ids
    longer = chat_ranker.encode_prefix(more, after=state)
    assert chat_ranker.score_continuations(longer, texts) == pytest.approx(
        chat_ranker.score_continuations(torch.cat([prefix, more], dim=1), texts), abs=1e-5
    )


@pytest.mark.parametrize("n", [3, 6])
def test_local_chat_ranker_answers_in_the_paper_template_form(chat_model, tiny_tokenizer, n):
    from cyclealign.rankers.prompt import RankingTemplate

    ranker = LocalChatRanker(chat_model, tiny_tokenizer, template=RankingTemplate.paper())
    scored = []
    original = ranker.score_continuations

    def recording(prefix, texts):
        scored.extend(texts)
        return original(prefix, texts)

    ranker.score_continuations = recording
    request = RankRequest("pick one", [f"option {c}" for c in "abcdef"[:n]])
    (result,) = ranker.rank([request])
    assert is_permutation(result.ranking, n)
    # Every complete answer it scored, and the one it gave, ends as the paper's does: "].".
    assert result.raw_text.startswith("### The desired ranking is: [")
    assert result.raw_text.endswith("].")
    assert all(t.endswith("].") for t in scored if "]" in t) and any("]" in t for t in scored)
