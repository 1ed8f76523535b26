"""What CycleAlignTrainer checks about its black box at start (cyclealign.trainer.ranker_setup);
that the trainer calls these is checked in test_trainer.py (a missing ranker)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from cyclealign.losses import get_ranking_loss
from cyclealign.rankers import FunctionRanker
from cyclealign.rankers.base import BlackBoxRanker
from cyclealign.trainer.ranker_setup import (
    check_better_response_source,
    require_ranker,
    warn_if_scores_unused,
)
from cyclealign.types import RankResult

LOGGER = "cyclealign.trainer.ranker_setup"


class FirstRanker(BlackBoxRanker):
    """Ranks in the given order; whether it asks for better responses is its own switch."""

    def __init__(self, request_better_response="unset"):
        if request_better_response != "unset":
            self.request_better_response = request_better_response

    def rank(self, requests):
        return [RankResult(list(range(len(r.responses)))) for r in requests]


@pytest.mark.parametrize(
    ("ranker", "use", "asks_after", "warning"),
    [
        (FirstRanker(None), True, True, None),  # None follows the trainer
        (FirstRanker(None), False, None, None),
        (FirstRanker(False), True, False, "request_better_response=False"),
        (FirstRanker(), True, "n/a", None),  # no switch: it may write one
    ],
)
def test_rankers_follow_use_better_response_or_say_why_not(
    caplog, ranker, use, asks_after, warning
):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check_better_response_source(ranker, SimpleNamespace(use_better_response=use))
    assert getattr(ranker, "request_better_response", "n/a") == asks_after
    if warning:
        assert caplog.text.count(warning) == 1
    else:
        assert "better response" not in caplog.text


def test_rankers_that_write_no_text_get_one_warning(caplog):
    ranker = FunctionRanker(lambda prompts, completions: [len(c) for c in completions])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check_better_response_source(ranker, SimpleNamespace(use_better_response=True))
    assert caplog.text.count("FunctionRanker writes no text") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        check_better_response_source(ranker, SimpleNamespace(use_better_response=False))
    assert "writes no text" not in caplog.text


@pytest.mark.parametrize(
    ("loss", "mode", "warns"),
    [("rrhf", "scores", True), ("pro", "scores", False), ("rrhf", "linear", False)],
)
def test_scores_with_a_loss_that_ignores_reward_values_warns(caplog, loss, mode, warns):
    args = SimpleNamespace(reward_from_ranking=mode, ranking_loss=loss)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        warn_if_scores_unused(args, get_ranking_loss(loss))
    assert ("uses only the order of the rewards" in caplog.text) is warns


def test_a_missing_or_wrong_ranker_is_refused_with_what_to_use():
    with pytest.raises(ValueError, match=r"needs a ranker.*use cyclealign.OfflineRankingTrainer"):
        require_ranker(None)
    with pytest.raises(TypeError, match=r"must be a BlackBoxRanker.*got function"):
        require_ranker(lambda prompts, completions: [0.0])
    require_ranker(FirstRanker())  # no error
