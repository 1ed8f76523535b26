"""From rankings to training targets: one prompt's agreement and rewards, and the black box's
better response, as the SFT target (the paper's use) or as an extra top candidate.

Pure Python on rankings except for the better-response path (token ids and one extra
forward pass), so the rules (failure policy, reward mode, better responses, what counts as
full agreement) are testable without a model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .agreement import agreement_ranking, kendall_tau
from .logprobs import completion_token_logps, pad_last_dim
from .sampling import Candidates
from .types import RankResult

__all__ = [
    "PromptOutcome",
    "add_better_responses",
    "append_top_candidate",
    "better_response_completions",
    "better_response_logps",
    "better_response_sft_target",
    "finished_response_ids",
    "linear_rewards",
    "prompt_outcome",
    "rewards_from_result",
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
        better_response_ranked: it joins the ranking as a candidate
            (``better_response_as="candidate"``), rather than being the SFT target only.
    """

    ranked: bool
    whitebox_ranking: list[int]
    agreement: list[int] = field(default_factory=list)
    kendall_tau: float | None = None
    rewards: list[float] | None = None
    better_response: str | None = None
    better_response_ranked: bool = False

    @property
    def full_agreement(self) -> bool:
        return self.ranked and len(self.agreement) == len(self.whitebox_ranking)

    @property
    def usable(self) -> bool:
        """Has a target over at least two candidates (a ranking loss needs a pair); a better
        response counts only where it is ranked as a candidate."""
        extra = 1 if self.better_response and self.better_response_ranked else 0
        return self.rewards is not None and len(self.rewards) + extra >= 2


def prompt_outcome(
    result: RankResult,
    whitebox_ranking: Sequence[int],
    *,
    failure_policy: str,
    reward_mode: str,
    use_better_response: bool,
    better_response_as: str = "sft_target",
) -> PromptOutcome:
    """Agreement and target of one prompt.

    A failed ranking trains on nothing (``failure_policy="skip"``) or on the white-box
    ranking (``"whitebox"``). A better response is only taken from a successful answer, as
    the SFT target or (``better_response_as="candidate"``) as a ranked candidate too.
    """
    whitebox = [int(i) for i in whitebox_ranking]
    if not result.ok:
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
        better_response_ranked=better_response_as == "candidate",
    )


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


def better_response_logps(
    model: Any,
    candidates: Candidates,
    outcomes: Sequence[PromptOutcome],
    *,
    tokenizer: Any,
    eos_token_id: int,
    max_completion_length: int,
    logits_to_keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token log-probs ``[B, L']``, their mask and presence ``[B]`` of each prompt's better
    response (a copy of candidate 0 where a prompt has none). Runs one forward pass of ``B``
    rows: every process must call it, or none."""
    ids, comp_mask, present = better_response_completions(
        [o.better_response for o in outcomes],
        candidates,
        tokenizer=tokenizer,
        eos_token_id=eos_token_id,
        max_completion_length=max_completion_length,
    )
    logps, mask = completion_token_logps(
        model,
        candidates.prompt_ids,
        candidates.prompt_mask,
        ids,
        comp_mask,
        logits_to_keep=logits_to_keep,
    )
    return logps, mask, present


def better_response_sft_target(
    better: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The ranking loss's ``sft_token_logps`` / ``sft_token_mask`` from
    :func:`better_response_logps`: real only where a prompt has a better response and a
    target at all."""
    logps, mask, present = better
    keep = present & target_mask.any(dim=1)
    return {"sft_token_logps": logps, "sft_token_mask": mask & keep[:, None]}


def add_better_responses(
    better: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    logps: torch.Tensor,
    token_mask: torch.Tensor,
    rewards: torch.Tensor,
    target_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The round's log-probs, masks and rewards with each prompt's better response (from
    :func:`better_response_logps`) added as a candidate ranked above all others
    (``better_response_as="candidate"``; masked out where a prompt has none)."""
    better_logps, better_mask, present = better
    width = max(logps.shape[-1], better_logps.shape[-1])
    logps = torch.cat([pad_last_dim(logps, width), pad_last_dim(better_logps, width)[:, None]], 1)
    token_mask = torch.cat(
        [pad_last_dim(token_mask, width, False), pad_last_dim(better_mask, width, False)[:, None]],
        dim=1,
    )
    rewards, target_mask = append_top_candidate(rewards, target_mask, present)
    return logps, token_mask, rewards, target_mask


def better_response_completions(
    texts: Sequence[str | None],
    candidates: Candidates,
    *,
    tokenizer: Any,
    eos_token_id: int,
    max_completion_length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Completion ids ``[B, L']``, mask ``[B, L']`` and presence ``[B]`` of the black box's
    improved responses.

    A better response is a finished answer, so it gets an EOS (unless it has to be cut to
    ``max_completion_length``). Prompts without one get a copy of their first candidate, so every
    row is a real sequence and the forward pass has the same shape on every process.
    """
    device = candidates.completion_ids.device
    rows: list[list[int]] = []
    present = []
    for b, text in enumerate(texts):
        if text:
            rows.append(finished_response_ids(text, tokenizer, eos_token_id, max_completion_length))
            present.append(True)
        else:
            n = int(candidates.completion_mask[b, 0].sum())
            rows.append(candidates.completion_ids[b, 0, :n].tolist())
            present.append(False)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long, device=device)
        mask[b, : len(row)] = True
    return ids, mask, torch.tensor(present, dtype=torch.bool, device=device)


def finished_response_ids(
    text: str, tokenizer: Any, eos_token_id: int, max_completion_length: int | None
) -> list[int]:
    """Token ids of a finished answer given as text: its tokens and an EOS, cut to
    ``max_completion_length`` (then without the EOS: the answer did not end there). Used for the
    black box's improved responses and for offline ranked data."""
    ids = [*tokenizer(text, add_special_tokens=False)["input_ids"], eos_token_id]
    return ids if max_completion_length is None else ids[:max_completion_length]


def linear_rewards(ranking: Sequence[int]) -> list[float]:
    """Reward ``n-1`` for the best response down to ``0`` for the worst, by response index."""
    n = len(ranking)
    rewards = [0.0] * n
    for position, index in enumerate(ranking):
        rewards[index] = float(n - 1 - position)
    return rewards


def rewards_from_result(result: RankResult, mode: str) -> list[float]:
    """Rewards by response index for a successful result.

    ``mode="scores"`` uses the ranker's scores when it gave one finite value per response;
    otherwise (and for ``"linear"``) the ranks.
    """
    assert result.ok
    scores = result.scores
    if mode == "scores" and scores is not None and len(scores) == len(result.ranking):
        try:
            values = [float(s) for s in scores]
        except (TypeError, ValueError):
            values = []
        if values and all(math.isfinite(v) for v in values):
            return values
    return linear_rewards(result.ranking)
