"""CycleAlign: align a white-box causal LM with rankings from a black-box LLM.

Every public name is imported on first use (see ``_lazy.py``), so ``import cyclealign``
does not import ``transformers.Trainer``, ``openai``, ``peft``, ``datasets`` or ``deepspeed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # shared types
    "Demonstration": ".types",
    "RankRequest": ".types",
    "RankResult": ".types",
    "Usage": ".types",
    # log-probs and losses
    "sequence_token_logps": ".logprobs",
    "RankingLoss": ".losses",
    "RankingLossOutput": ".losses",
    "PROLoss": ".losses",
    "RRHFLoss": ".losses",
    "register_ranking_loss": ".losses",
    "get_ranking_loss": ".losses",
    "available_ranking_losses": ".losses",
    "ranking_loss_registry": ".losses",
    # agreement of two rankings
    "agreement_ranking": ".agreement",
    # demonstrations
    "DemonstrationPool": ".demonstrations",
    # rankers
    "BlackBoxRanker": ".rankers",
    "RankingTemplate": ".rankers",
    "OpenAIRanker": ".rankers",
    "LocalChatRanker": ".rankers",
    "RewardModelRanker": ".rankers",
    "FunctionRanker": ".rankers",
    # training
    "CycleAlignConfig": ".config",
    "CycleAlignTrainer": ".trainer",
    "OfflineRankingTrainer": ".trainer",
    "BlackBoxFailureError": ".trainer",
    # data
    "load_hh_rlhf": ".data",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # static analysers and IDEs see real imports
    from .agreement import agreement_ranking
    from .config import CycleAlignConfig
    from .data import load_hh_rlhf
    from .demonstrations import DemonstrationPool
    from .logprobs import sequence_token_logps
    from .losses import (
        PROLoss,
        RankingLoss,
        RankingLossOutput,
        RRHFLoss,
        available_ranking_losses,
        get_ranking_loss,
        ranking_loss_registry,
        register_ranking_loss,
    )
    from .rankers import (
        BlackBoxRanker,
        FunctionRanker,
        LocalChatRanker,
        OpenAIRanker,
        RankingTemplate,
        RewardModelRanker,
    )
    from .trainer import BlackBoxFailureError, CycleAlignTrainer, OfflineRankingTrainer
    from .types import Demonstration, RankRequest, RankResult, Usage
