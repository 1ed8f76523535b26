"""The two trainers and what they share: the cycle (:class:`CycleAlignTrainer`), offline
ranked-data training (:class:`OfflineRankingTrainer`), their counters, round log and
checkpointed state."""

from __future__ import annotations

from .cycle import CycleAlignTrainer
from .failures import BlackBoxFailureError
from .offline import OfflineRankingTrainer

__all__ = ["BlackBoxFailureError", "CycleAlignTrainer", "OfflineRankingTrainer"]
