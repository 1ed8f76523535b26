"""CycleAlignTrainer: generate, rank, agree and optimize, up to ``max_rounds`` times a step.

Every decision that changes how many collective calls a process makes (early stop, whether
anything is learned, whether a better-response forward runs, pool and log gathers) is taken
from counters summed over all processes, so DDP and DeepSpeed never wait on a process that
took another branch. See ``docs/trainer.md`` and ``docs/architecture.md``.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl.models.utils import unwrap_model_for_generation

from ..config import CycleAlignConfig
from ..data.rows import check_datasets, rows_summary
from ..demonstrations import DemonstrationPool, select_demonstrations, share_agreements
from ..logprobs import candidate_token_logps
from ..prompts import PromptCollator, render_prompt
from ..rankers.base import BlackBoxRanker
from ..rankers.pending import PendingRanking
from ..rankers.prompt import drop_static_demonstration
from ..sampling import Candidates, checkpointing_paused, sample_candidates, sampling_config
from ..targets import (
    PromptOutcome,
    add_better_responses,
    better_response_logps,
    better_response_sft_target,
    prompt_outcome,
    target_tensors,
)
from ..types import RankRequest, RankResult
from ..vllm_sampling import VLLMSampler
from .base import RankingTrainerBase, check_deepspeed_schedule
from .checkpoint import restore_cycle_state, save_cycle_state
from .completions import log_completion_table
from .failures import FailureWatch
from .fsdp import full_parameters_for_generation
from .ranker_setup import check_better_response_source, require_ranker, warn_if_scores_unused
from .round_log import RoundLogWriter, log_row
from .stats import RoundStats, reduce_sum, stats_to_metrics

__all__ = ["CycleAlignTrainer"]

logger = logging.getLogger(__name__)


@dataclass
class _Scored:
    """The white box's view of a round's candidates."""

    logps: torch.Tensor  # [B, C, L] token log-probs (with a graph when training)
    token_mask: torch.Tensor  # [B, C, L] response tokens
    rankings: list[list[int]]  # per prompt, candidate indices best-first


@dataclass
class _RoundOutput:
    """What a round leaves for the step: its counters summed over processes, the loss and
    whether the step ends here."""

    stats: RoundStats
    loss: torch.Tensor
    last: bool
    updated: bool


class CycleAlignTrainer(RankingTrainerBase):
    """Align a causal LM with rankings from a black-box LLM (CycleAlign, Hong et al., 2023).

    Args:
        model: a causal LM, or a local path / hub id loaded with
            ``AutoModelForCausalLM.from_pretrained(model, **args.model_init_kwargs)``.
        args: a :class:`~cyclealign.CycleAlignConfig` (default: one writing to
            ``cyclealign-output``).
        train_dataset, eval_dataset: datasets with a ``prompt`` column (strings or chat messages).
        processing_class: the tokenizer; loaded from ``model`` when it is a path.
        ranker: the black box, a :class:`~cyclealign.BlackBoxRanker`. For ranked data
            without a black box, use :class:`~cyclealign.OfflineRankingTrainer`.
        peft_config: wrap the model with ``peft.get_peft_model``; only the adapter trains.
        quantization_config: a ``BitsAndBytesConfig`` for a model loaded from a path (TRL's
            ``get_quantization_config``).
        callbacks, optimizers: as in :class:`transformers.Trainer`.
    """

    def __init__(
        self,
        model: Any,
        args: CycleAlignConfig | None = None,
        *,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        ranker: BlackBoxRanker | None = None,
        peft_config: Any = None,
        quantization_config: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
    ) -> None:
        require_ranker(ranker)
        self.ranker = ranker
        # Checked before anything is paid for: bad rows never reach the black box.
        policy = args.invalid_rows if isinstance(args, CycleAlignConfig) else "drop"
        train_dataset, eval_dataset, self.row_reports = check_datasets(
            train_dataset, eval_dataset, policy
        )
        self._completion_rows: list[dict[str, Any]] = []  # the latest step's rounds
        super().__init__(
            model,
            args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            quantization_config=quantization_config,
            callbacks=callbacks,
            optimizers=optimizers,
            make_collator=lambda tokenizer, args, eos: PromptCollator(
                tokenizer, args.max_prompt_length, args.chat_template_kwargs
            ),
        )
        if not self.args.use_static_demonstration:
            drop_static_demonstration(ranker)
        if self.is_deepspeed_enabled and self.args.max_rounds > 1:
            check_deepspeed_schedule(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        check_better_response_source(ranker, self.args)
        warn_if_scores_unused(self.args, self.loss_fn)
        self.pool = DemonstrationPool(max_size=self.args.demonstration_pool_size)
        self._eval_stats = RoundStats()
        self.failures = FailureWatch(self.args.max_failed_steps)
        self.generation_config = sampling_config(
            self.args, self.processing_class, self.eos_token_ids
        )
        self._round_log = RoundLogWriter(self.args.output_dir) if self.args.round_log else None
        self.vllm: VLLMSampler | None = None
        if self.args.use_vllm:
            self.vllm = VLLMSampler(
                self.model, self.accelerator, self.processing_class, self.args, self.eos_token_ids
            )

    def _set_signature_columns_if_needed(self) -> None:
        # With remove_unused_columns=True only the raw prompt is kept (the collator tokenizes
        # it), as in TRL; the default (False) keeps every column for the ranker.
        if self._signature_columns is None:
            self._signature_columns = ["prompt"]

    # -- training ----------------------------------------------------------------------------

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """Up to ``max_rounds`` rounds on one batch; every round with a usable ranking
        updates the weights, the last round's update is left to the Trainer. Returns the mean
        loss of the rounds that updated."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        if not self.is_deepspeed_enabled:
            # A round with nothing to learn must leave every .grad None: torch optimizers
            # then skip the parameter entirely (no momentum, no weight decay).
            self.optimizer.zero_grad(set_to_none=True)
        step_stats = RoundStats()
        self._completion_rows = []
        rounds = 0
        losses = []  # of the rounds that updated the weights
        for round_index in range(self.args.max_rounds):
            out = self._run_round(model, inputs, round_index, training=True)
            step_stats.add(out.stats)
            rounds += 1
            if out.updated:
                losses.append(out.loss)
                if self.vllm is not None:
                    self.vllm.mark_stale()  # the next round samples from the new weights
            if out.last:
                break
        self._metrics.add_step(step_stats, rounds, len(losses))
        self._metrics.add("demos/pool_size", len(self.pool))
        phases = ("generate", "forward", "rank_wait", "backward")
        self._metrics.add_times(phases + (("weight_sync",) if self.vllm else ()))
        if self.failures.end_step(self.state.global_step + 1, step_stats, len(losses)):
            # Saved and stopped by the Trainer once this step is counted; train() raises.
            self.control.should_save = self.control.should_log = True
            self.control.should_training_stop = True
        # What the Trainer logs as `loss`: the mean over the step's updates (0 without any).
        return torch.stack(losses).mean() if losses else out.loss

    # -- one round -----------------------------------------------------------------------------

    def _run_round(
        self, model: torch.nn.Module, inputs: dict[str, Any], round_index: int, training: bool
    ) -> _RoundOutput:
        """Generate, rank (in flight), score and agree, optimize: one round, top to bottom.

        Host-device sync points on this path: sampling (``generate`` checks for EOS every
        token; the lengths are read back once), the white-box ranking (scores read back), the
        id-range check in ``sequence_token_logps``, the loss's input checks (``RankingLoss``),
        the loss values recorded in the stats, and the sum of the counters over processes.
        """
        prompts = inputs["prompts"]
        # What the white box sees after truncation: the black box ranks the same.
        visible = inputs.get("visible_prompts", prompts)
        if self.vllm is not None:
            with self._metrics.timed("weight_sync"):
                self.vllm.sync()
        with self._metrics.timed("generate"):
            candidates = self._generate(model, inputs)
        usage_before = copy.deepcopy(self.ranker.usage)
        pending = self._rank(visible, candidates, inputs.get("columns"))  # in flight meanwhile
        with self._metrics.timed("forward"):
            scored = self._score(model, candidates, training)
        with self._metrics.timed("rank_wait"):
            results = pending.wait()
        outcomes, stats = self._agree(
            prompts, visible, candidates, scored, results, round_index, training
        )
        stats.set_spent(usage_before, self.ranker.usage)
        stats.late = pending.late
        stats.demonstrations = sum(len(r.demonstrations) for r in pending.requests)
        if training:
            stats.hard_failures = self.failures.observe(results)
        return self._optimize(model, candidates, scored, outcomes, stats, round_index, training)

    def _generate(self, model: torch.nn.Module, inputs: dict[str, Any]) -> Candidates:
        """Sample ``num_generations`` responses per prompt with the current weights."""
        if self.vllm is not None:  # synced by _run_round
            step = self.state.global_step
            return self.vllm.sample(inputs["input_ids"], inputs["attention_mask"], step)
        with (
            torch.no_grad(),
            checkpointing_paused(model),  # before trl's unwrap, which then leaves it alone
            unwrap_model_for_generation(model, self.accelerator) as unwrapped,
            full_parameters_for_generation(model, self.accelerator),  # FSDP only
        ):
            return sample_candidates(
                unwrapped,
                inputs["input_ids"],
                inputs["attention_mask"],
                num_generations=self.args.num_generations,
                generation_config=self.generation_config,
                tokenizer=self.processing_class,
                eos_token_ids=self.eos_token_ids,
                chunk_rows=self.args.scoring_batch_size,
            )

    def _rank(
        self, prompts: list[Any], candidates: Candidates, columns: list[dict] | None = None
    ) -> PendingRanking:
        """Send every prompt's candidates, with its demonstrations, its dataset row's other
        columns and the responses' token ids, to the black box."""
        count = self.ranker.demonstration_tokens
        requests = [
            RankRequest(
                prompt,
                texts,
                select_demonstrations(self.pool, prompt, self.args, count),
                columns=columns[b] if columns else {},
                completion_ids=ids,
            )
            for b, (prompt, texts, ids) in enumerate(
                zip(prompts, candidates.texts, candidates.token_ids())
            )
        ]
        self.ranker.trainer_state = self.state  # reward functions get it, as in TRL
        deadline = self.args.ranking_deadline
        if deadline is None:
            deadline = self.ranker.deadline_s(len(requests))
        return PendingRanking(self.ranker, requests, deadline)

    def _score(self, model: torch.nn.Module, candidates: Candidates, training: bool) -> _Scored:
        """The white box's log-probs of every candidate and its own ranking of them."""
        logps, token_mask = candidate_token_logps(
            model,
            candidates.prompt_ids,
            candidates.prompt_mask,
            candidates.completion_ids,
            candidates.completion_mask,
            logits_to_keep=self._logits_to_keep,
            num_chunks=1 if training else self._eval_chunks(),
        )
        rankings = self.loss_fn.ranking(logps.detach(), token_mask, candidates.candidate_mask)
        return _Scored(logps, token_mask, rankings)

    def _agree(
        self,
        prompts: list[Any],
        visible: list[Any],
        candidates: Candidates,
        scored: _Scored,
        results: list[RankResult],
        round_index: int,
        training: bool,
    ) -> tuple[list[PromptOutcome], RoundStats]:
        """Each prompt's agreement and target; agreements join the pool (on every process)."""
        args = self.args
        outcomes = [
            prompt_outcome(
                result,
                whitebox,
                failure_policy=args.ranker_failure_policy if training else "skip",
                reward_mode=args.reward_from_ranking,
                use_better_response=args.use_better_response and training,
                better_response_as=args.better_response_as,
            )
            for result, whitebox in zip(results, scored.rankings)
        ]
        rows = [
            log_row(
                step=self.state.global_step,
                round_index=round_index,
                process_index=self.accelerator.process_index,
                prompt=prompt,
                rendered_prompt=render_prompt(
                    prompt, self.processing_class, args.chat_template_kwargs
                ),
                responses=texts,
                result=result,
                whitebox_ranking=o.whitebox_ranking,
                agreement=o.agreement,
                ranker_prompt=shown,
            )
            for prompt, shown, texts, result, o in zip(
                prompts, visible, candidates.texts, results, outcomes
            )
        ]
        if training:
            if args.use_dynamic_demonstrations:  # as shown to the black box
                share_agreements(self.pool, visible, candidates.texts, outcomes)
            if self._round_log is not None or args.log_completions:
                all_rows = gather_object(rows)
                if self.accelerator.is_main_process:
                    if self._round_log is not None:
                        self._round_log.write(all_rows)
                    if args.log_completions:
                        self._completion_rows.extend(all_rows)
        return outcomes, RoundStats.count(outcomes, candidates)

    def _optimize(
        self,
        model: torch.nn.Module,
        candidates: Candidates,
        scored: _Scored,
        outcomes: list[PromptOutcome],
        stats: RoundStats,
        round_index: int,
        training: bool,
    ) -> _RoundOutput:
        """The ranking loss on the round's targets and, when training and some process has a
        usable ranking, an update (the step's last update is left to the Trainer)."""
        logps, token_mask = scored.logps, scored.token_mask
        num_candidates = candidates.completion_ids.shape[1]
        rewards, target_mask = target_tensors(outcomes, num_candidates, logps.device)
        sft: dict[str, torch.Tensor] = {}  # the better responses as SFT target
        if reduce_sum(self.accelerator, [stats.better])[0] > 0:
            # Some process has a better response: all run the same extra forward.
            with self._metrics.timed("forward"):
                better = better_response_logps(
                    model,
                    candidates,
                    outcomes,
                    tokenizer=self.processing_class,
                    eos_token_id=self.eos_token_ids[0],
                    max_completion_length=self.args.max_completion_length,
                    logits_to_keep=self._logits_to_keep,
                )
            if self.args.better_response_as == "candidate":
                logps, token_mask, rewards, target_mask = add_better_responses(
                    better, logps, token_mask, rewards, target_mask
                )
            else:
                sft.update(better_response_sft_target(better, target_mask))
        # Where no local prompt has a target, this is a zero that still has a graph, so DDP's
        # gradient all-reduce matches the processes that learn something.
        out = self.loss_fn(logps, token_mask, rewards, target_mask, **sft)
        stats.add_loss(out, sum(o.usable for o in outcomes))
        total = stats.reduce(self.accelerator)
        last = round_index == self.args.max_rounds - 1 or (
            self.args.stop_on_full_agreement and total.not_full == 0
        )
        if not training:
            return _RoundOutput(total, out.loss.detach(), last=True, updated=False)
        if total.usable == 0:  # summed over processes: all take this branch or none
            return _RoundOutput(total, torch.zeros((), device=self.args.device), last, False)
        with self._metrics.timed("backward"):
            loss = self._update(model, out.loss, last)
        return _RoundOutput(total, loss, last, updated=True)

    def _eval_chunks(self) -> int:
        size = self.args.scoring_batch_size
        if size is None:
            return 1
        rows = self.args.per_device_eval_batch_size * self.args.num_generations
        return -(-rows // size)  # from config values, hence equal on every process

    # -- evaluation ----------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """One round without updates: sample, rank, score; the loss uses the black-box
        ranking only (failed prompts and better responses are left out)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            out = self._run_round(model, inputs, 0, training=False)
        self._metrics.discard_times()  # the phase times logged are the training rounds'
        self._eval_stats.add(out.stats)
        return out.loss, None, None

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        self._eval_stats = RoundStats()
        output = super().evaluation_loop(
            dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
        )
        stats, self._eval_stats = self._eval_stats, RoundStats()
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in stats_to_metrics(stats).items()}
        # The Trainer's mean counts batches without any ranking as 0: weight by prompts instead.
        count = stats.contributing
        metrics[f"{metric_key_prefix}_loss"] = stats.loss_sum / count if count else float("nan")
        output.metrics.update(metrics)
        return output

    # -- logging, checkpoints ------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_runtime" in logs:  # the end-of-run summary: rows dropped, per reason
            logs = {**logs, **rows_summary(self.row_reports)}
        training = self.model.training
        super().log(logs, start_time)
        if training and self.args.log_completions and self.accelerator.is_main_process:
            log_completion_table(
                self._completion_rows,
                self.state.global_step,
                self.args.report_to,
                self.args.num_completions_to_print,
            )
            self._completion_rows = []  # one table per logging step, not again at the end

    def _training_metrics(self) -> dict[str, float]:
        metrics = super()._training_metrics()
        if metrics:
            self.failures.check_interval(metrics.get("ranker/failure_rate"))
            metrics["ablation/dynamic_demonstrations"] = float(self.args.use_dynamic_demonstrations)
            metrics["ablation/static_demonstration"] = float(self.args.use_static_demonstration)
        return metrics

    def _save_checkpoint(self, model, trial) -> None:
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint_dir = os.path.join(self._get_output_dir(trial=trial), folder)
        ranker_states = gather_object([self.ranker.state_dict()])  # one per process
        if self.args.should_save:
            save_cycle_state(checkpoint_dir, self.pool.state_dict(), ranker_states)
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None):
        """As :meth:`transformers.Trainer.train`; resuming also restores the demonstration
        pool and the ranker's state saved in the checkpoint."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No checkpoint found in output_dir ({self.args.output_dir}).")
        if self.vllm is not None:
            self.vllm.resync_all()  # a resume loads every weight, frozen ones included
        if resume_from_checkpoint:
            restore_cycle_state(
                str(resume_from_checkpoint),
                self.accelerator.process_index,
                pool=self.pool,
                ranker=self.ranker,
            )
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint or None,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
        )
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.failures.finish(output.metrics, os.path.join(self.args.output_dir, checkpoint))
        return output
