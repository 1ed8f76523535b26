"""RRHF: Rank Responses to align language models with Human Feedback (Yuan et al., 2023).

Implements the loss as the paper states it (the ``paper`` variant of the reference vectors
when ``length_penalty == 1``), with the official code's length penalty applied to the true
response lengths (the ``fixed_length`` variant's scores and ranking term). See
``docs/losses.md`` for how the released code differs.
"""

from __future__ import annotations

import math

import torch

from .base import PromptLosses, RankingBatch, RankingLoss
from .registry import register_ranking_loss

__all__ = ["RRHFLoss"]


@register_ranking_loss("rrhf")
class RRHFLoss(RankingLoss):
    """Pairwise hinge ranking loss on length-normalised log-probs, plus SFT on the best.

    Per prompt, with ``p_i = S_i / n_i ** length_penalty``::

        rank = sum over ordered pairs (i, j) with r_i < r_j of max(0, p_i - p_j)
        sft  = -S_best      (best = first index among the tied maximal rewards; or the
                             separate SFT target, when one is given)

    and the loss is ``mean_b(rank_weight * rank_b + sft_weight * sft_b)``. Tied rewards never
    form a pair; only the order of the rewards matters.

    Args:
        rank_weight: weight ``w`` of the ranking term (1 in RRHF's training scripts).
        length_penalty: exponent ``lambda`` of the length normalisation.
        sft_weight: weight of the SFT term (1 in RRHF; CycleAlign's objective weights it by
            a factor of the number of candidates, 0.05 (k - 1) ** 2 = 0.45 for k = 4 in the
            reproduction configs, as PRO does).

    ``extras``: ``best_index`` ``[B]`` (the SFT candidate, -1 for a prompt with no real
    candidate).
    """

    name = "rrhf"
    uses_reward_values = False

    def __init__(
        self, rank_weight: float = 1.0, length_penalty: float = 1.0, sft_weight: float = 1.0
    ) -> None:
        super().__init__()
        for name, value in (("rank_weight", rank_weight), ("sft_weight", sft_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"RRHFLoss: {name} must be a finite number >= 0, got {value!r}.")
        if not math.isfinite(length_penalty):
            raise ValueError(f"RRHFLoss: length_penalty must be finite, got {length_penalty!r}.")
        self.rank_weight = float(rank_weight)
        self.length_penalty = float(length_penalty)
        self.sft_weight = float(sft_weight)

    def extra_repr(self) -> str:
        return (
            f"rank_weight={self.rank_weight}, length_penalty={self.length_penalty}, "
            f"sft_weight={self.sft_weight}"
        )

    def candidate_scores(self, sum_logps: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        return sum_logps / num_tokens**self.length_penalty

    def prompt_losses(self, batch: RankingBatch) -> PromptLosses:
        p, r, real = batch.scores, batch.rewards, batch.candidate_mask
        # pair[b, i, j]: candidate i is worse than j, both real; it pays if it scores higher.
        pair = (r.unsqueeze(-1) < r.unsqueeze(-2)) & real.unsqueeze(-1) & real.unsqueeze(-2)
        hinge = torch.relu(p.unsqueeze(-1) - p.unsqueeze(-2))
        rank = torch.where(pair, hinge, 0).sum(dim=(-2, -1))
        best = batch.order[:, 0]
        sft = -batch.sft_target_logps()
        best_index = torch.where(batch.num_real > 0, best, -1)
        return PromptLosses(
            rank=rank,
            sft=sft,
            total=self.rank_weight * rank + self.sft_weight * sft,
            extras={"best_index": best_index},
        )
