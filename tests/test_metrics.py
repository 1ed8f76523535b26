"""Round counters summed over processes and the logged metrics."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from cyclealign.losses import RankingLossOutput
from cyclealign.metrics import CycleMetrics, RoundStats, reduce_sum, stats_to_metrics
from cyclealign.rankers.base import Usage


def test_reduce_on_one_process_is_the_identity():
    accelerator = Accelerator(cpu=True)
    stats = RoundStats(prompts=2, ranked=1, failures=1, agree_len=3)
    assert stats.reduce(accelerator) == stats
    assert reduce_sum(accelerator, [1.5, 2.0]) == [1.5, 2.0]


def test_usage_delta_and_losses():
    stats = RoundStats()
    stats.add_usage_delta(
        Usage(requests=2, cache_hits=1), Usage(requests=5, cache_hits=1, prompt_tokens=9)
    )
    assert (stats.requests, stats.cache_hits, stats.prompt_tokens) == (3, 0, 9)
    out = RankingLossOutput(
        torch.tensor(3.0), torch.tensor(1.0), torch.tensor(2.0), torch.zeros(1, 2)
    )
    stats.add_loss(out, 2)
    other = RoundStats(contributing=1, rank_loss_sum=4.0, sft_loss_sum=1.0)
    stats.add(other)
    metrics = stats_to_metrics(stats)
    assert metrics["loss/rank"] == pytest.approx(6 / 3) and metrics["loss/sft"] == pytest.approx(
        5 / 3
    )


def test_ratios_and_means_skip_empty_values():
    metrics = stats_to_metrics(RoundStats(prompts=4, ranked=2, failures=2, agree_len=5, full=1))
    assert metrics["agreement/length"] == 2.5 and metrics["agreement/full_rate"] == 0.5
    assert metrics["ranker/failure_rate"] == 0.5 and math.isnan(metrics["agreement/kendall_tau"])
    log = CycleMetrics()
    log.add_step(RoundStats(prompts=2, ranked=2, agree_len=4, full=2), rounds=1, updates=1)
    log.add_step(RoundStats(prompts=2, failures=2), rounds=3, updates=0)
    means = log.pop_means()
    assert means["cycle/rounds"] == 2 and means["agreement/length"] == 2  # NaN of step 2 skipped
    assert means["ranker/failures"] == 1 and log.pop_means() == {}
