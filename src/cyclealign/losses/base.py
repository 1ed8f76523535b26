"""The ranking-loss interface: validation, masking and batching shared by every loss.

A subclass only says how a candidate is scored (:meth:`RankingLoss.candidate_scores`) and
what one prompt's ranking and SFT terms are (:meth:`RankingLoss.prompt_losses`); the base
class checks shapes, applies ``token_mask`` and ``candidate_mask``, sorts candidates by
reward and averages over the prompts that have something to rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._checks import check_shape, describe

__all__ = ["PromptLosses", "RankingBatch", "RankingLoss", "RankingLossOutput"]


@dataclass
class RankingLossOutput:
    """What a ranking loss returns.

    Attributes:
        loss: the scalar to optimise.
        rank_loss: mean over contributing prompts of the ranking term, before its weight.
        sft_loss: mean over contributing prompts of the SFT term, before its weight.
        scores: ``[B, C]`` per-candidate scores (``-inf`` for masked-out candidates).
        extras: loss-specific tensors (for example PRO's ``stage_losses``); also readable
            as attributes, ``out.stage_losses``.
    """

    loss: torch.Tensor
    rank_loss: torch.Tensor
    sft_loss: torch.Tensor
    scores: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails; guard "extras" so copy/pickle, which probe
        # attributes before __init__ ran, do not recurse.
        if name != "extras" and name in self.__dict__.get("extras", {}):
            return self.__dict__["extras"][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


@dataclass
class RankingBatch:
    """Validated inputs, in the loss's compute dtype, with masked entries made harmless.

    Masked-out candidates have reward 0, ``sum_logps`` 0, ``num_tokens`` 1 and a finite
    score, so no NaN can leak into the forward or backward pass; every loss must still
    exclude them using ``candidate_mask``.
    """

    token_logps: torch.Tensor  # [B, C, T], masked token positions set to 0
    token_mask: torch.Tensor  # [B, C, T] bool
    rewards: torch.Tensor  # [B, C]
    candidate_mask: torch.Tensor  # [B, C] bool
    sum_logps: torch.Tensor  # [B, C]  S = sum of the scored token log-probs
    num_tokens: torch.Tensor  # [B, C]  n = number of scored tokens (>= 1)
    scores: torch.Tensor  # [B, C]  candidate_scores(S, n), finite everywhere
    order: torch.Tensor  # [B, C]  candidate indices by reward, best first, real ones first
    num_real: torch.Tensor  # [B] number of real candidates
    sft_sum_logps: torch.Tensor  # [B] S of the separate SFT target (0 where there is none)
    sft_present: torch.Tensor  # [B] bool, prompts with a separate SFT target
    contributing: torch.Tensor  # [B] bool, prompts with at least two real candidates

    def sorted(self, values: torch.Tensor) -> torch.Tensor:
        """``values[b, order[b]]``: a ``[B, C]`` tensor reordered best-first."""
        return values.gather(1, self.order)

    def sft_target_logps(self) -> torch.Tensor:
        """``[B]`` summed log-prob of what the SFT term trains on: the separate SFT target
        where a prompt has one, its best candidate otherwise."""
        best = self.sum_logps.gather(1, self.order[:, :1]).squeeze(-1)
        return torch.where(self.sft_present, self.sft_sum_logps, best)


@dataclass
class PromptLosses:
    """Per-prompt terms a subclass returns; entries of non-contributing prompts are ignored."""

    rank: torch.Tensor  # [B] ranking term, unweighted
    sft: torch.Tensor  # [B] SFT term, unweighted
    total: torch.Tensor  # [B] what the prompt adds to the loss (weights applied)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class RankingLoss(nn.Module):
    """Base class of the ranking losses (PRO, RRHF, plugins).

    Call as ``loss_fn(token_logps, token_mask, rewards, candidate_mask=None)``:

    * ``token_logps``, ``token_mask``: ``[B, C, T]``, per-token log-probs of ``C`` candidate
      responses for each of ``B`` prompts, as returned by
      :func:`cyclealign.logprobs.sequence_token_logps`; only positions where ``token_mask``
      is true count.
    * ``rewards``: ``[B, C]``, higher is better, any order, ties allowed.
    * ``candidate_mask``: optional bool ``[B, C]``, true on real candidates. A prompt with
      fewer than two real candidates contributes nothing; if no prompt contributes the loss
      is a zero that still backpropagates (to zero gradients).
    * ``sft_token_logps``, ``sft_token_mask``: optional ``[B, T']``, a separate SFT target per
      prompt (the black box's better response, as in the paper): where a prompt's mask has a
      true entry, the SFT term trains on it instead of the best candidate, and it takes no
      part in the ranking term (nor in the count of candidates).

    Losses are computed in float32 at least (float64 input stays float64). Capability flags
    are class attributes: ``name`` and ``uses_reward_values`` (False when only the order of the
    rewards matters; the trainer then warns that ``reward_from_ranking="scores"`` changes
    nothing but ties).
    """

    name: ClassVar[str] = "ranking_loss"
    uses_reward_values: ClassVar[bool] = True

    # -- hooks for subclasses -------------------------------------------------------------

    def candidate_scores(self, sum_logps: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
        """Score of each candidate from ``S`` (summed log-prob) and ``n`` (token count)."""
        return sum_logps / num_tokens

    def prompt_losses(self, batch: RankingBatch) -> PromptLosses:
        """Per-prompt ranking and SFT terms; see :class:`PromptLosses`."""
        raise NotImplementedError(f"{type(self).__name__} must implement prompt_losses().")

    # -- public API ------------------------------------------------------------------------

    def forward(
        self,
        token_logps: torch.Tensor,
        token_mask: torch.Tensor,
        rewards: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
        *,
        sft_token_logps: torch.Tensor | None = None,
        sft_token_mask: torch.Tensor | None = None,
    ) -> RankingLossOutput:
        batch = self._prepare(token_logps, token_mask, rewards, candidate_mask)
        batch = self._with_sft_target(batch, sft_token_logps, sft_token_mask)
        parts = self.prompt_losses(batch)
        contributing = batch.contributing
        count = contributing.sum().clamp(min=1).to(batch.scores.dtype)

        def prompt_mean(values: torch.Tensor) -> torch.Tensor:
            # where() rather than indexing keeps a graph (and zero gradients) when no prompt
            # contributes, so backward() still works on an all-padding batch.
            return torch.where(contributing, values, 0).sum() / count

        return RankingLossOutput(
            loss=prompt_mean(parts.total),
            rank_loss=prompt_mean(parts.rank),
            sft_loss=prompt_mean(parts.sft),
            scores=self._public_scores(batch),
            extras=parts.extras,
        )

    @torch.no_grad()
    def ranking(
        self,
        token_logps: torch.Tensor,
        token_mask: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
    ) -> list[list[int]]:
        """Candidate indices best-first per prompt by :meth:`score` (ties: lower index first).

        Masked-out candidates are left out.
        """
        scores = self.score(token_logps, token_mask, candidate_mask)
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
        finite = torch.isfinite(scores.gather(1, order))
        return [row[keep].tolist() for row, keep in zip(order, finite)]  # host-device sync

    def score(
        self,
        token_logps: torch.Tensor,
        token_mask: torch.Tensor,
        candidate_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, C]`` per-candidate scores without rewards: the white-box model's ranking.

        Masked-out candidates score ``-inf``.
        """
        batch = self._prepare(token_logps, token_mask, None, candidate_mask)
        return self._public_scores(batch)

    # -- shared machinery ------------------------------------------------------------------

    def _with_sft_target(
        self,
        batch: RankingBatch,
        sft_token_logps: torch.Tensor | None,
        sft_token_mask: torch.Tensor | None,
    ) -> RankingBatch:
        who = type(self).__name__
        bsz = batch.scores.shape[0]
        if (sft_token_logps is None) != (sft_token_mask is None):
            raise ValueError(f"{who}: pass sft_token_logps and sft_token_mask together.")
        if sft_token_logps is None:
            return batch
        if not isinstance(sft_token_logps, torch.Tensor) or sft_token_logps.dim() != 2:
            raise ValueError(
                f"{who}: sft_token_logps must have shape [B, T] (prompts, tokens), got "
                f"{describe(sft_token_logps)}."
            )
        check_shape(
            who, "sft_token_logps", sft_token_logps, [bsz, sft_token_logps.shape[1]], "[B, T]"
        )
        check_shape(who, "sft_token_mask", sft_token_mask, list(sft_token_logps.shape), "[B, T]")
        mask = sft_token_mask.to(device=sft_token_logps.device) != 0
        logps = torch.where(mask, sft_token_logps.to(batch.scores.dtype), 0)
        batch.sft_sum_logps = logps.sum(-1)
        batch.sft_present = mask.any(-1)
        return batch

    def _public_scores(self, batch: RankingBatch) -> torch.Tensor:
        return torch.where(batch.candidate_mask, batch.scores, float("-inf"))

    def _prepare(
        self,
        token_logps: torch.Tensor,
        token_mask: torch.Tensor,
        rewards: torch.Tensor | None,
        candidate_mask: torch.Tensor | None,
    ) -> RankingBatch:
        who = type(self).__name__
        if not isinstance(token_logps, torch.Tensor) or token_logps.dim() != 3:
            raise ValueError(
                f"{who}: token_logps must have shape [B, C, T] (prompts, candidates, tokens), "
                f"got {describe(token_logps)}."
            )
        if not token_logps.is_floating_point():
            raise ValueError(f"{who}: token_logps must be floating point, got {token_logps.dtype}.")
        bsz, ncand, _ = token_logps.shape
        check_shape(who, "token_mask", token_mask, list(token_logps.shape), "[B, C, T]")
        if candidate_mask is None:
            candidate_mask = torch.ones(bsz, ncand, dtype=torch.bool, device=token_logps.device)
        else:
            check_shape(who, "candidate_mask", candidate_mask, [bsz, ncand], "[B, C]")
            candidate_mask = candidate_mask.to(device=token_logps.device) != 0
        dtype = torch.promote_types(token_logps.dtype, torch.float32)
        mask = token_mask.to(device=token_logps.device) != 0
        # where(), not multiplication: positions outside the mask may hold anything (-inf).
        logps = torch.where(mask, token_logps.to(dtype), 0)
        num_tokens = mask.sum(-1)
        empty = candidate_mask & (num_tokens == 0)
        if bool(empty.any()):  # host-device sync: one flag read back per call
            b, c = (int(i) for i in empty.nonzero()[0])
            raise ValueError(
                f"{who}: candidate {c} of prompt {b} has no scored token in token_mask. Count "
                "each response's EOS as a response token, or mark the candidate False in "
                "candidate_mask."
            )
        num_tokens = num_tokens.clamp(min=1).to(dtype)
        if rewards is None:
            rewards = torch.zeros(bsz, ncand, dtype=dtype, device=token_logps.device)
        else:
            check_shape(who, "rewards", rewards, [bsz, ncand], "[B, C]")
            rewards = rewards.to(device=token_logps.device, dtype=dtype)
            # Host-device sync: one flag read back per call.
            if not bool(torch.isfinite(rewards[candidate_mask]).all()):
                raise ValueError(
                    f"{who}: rewards of real candidates must be finite, got {rewards.tolist()}."
                )
            rewards = torch.where(candidate_mask, rewards, 0)
        sum_logps = logps.sum(-1)
        scores = self.candidate_scores(sum_logps, num_tokens)
        # Stable descending sort: tied candidates keep their given order, masked ones go last.
        key = torch.where(candidate_mask, rewards, float("-inf"))
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices
        num_real = candidate_mask.sum(-1)
        return RankingBatch(
            token_logps=logps,
            token_mask=mask,
            rewards=rewards,
            candidate_mask=candidate_mask,
            sum_logps=sum_logps,
            num_tokens=num_tokens,
            scores=scores,
            order=order,
            num_real=num_real,
            sft_sum_logps=torch.zeros(bsz, dtype=dtype, device=token_logps.device),
            sft_present=torch.zeros(bsz, dtype=torch.bool, device=token_logps.device),
            contributing=num_real >= 2,
        )
