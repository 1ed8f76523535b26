"""Round counters summed over processes and the logged metrics."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from cyclealign.losses import RankingLossOutput
from cyclealign.sampling import sample_candidates
from cyclealign.targets import prompt_outcome
from cyclealign.trainer.stats import CycleMetrics, RoundStats, reduce_sum, stats_to_metrics
from cyclealign.types import RankResult, Usage
from helpers import ScriptedGenerator, word


def test_reduce_on_one_process_is_the_identity():
    accelerator = Accelerator(cpu=True)
    stats = RoundStats(prompts=2, ranked=1, failures=1, agree_len=3)
    assert stats.reduce(accelerator) == stats
    assert reduce_sum(accelerator, [1.5, 2.0]) == [1.5, 2.0]


def test_count_outcomes_and_completions(tiny_tokenizer):
    eos, a = tiny_tokenizer.eos_token_id, word(tiny_tokenizer, "a")
    # Prompt 0: "a" (ended) and "a a a" (cut at 3 tokens); prompt 1: "a a" twice, collapsed.
    candidates = sample_candidates(
        ScriptedGenerator([[a, eos, eos], [a, a, a], [a, a, eos], [a, a, eos]]),
        torch.tensor([[3], [4]]),
        torch.ones(2, 1, dtype=torch.long),
        num_generations=2,
        generation_config=None,
        tokenizer=tiny_tokenizer,
        eos_token_ids=[eos],
    )
    kw = dict(failure_policy="skip", reward_mode="linear", use_better_response=True)
    outcomes = [
        prompt_outcome(RankResult([1, 0], better_response="b"), [0, 1], **kw),
        prompt_outcome(RankResult(None, error="x"), [0], **kw),
    ]
    stats = RoundStats.count(outcomes, candidates)
    assert (stats.prompts, stats.ranked, stats.failures, stats.usable) == (2, 1, 1, 1)
    assert (stats.full, stats.not_full, stats.better, stats.agree_len) == (0, 2, 1, 1)
    assert (stats.tau_sum, stats.tau_count) == (-1.0, 1)
    # Three distinct responses of 2 (a + EOS), 3 (cut, no EOS) and 3 (a a + EOS) tokens.
    assert (stats.responses, stats.response_tokens, stats.clipped) == (3, 8, 1)
    metrics = stats_to_metrics(stats)
    assert metrics["completions/mean_length"] == pytest.approx(8 / 3)
    assert metrics["completions/clipped_ratio"] == pytest.approx(1 / 3)


def test_usage_spent_and_losses():
    stats = RoundStats()
    stats.set_spent(
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
