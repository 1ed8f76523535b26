"""What one prompt of a round contributes: its agreement and its training target.

Pure Python on rankings, so the rules (failure policy, reward mode, better responses,
what counts as full agreement) are testable without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .agreement import agreement_ranking, kendall_tau
from .metrics import RoundStats
from .rankers.base import RankResult
from .ranking_results import linear_rewards, rewards_from_result

__all__ = [
    "PromptOutcome",
    "append_top_candidate",
    "judge_prompt",
    "round_stats",
    "target_tensors",
]


@dataclass
class PromptOutcome:
    """One prompt's round, by candidate index (the ranker's response index).

    Attributes:
        ranked: the black box returned a valid ranking.
        agreement: the longest common subsequence of the two rankings (``[]`` if not ranked).
        kendall_tau: rank correlation of the two rankings (``None`` below two candidates).
        rewards: training target by candidate (``None``: the prompt trains on nothing).
        better_response: the black box's improved response, when it is used.
    """

    ranked: bool
    whitebox_ranking: list[int]
    agreement: list[int] = field(default_factory=list)
    kendall_tau: float | None = None
    rewards: list[float] | None = None
    better_response: str | None = None

    @property
    def full_agreement(self) -> bool:
        return self.ranked and len(self.agreement) == len(self.whitebox_ranking)

    @property
    def usable(self) -> bool:
        """Has a target over at least two candidates (a ranking loss needs a pair)."""
        extra = 1 if self.better_response else 0
        return self.rewards is not None and len(self.rewards) + extra >= 2


def judge_prompt(
    result: RankResult,
    whitebox_ranking: Sequence[int],
    *,
    failure_policy: str,
    reward_mode: str,
    use_better_response: bool,
) -> PromptOutcome:
    """Agreement and target of one prompt.

    A failed ranking trains on nothing (``failure_policy="skip"``) or on the white-box
    ranking (``"whitebox"``). A better response is only taken from a successful answer.
    """
    whitebox = [int(i) for i in whitebox_ranking]
    if result.ranking is None:
        rewards = linear_rewards(whitebox) if failure_policy == "whitebox" else None
        return PromptOutcome(ranked=False, whitebox_ranking=whitebox, rewards=rewards)
    better = result.better_response if use_better_response else None
    return PromptOutcome(
        ranked=True,
        whitebox_ranking=whitebox,
        agreement=agreement_ranking(result.ranking, whitebox),
        kendall_tau=kendall_tau(result.ranking, whitebox) if len(whitebox) >= 2 else None,
        rewards=rewards_from_result(result, reward_mode),
        better_response=better if better and better.strip() else None,
    )


def round_stats(outcomes: Sequence[PromptOutcome]) -> RoundStats:
    """This process's counters for the round (usage deltas are filled in by the caller)."""
    stats = RoundStats(prompts=len(outcomes))
    for o in outcomes:
        stats.ranked += o.ranked
        stats.failures += not o.ranked
        stats.usable += o.usable
        stats.not_full += not o.full_agreement
        stats.better += o.better_response is not None
        if o.ranked:
            stats.agree_len += len(o.agreement)
            stats.full += o.full_agreement
        if o.kendall_tau is not None:
            stats.tau_sum += o.kendall_tau
            stats.tau_count += 1
    return stats


def target_tensors(
    outcomes: Sequence[PromptOutcome], num_candidates: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rewards [B, C]`` and ``target_mask [B, C]``: prompts without a target are all False."""
    rewards = torch.zeros(len(outcomes), num_candidates, device=device)
    mask = torch.zeros(len(outcomes), num_candidates, dtype=torch.bool, device=device)
    for b, o in enumerate(outcomes):
        if o.rewards is not None:
            rewards[b, : len(o.rewards)] = torch.tensor(o.rewards, device=device)
            mask[b, : len(o.rewards)] = True
    return rewards, mask


def append_top_candidate(
    rewards: torch.Tensor, mask: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add a candidate column that ranks above every other candidate of its prompt.

    It is real only where ``present`` and the prompt has a target at all.
    """
    top = torch.where(mask, rewards, float("-inf")).max(dim=1).values
    top = torch.where(torch.isfinite(top), top + 1, 1.0)
    return (
        torch.cat([rewards, top[:, None]], dim=1),
        torch.cat([mask, (present & mask.any(dim=1))[:, None]], dim=1),
    )
