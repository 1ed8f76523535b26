"""FunctionRanker: TRL reward functions called as GRPOTrainer calls them."""

from __future__ import annotations

import asyncio
import math
import threading
import traceback

import pytest
from trl.rewards import think_format_reward

from cyclealign.rankers.base import BlackBoxRanker
from cyclealign.rankers.pending import PendingRanking
from cyclealign.rankers.reward_functions import FunctionRanker, ranking_from_scores
from cyclealign.types import RankRequest

CHAT = [{"role": "user", "content": "Think first."}]


def test_ranking_from_scores_is_best_first_and_stable_on_ties():
    assert ranking_from_scores([1.0, 3.0, 1.0, 2.0]) == [1, 3, 0, 2]


def test_the_call_is_trls_one_entry_per_pair_with_columns_and_ids():
    calls = []

    def reward(prompts, completions, completion_ids, trainer_state, solution, **kwargs):
        calls.append(
            dict(
                prompts=prompts,
                completions=completions,
                ids=completion_ids,
                state=trainer_state,
                solution=solution,
                extra=kwargs,
            )
        )
        return [float(len(c)) for c in completions]

    ranker = FunctionRanker(reward)
    ranker.trainer_state = "state"
    requests = [
        RankRequest("p", ["aa", "a"], columns={"solution": "2"}, completion_ids=[[5, 5], [5]]),
        RankRequest("q", ["b", "bbb", "bb"], columns={"solution": "3", "level": 1}),
    ]
    results = ranker.rank(requests)
    (call,) = calls
    assert call["prompts"] == ["p", "p", "q", "q", "q"]
    assert call["completions"] == ["aa", "a", "b", "bbb", "bb"]  # strings for text prompts
    assert call["ids"] == [[5, 5], [5], None, None, None]
    assert call["solution"] == ["2", "2", "3", "3", "3"]
    assert call["extra"] == {"level": [None, None, 1, 1, 1]}  # a column one row lacks is None
    assert call["state"] == "state"
    assert [r.ranking for r in results] == [[0, 1], [1, 2, 0]]
    assert results[1].scores == [1.0, 3.0, 2.0]
    assert ranker.usage.requests == 2


def test_think_format_reward_gets_messages_for_chat_prompts():
    ranker = FunctionRanker(think_format_reward)
    (result,) = ranker.rank(
        [RankRequest(CHAT, ["no thinking", "<think>\nsteps\n</think>\nanswer", "also not"])]
    )
    assert result.ranking == [1, 0, 2] and result.scores == [0.0, 1.0, 0.0]


def test_weighted_sum_of_several_functions_sync_and_async():
    def length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    async def has_x(completions, **kwargs):
        await asyncio.sleep(0)
        return [1.0 if "x" in c else 0.0 for c in completions]

    ranker = FunctionRanker([length, has_x], reward_weights=[1.0, -10.0])
    (result,) = ranker.rank([RankRequest("p", ["xxxx", "aa", "b"])])
    assert result.scores == [4.0 - 10.0, 2.0, 1.0] and result.ranking == [1, 2, 0]
    assert ranker.reward_func_names == ["length", "has_x"]


def test_none_rewards_are_left_out_of_the_sum_as_trls_nansum():
    def maybe(completions, **kwargs):
        return [None if c.startswith("?") else 5.0 for c in completions]

    def always(completions, **kwargs):
        return [1.0 if c == "?a" else 0.0 for c in completions]

    def never_for_q(completions, **kwargs):
        return [None if c == "?" else 0.0 for c in completions]

    ranker = FunctionRanker([maybe, always])
    (scored,) = ranker.rank([RankRequest("p", ["?a", "b"])])
    assert scored.scores == [1.0, 5.0] and scored.ranking == [1, 0]

    alone = FunctionRanker([maybe, never_for_q])
    unscorable, fine = alone.rank([RankRequest("p", ["?", "b"]), RankRequest("q", ["c", "d"])])
    assert unscorable.ranking is None and "no reward for responses [0]" in unscorable.error
    assert fine.ranking == [0, 1]  # a tie keeps the sampled order
    assert alone.usage.failures == {"unscorable": 1}


def test_nan_and_infinite_sums():
    def reward(completions, **kwargs):
        return [{"n": math.nan, "i": math.inf, "f": 1.0}[c] for c in completions]

    ranker = FunctionRanker(reward)
    nan, inf = ranker.rank([RankRequest("p", ["n", "f"]), RankRequest("q", ["i", "f"])])
    assert nan.ranking is None  # NaN is "no reward", as in TRL
    assert inf.ranking is None and "non-finite" in inf.error
    assert ranker.usage.failures == {"unscorable": 1, "nonfinite": 1}


def test_batch_size_never_splits_a_request_and_sync_functions_run_off_the_loop():
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append((len(completions), threading.current_thread() is threading.main_thread()))
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        assert not on_loop
        return [0.0] * len(completions)

    ranker = FunctionRanker(reward, batch_size=3)
    ranker.rank(
        [RankRequest("p", ["a", "b"]), RankRequest("q", ["c", "d"]), RankRequest("r", ["e"])]
    )
    assert [n for n, _ in seen] == [2, 3]
    assert not any(main for _, main in seen)


def buggy_reward(completions, **kwargs):
    return [1 / 0 for _ in completions]


@pytest.mark.parametrize(
    "func, error, match",
    [
        (buggy_reward, ZeroDivisionError, "division"),
        (lambda completions, **kw: [1.0], ValueError, "returned 1 rewards, but 2"),
        (lambda completions, **kw: ["good", "bad"], TypeError, "not a number"),
    ],
)
def test_a_buggy_function_raises_through_pending_ranking(func, error, match):
    ranker = FunctionRanker(func)
    assert ranker.stops_on_error
    pending = PendingRanking(ranker, [RankRequest("p", ["a", "b"])])
    with pytest.raises(error, match=match) as info:
        pending.wait()
    if func is buggy_reward:
        frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert "buggy_reward" in frames  # the function's own traceback


def test_other_rankers_still_turn_errors_into_failed_results():
    class Flaky(BlackBoxRanker):
        def rank(self, requests):
            raise ConnectionError("down")

    (result,) = PendingRanking(Flaky(), [RankRequest("p", ["a", "b"])]).wait()
    assert result.ranking is None and "ConnectionError" in result.error


def test_bad_arguments_are_refused_with_what_to_do():
    with pytest.raises(ValueError, match="one weight per function"):
        FunctionRanker([buggy_reward, buggy_reward], reward_weights=[1.0])
    with pytest.raises(TypeError, match="RewardModelRanker"):
        FunctionRanker(["not a function"])
    with pytest.raises(ValueError, match="at least one"):
        FunctionRanker([])
    ranker = FunctionRanker(lambda completions, **kw: [0.0] * len(completions))
    with pytest.raises(ValueError, match=r"'completions'.*rename it"):
        ranker.rank([RankRequest("p", ["a", "b"], columns={"completions": 1})])
