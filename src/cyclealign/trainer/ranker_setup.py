"""What :class:`~cyclealign.CycleAlignTrainer` checks about its black box at start, before
anything is paid for: that there is one, that it returns the better responses the trainer
uses (or why none will come), and that its scores are read by the loss."""

from __future__ import annotations

import logging
from typing import Any

from ..rankers.base import BlackBoxRanker

__all__ = ["check_better_response_source", "require_ranker", "warn_if_scores_unused"]

logger = logging.getLogger(__name__)


def require_ranker(ranker: Any) -> None:
    """Raise unless ``ranker`` is a :class:`~cyclealign.BlackBoxRanker`, naming the offline
    trainer for ranked data without one."""
    if ranker is None:
        raise ValueError(
            "CycleAlignTrainer needs a ranker (a BlackBoxRanker such as OpenAIRanker, "
            "LocalChatRanker or FunctionRanker): the black box ranks the sampled responses "
            "every round. To train on already-ranked data without one (the paper's PRO and "
            "RRHF baselines), use cyclealign.OfflineRankingTrainer."
        )
    if not isinstance(ranker, BlackBoxRanker):
        raise TypeError(
            "CycleAlignTrainer: ranker must be a BlackBoxRanker (for example OpenAIRanker or "
            f"FunctionRanker), got {type(ranker).__name__}."
        )


def check_better_response_source(ranker: BlackBoxRanker, args: Any) -> None:
    """Make the ranker ask for the better responses the trainer uses, or say why none
    will come (once, at start)."""
    if not args.use_better_response:
        return
    name = type(ranker).__name__
    asks = getattr(ranker, "request_better_response", "n/a")
    if asks is None:  # OpenAIRanker's default: follow the trainer
        ranker.request_better_response = True
    elif asks is False:
        logger.warning(
            "use_better_response=True, but this %s was built with "
            "request_better_response=False: it never asks for a better response, so the "
            "SFT term trains on the best sampled response. Leave request_better_response "
            "unset (it follows the trainer) or set use_better_response=False.",
            name,
        )
    elif getattr(ranker, "writes_better_responses", None) is False:
        logger.warning(
            "use_better_response=True, but %s writes no text, so it never returns a "
            "better response: the SFT term trains on the best sampled response. Set "
            "use_better_response=False to say so, or rank with a model that writes "
            "(OpenAIRanker).",
            name,
        )


def warn_if_scores_unused(args: Any, loss_fn: Any) -> None:
    """Warn when ``reward_from_ranking='scores'`` meets a loss that reads only the order."""
    if args.reward_from_ranking == "scores" and not loss_fn.uses_reward_values:
        logger.warning(
            "reward_from_ranking='scores' with ranking_loss=%r: this loss uses only the order "
            "of the rewards, so the ranker's scores change nothing but how ties are broken.",
            args.ranking_loss,
        )
