"""Counters of a CycleAlign round, summed over processes, and the metrics logged from them.

A round's counters travel in one small tensor so that summing them over processes is a
single collective that every process makes, whatever happened locally. The same sums
decide, jointly, whether the step stops early and whether anything can be learned.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ..losses import RankingLossOutput
    from ..sampling import Candidates
    from ..targets import PromptOutcome
    from ..types import Usage

__all__ = ["CycleMetrics", "RoundStats", "reduce_sum", "stats_to_metrics"]


@dataclass
class RoundStats:
    """Counters of one round on one process (or, after :meth:`reduce`, on all of them)."""

    prompts: float = 0  # prompts in the batch
    ranked: float = 0  # prompts with a valid black-box ranking
    failures: float = 0  # prompts whose ranking failed
    late: float = 0  # of those, rankings with no answer within the round deadline
    hard_failures: float = 0  # of those, failed for a reason no retry fixes (not an outage)
    usable: float = 0  # prompts with a training target and two candidates or more
    not_full: float = 0  # prompts whose two rankings do not agree fully (failures included)
    better: float = 0  # better responses returned and used
    agree_len: float = 0  # summed agreement lengths (ranked prompts)
    full: float = 0  # ranked prompts whose rankings agree fully
    tau_sum: float = 0  # summed Kendall tau (ranked prompts with 2+ candidates)
    tau_count: float = 0
    requests: float = 0  # deltas of ranker.usage
    cache_hits: float = 0
    prompt_tokens: float = 0
    completion_tokens: float = 0
    cache_repairs: float = 0
    demonstrations: float = 0  # dynamic demonstrations sent, summed over the requests
    responses: float = 0  # distinct sampled responses (the candidates)
    response_tokens: float = 0  # their tokens, EOS included
    clipped: float = 0  # those cut by max_completion_length (no EOS)
    contributing: float = 0  # prompts that contributed to the loss
    loss_sum: float = 0  # loss, rank and SFT terms, each times `contributing`
    rank_loss_sum: float = 0
    sft_loss_sum: float = 0

    @classmethod
    def count(cls, outcomes: Sequence[PromptOutcome], candidates: Candidates) -> RoundStats:
        """This process's counters for one round's prompts and candidates."""
        stats = cls(prompts=len(outcomes))
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
        real = candidates.candidate_mask
        stats.responses = sum(len(texts) for texts in candidates.texts)
        # Host-device sync: one scalar read back per round.
        stats.response_tokens = float((candidates.completion_mask.sum(-1) * real).sum())
        stats.clipped = sum(sum(cut) for cut in candidates.truncated)
        return stats

    def reduce(self, accelerator: Any) -> RoundStats:
        """The sum over every process. All processes must call it (it is a collective)."""
        return RoundStats(*reduce_sum(accelerator, [getattr(self, f.name) for f in fields(self)]))

    def set_spent(self, before: Usage, after: Usage) -> None:
        """What the ranker spent this round: the difference of two copies of its ``usage``."""
        for name in (
            "requests",
            "cache_hits",
            "prompt_tokens",
            "completion_tokens",
            "cache_repairs",
        ):
            setattr(self, name, getattr(after, name) - getattr(before, name))

    def add_loss(self, output: RankingLossOutput, contributing: int) -> None:
        """Record a :class:`~cyclealign.RankingLossOutput` averaged over ``contributing`` prompts.

        Host-device sync: three scalars read back.
        """
        self.contributing += contributing
        self.loss_sum += float(output.loss.detach()) * contributing
        self.rank_loss_sum += float(output.rank_loss.detach()) * contributing
        self.sft_loss_sum += float(output.sft_loss.detach()) * contributing

    def add(self, other: RoundStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class CycleMetrics:
    """Per-step metrics, kept as lists of values and averaged when logged (as TRL does).

    Counts (``ranker/*``) are per training step: all rounds, all processes.
    """

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)
        self._seconds: dict[str, float] = defaultdict(float)

    def add(self, name: str, value: float) -> None:
        self.values[name].append(float(value))

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``time/<name>`` (summed over the step's rounds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - start

    def add_times(self, phases: Sequence[str]) -> None:
        """Log the step's summed time of each phase (0 for a phase that did not run) and start
        counting the next step's."""
        for name in phases:
            self.add(f"time/{name}", self._seconds.get(name, 0.0))
        self._seconds.clear()

    def discard_times(self) -> None:
        """Forget the times counted since the last :meth:`add_times` (evaluation rounds)."""
        self._seconds.clear()

    def add_step(self, stats: RoundStats, rounds: int, updates: int) -> None:
        """Record the summed counters of one training step (or one evaluation batch)."""
        self.add("cycle/rounds", rounds)
        self.add("cycle/updates", updates)
        for name, value in stats_to_metrics(stats).items():
            self.add(name, value)

    def pop_means(self) -> dict[str, float]:
        """Mean of every metric since the last call (NaNs, from empty ratios, ignored)."""
        means = {}
        for name, values in self.values.items():
            valid = [v for v in values if not math.isnan(v)]
            if valid:
                means[name] = sum(valid) / len(valid)
        self.values.clear()
        return means


def stats_to_metrics(stats: RoundStats) -> dict[str, float]:
    """Ratios and counts logged under ``agreement/*``, ``ranker/*``, ``demos/*``,
    ``completions/*`` and ``loss/*``."""
    return {
        "agreement/length": _ratio(stats.agree_len, stats.ranked),
        "agreement/full_rate": _ratio(stats.full, stats.ranked),
        "agreement/kendall_tau": _ratio(stats.tau_sum, stats.tau_count),
        "ranker/failures": stats.failures,
        "ranker/failure_rate": _ratio(stats.failures, stats.prompts),
        "ranker/late": stats.late,
        "ranker/requests": stats.requests,
        "ranker/cache_hits": stats.cache_hits,
        "ranker/cache_repairs": stats.cache_repairs,
        "ranker/prompt_tokens": stats.prompt_tokens,
        "ranker/completion_tokens": stats.completion_tokens,
        "ranker/better_responses": stats.better,
        "demos/per_request": _ratio(stats.demonstrations, stats.prompts),
        "completions/mean_length": _ratio(stats.response_tokens, stats.responses),
        "completions/clipped_ratio": _ratio(stats.clipped, stats.responses),
        "loss/rank": _ratio(stats.rank_loss_sum, stats.contributing),
        "loss/sft": _ratio(stats.sft_loss_sum, stats.contributing),
    }


def reduce_sum(accelerator: Any, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over processes (a collective: every process calls it)."""
    tensor = torch.tensor([values], dtype=torch.float64, device=accelerator.device)
    return accelerator.gather(tensor).reshape(-1, len(values)).sum(dim=0).tolist()


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan
