"""PRO: Preference Ranking Optimization (Song et al., 2023).

Matches ``ProcessManager.compute_loss`` of the official code (AlibabaResearch/DAMO-ConvAI,
``PRO/``) on the reference vectors, generalised to unsorted rewards and to prompts with
different numbers of real candidates. See ``docs/losses.md`` for the formulas.
"""

from __future__ import annotations

import math

import torch

from .base import PromptLosses, RankingBatch, RankingLoss
from .registry import register_ranking_loss

__all__ = ["PROLoss"]


@register_ranking_loss("pro")
class PROLoss(RankingLoss):
    """PRO ranking loss plus a length-scaled SFT term on the best candidate.

    Candidates are sorted by reward, best first (a stable sort, so tied candidates keep
    their order). With ``s_i = S_i / n_i`` the mean token log-prob, each stage
    ``k = 0 .. C-2`` is a softmax cross-entropy that puts candidate ``k`` above the
    remaining ones, with reward differences as inverse temperatures::

        tau_kj = r_k - r_j  (j > k),    tau_k = max_j tau_kj
        stage_k = log(eps + exp(s_k tau_k) + sum_j exp(s_j tau_kj)) - s_k tau_k

    Per prompt with ``C`` real candidates: ``rank = sum_k stage_k``, ``sft = -S_best`` (or
    ``-S`` of the separate SFT target, when one is given: it is no candidate) and
    ``sft_coefficient = sft_weight * (C - 1) ** 2``. The loss is
    ``mean_b(rank_b) + mean_b(sft_coefficient_b * sft_b)``.

    Args:
        sft_weight: base SFT weight ``beta0`` (0.05 in PRO's training scripts).
        eps: the constant PRO adds inside the logarithm (1e-10 in the official code).

    ``extras``: ``stage_losses`` ``[C-1]`` (stage ``k`` averaged over contributing prompts,
    0 where a prompt has no stage ``k``; they sum to ``rank_loss``) and ``sft_coefficient``
    ``[B]`` (0 for non-contributing prompts).
    """

    name = "pro"
    uses_reward_values = True

    def __init__(self, sft_weight: float = 0.05, eps: float = 1e-10) -> None:
        super().__init__()
        if not (math.isfinite(sft_weight) and sft_weight >= 0):
            raise ValueError(
                f"PROLoss: sft_weight must be a finite number >= 0, got {sft_weight!r}."
            )
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"PROLoss: eps must be a finite number >= 0, got {eps!r}.")
        self.sft_weight = float(sft_weight)
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"sft_weight={self.sft_weight}, eps={self.eps}"

    def candidate_scores(self, sum_logps: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        return sum_logps / num_tokens

    def prompt_losses(self, batch: RankingBatch) -> PromptLosses:
        s = batch.sorted(batch.scores)
        r = batch.sorted(batch.rewards)
        real = batch.sorted(batch.candidate_mask)  # real candidates come first
        bsz, ncand = s.shape
        contributing = batch.contributing
        count = contributing.sum().clamp(min=1).to(s.dtype)
        # log(eps + sum exp(x)) == logsumexp([log eps, x...]): stable for tiny exponentials.
        log_eps = s.new_full((bsz, 1), math.log(self.eps) if self.eps > 0 else float("-inf"))
        rank = s.new_zeros(bsz)
        stage_losses = []
        for k in range(ncand - 1):
            tail_real = real[:, k + 1 :]
            has_stage = tail_real[:, 0]  # some real candidate remains below k
            tau = r[:, k : k + 1] - r[:, k + 1 :]
            pos_tau = torch.where(tail_real, tau, float("-inf")).amax(-1)
            pos_tau = torch.where(has_stage, pos_tau, 0)
            x_pos = s[:, k] * pos_tau
            x_neg = torch.where(tail_real, s[:, k + 1 :] * tau, float("-inf"))
            terms = torch.cat([log_eps, x_pos.unsqueeze(-1), x_neg], dim=-1)
            stage = torch.where(has_stage, torch.logsumexp(terms, dim=-1) - x_pos, 0)
            rank = rank + stage
            stage_losses.append(torch.where(contributing, stage, 0).sum() / count)
        sft = -batch.sft_target_logps()
        coefficient = self.sft_weight * (batch.num_real.to(s.dtype) - 1).clamp(min=0) ** 2
        coefficient = torch.where(contributing, coefficient, 0)
        stages = torch.stack(stage_losses) if stage_losses else s.new_zeros(0)
        return PromptLosses(
            rank=rank,
            sft=sft,
            total=rank + coefficient * sft,
            extras={"stage_losses": stages, "sft_coefficient": coefficient},
        )
