"""Ranking losses for the white-box model: PRO, RRHF and plugins (torch only).

Get one by name with :func:`get_ranking_loss`; add your own with
:func:`register_ranking_loss` or an entry point in the group ``cyclealign.ranking_losses``.
The built-ins register themselves when ``.pro`` and ``.rrhf`` are imported below.
"""

from __future__ import annotations

from .base import RankingLoss, RankingLossOutput
from .pro import PROLoss
from .registry import (
    available_ranking_losses,
    get_ranking_loss,
    ranking_loss_registry,
    register_ranking_loss,
)
from .rrhf import RRHFLoss

__all__ = [
    "PROLoss",
    "RRHFLoss",
    "RankingLoss",
    "RankingLossOutput",
    "available_ranking_losses",
    "get_ranking_loss",
    "ranking_loss_registry",
    "register_ranking_loss",
]
