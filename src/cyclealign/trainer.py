"""CycleAlignTrainer: generate, rank, agree and optimize, up to ``max_rounds`` times a step.

Every decision that changes how many collective calls a process makes (early stop, whether
anything is learned, whether a better-response forward runs, pool and log gathers) is taken
from counters summed over all processes, so DDP and DeepSpeed never wait on a process that
took another branch. See ``docs/trainer.md``.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import DistributedType, gather_object
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl.models.utils import unwrap_model_for_generation

from . import demonstrations  # the module, so the pool class is looked up at init
from .callbacks import SampleTableCallback
from .collator import PromptCollator, render_prompt
from .config import CycleAlignConfig
from .cycle_state import restore_cycle_state, save_cycle_state
from .cycle_targets import (
    append_top_candidate,
    judge_prompt,
    round_stats,
    target_tensors,
)
from .generation import (
    accepts_logits_to_keep,
    better_response_completions,
    checkpointing_paused,
    completion_token_logps,
    eos_token_ids,
    pad_last_dim,
    sample_candidates,
    sampling_config,
)
from .losses import get_ranking_loss
from .metrics import CycleMetrics, RoundStats, reduce_sum, stats_to_metrics
from .model_loading import disable_dropout, load_model_and_tokenizer, wrap_with_peft
from .offline import RANKED_COLUMNS, RankedCollator, prepare_ranked_datasets, ranked_batch_loss
from .pool_sync import select_demonstrations, share_agreements
from .rankers.base import BlackBoxRanker, RankRequest
from .rankers.prompt import drop_static_demonstration
from .ranking_results import PendingRanking
from .round_log import RoundLogWriter, round_record

__all__ = ["CycleAlignTrainer"]

logger = logging.getLogger(__name__)


@dataclass
class _Round:
    """What a round produced: the loss (with its graph when training) and the counters summed
    over processes (``stats.usable``/``stats.not_full`` drive the joint decisions)."""

    loss: torch.Tensor
    stats: RoundStats


class CycleAlignTrainer(Trainer):
    """Align a causal LM with rankings from a black-box LLM (CycleAlign, Hong et al., 2023).

    Args:
        model: a causal LM, or a local path / hub id loaded with
            ``AutoModelForCausalLM.from_pretrained(model, **args.model_init_kwargs)``.
        args: a :class:`~cyclealign.CycleAlignConfig` (default: one writing to
            ``cyclealign-output``).
        train_dataset, eval_dataset: datasets with a ``prompt`` column (strings or chat messages).
        processing_class: the tokenizer; loaded from ``model`` when it is a path.
        ranker: the black box, a :class:`~cyclealign.BlackBoxRanker`.
        peft_config: wrap the model with ``peft.get_peft_model``; only the adapter trains.
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
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
    ) -> None:
        if args is None:
            args = CycleAlignConfig(output_dir="cyclealign-output")
        elif not isinstance(args, CycleAlignConfig):
            raise TypeError(
                f"CycleAlignTrainer: args must be a CycleAlignConfig, got {type(args).__name__}. "
                "Build one with CycleAlignConfig(output_dir=..., ...)."
            )
        args._validate()  # fields may have been changed after construction
        offline = ranker is None
        if offline:  # ranked data, checked row by row now (round logs are converted)
            train_dataset, eval_dataset = prepare_ranked_datasets(train_dataset, eval_dataset)
        elif not isinstance(ranker, BlackBoxRanker):
            raise TypeError(
                "CycleAlignTrainer: ranker must be a BlackBoxRanker (for example OpenAIRanker or "
                f"FunctionRanker), got {type(ranker).__name__}."
            )
        elif not args.use_static_demonstration:
            drop_static_demonstration(ranker)
        model, processing_class = load_model_and_tokenizer(model, args, processing_class)
        if peft_config is not None:
            model = wrap_with_peft(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout(model)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token

        self.ranker = ranker
        self.loss_fn = get_ranking_loss(args.ranking_loss, **(args.ranking_loss_kwargs or {}))
        self.pool = demonstrations.DemonstrationPool(max_size=args.demonstration_pool_size)
        self._metrics = CycleMetrics()
        self._eval_stats = RoundStats()
        self._latest_samples: list[dict[str, Any]] = []
        callbacks = [*(callbacks or []), SampleTableCallback(lambda: self._latest_samples)]
        super().__init__(
            model=model,
            args=args,
            data_collator=(
                RankedCollator(
                    processing_class,
                    args.max_prompt_length,
                    args.max_completion_length,
                    eos_token_ids(model, processing_class)[0],
                )
                if offline
                else PromptCollator(processing_class, args.max_prompt_length)
            ),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.eos_token_ids = eos_token_ids(self.model, processing_class)
        self.generation_config = sampling_config(args, processing_class, self.eos_token_ids)
        self._logits_to_keep = accepts_logits_to_keep(self.model)
        self._round_log = RoundLogWriter(args.output_dir) if args.round_log else None

    def _set_signature_columns_if_needed(self) -> None:
        # Only the raw prompt is needed; the collator tokenizes it.
        if self._signature_columns is None:
            self._signature_columns = ["prompt"] if self.ranker else list(RANKED_COLUMNS)

    # -- training ----------------------------------------------------------------------------

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """Up to ``max_rounds`` rounds on one batch; every round with a usable ranking
        updates the weights, the last round's update is left to the Trainer."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        if self.ranker is None:  # offline: fixed ranked candidates, one update
            out = ranked_batch_loss(model, inputs, self.loss_fn, self._logits_to_keep)
            self._metrics.add("loss/rank", float(out.rank_loss.detach()))
            self._metrics.add("loss/sft", float(out.sft_loss.detach()))
            self._metrics.add("cycle/offline", 1.0)
            return self._update(model, out.loss, last=True)
        if not self.is_deepspeed_enabled:
            # A round with nothing to learn must leave every .grad None: torch optimizers
            # then skip the parameter entirely (no momentum, no weight decay).
            self.optimizer.zero_grad(set_to_none=True)
        step_stats, times = RoundStats(), {"backward": 0.0}
        loss = torch.zeros((), device=self.args.device)
        updates = rounds = 0
        for round_index in range(self.args.max_rounds):
            rounds += 1
            outcome = self._run_round(model, inputs, round_index, times, training=True)
            step_stats.add(outcome.stats)
            last = round_index == self.args.max_rounds - 1 or (
                self.args.stop_on_full_agreement and outcome.stats.not_full == 0
            )
            loss = torch.zeros((), device=self.args.device)
            if outcome.stats.usable > 0:  # summed over processes: all take this branch or none
                start = time.perf_counter()
                loss = self._update(model, outcome.loss, last)
                times["backward"] += time.perf_counter() - start
                updates += 1
            if last:
                break
        self._metrics.add_step(step_stats, rounds, updates)
        self._metrics.add("demos/pool_size", len(self.pool))
        for name, seconds in times.items():
            self._metrics.add(f"time/{name}", seconds)
        return loss

    def _update(self, model: torch.nn.Module, loss: torch.Tensor, last: bool) -> torch.Tensor:
        kwargs = {}
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            kwargs["scale_wrt_gas"] = False
        # Under DeepSpeed this also clips, steps and zeroes (the engine's step).
        self.accelerator.backward(loss, **kwargs)
        if not last and not self.is_deepspeed_enabled:
            if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
                self._clip_grad_norm(model)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # -- one round -----------------------------------------------------------------------------

    def _run_round(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        round_index: int,
        times: dict[str, float],
        training: bool,
    ) -> _Round:
        args, tokenizer = self.args, self.processing_class
        prompts = inputs["prompts"]
        start = time.perf_counter()
        with (
            torch.no_grad(),
            checkpointing_paused(model),  # before trl's unwrap, which then leaves it alone
            unwrap_model_for_generation(model, self.accelerator) as unwrapped,
        ):
            cands = sample_candidates(
                unwrapped,
                inputs["input_ids"],
                inputs["attention_mask"],
                num_generations=args.num_generations,
                generation_config=self.generation_config,
                tokenizer=tokenizer,
                eos_token_ids=self.eos_token_ids,
                chunk_rows=args.scoring_batch_size,
            )
        _add_time(times, "generate", start)

        usage_before = copy.deepcopy(self.ranker.usage)
        requests = [
            RankRequest(prompt, texts, select_demonstrations(self.pool, prompt, args))
            for prompt, texts in zip(prompts, cands.texts)
        ]
        pending = PendingRanking(self.ranker, requests)  # in flight during the forward pass

        start = time.perf_counter()
        batch, num_cands, comp_len = cands.completion_ids.shape
        logps, token_mask = completion_token_logps(
            model,
            cands.prompt_ids.repeat_interleave(num_cands, dim=0),
            cands.prompt_mask.repeat_interleave(num_cands, dim=0),
            cands.completion_ids.reshape(batch * num_cands, comp_len),
            cands.completion_mask.reshape(batch * num_cands, comp_len),
            logits_to_keep=self._logits_to_keep,
            num_chunks=1 if training else self._eval_chunks(),
        )
        logps = logps.view(batch, num_cands, comp_len)
        token_mask = token_mask.view(batch, num_cands, comp_len)
        whitebox = self.loss_fn.ranking(logps.detach(), token_mask, cands.candidate_mask)
        _add_time(times, "forward", start)

        start = time.perf_counter()
        results = pending.wait()
        _add_time(times, "rank_wait", start)

        outcomes = [
            judge_prompt(
                result,
                wb,
                failure_policy=args.ranker_failure_policy if training else "skip",
                reward_mode=args.reward_from_ranking,
                use_better_response=args.use_better_response and training,
            )
            for result, wb in zip(results, whitebox)
        ]
        local = round_stats(outcomes)
        local.add_usage_delta(usage_before, self.ranker.usage)
        rewards, target_mask = target_tensors(outcomes, num_cands, logps.device)
        if reduce_sum(self.accelerator, [local.better])[0] > 0:
            # Some process has a better response: all run the same extra forward.
            start = time.perf_counter()
            logps, token_mask, rewards, target_mask = self._add_better_responses(
                model, cands, outcomes, logps, token_mask, rewards, target_mask
            )
            _add_time(times, "forward", start)
        # Where no local prompt has a target, this is a zero that still has a graph, so DDP's
        # gradient all-reduce matches the processes that learn something.
        out = self.loss_fn(logps, token_mask, rewards, target_mask)
        local.add_loss(out, sum(o.usable for o in outcomes))

        records = [
            round_record(
                step=self.state.global_step,
                round_index=round_index,
                process_index=self.accelerator.process_index,
                prompt=prompt,
                rendered_prompt=render_prompt(prompt, tokenizer),
                responses=texts,
                result=result,
                whitebox_ranking=o.whitebox_ranking,
                agreement=o.agreement,
            )
            for prompt, texts, result, o in zip(prompts, cands.texts, results, outcomes)
        ]
        self._latest_samples = records
        if training:
            if args.use_dynamic_demonstrations:
                share_agreements(self.pool, prompts, cands.texts, outcomes)
            if self._round_log is not None:
                all_records = gather_object(records)
                if self.accelerator.is_main_process:
                    self._round_log.write(all_records)
        return _Round(loss=out.loss, stats=local.reduce(self.accelerator))

    def _add_better_responses(self, model, cands, outcomes, logps, token_mask, rewards, mask):
        ids, comp_mask, present = better_response_completions(
            [o.better_response for o in outcomes],
            cands,
            tokenizer=self.processing_class,
            eos_token_id=self.eos_token_ids[0],
            max_completion_length=self.args.max_completion_length,
        )
        better_logps, better_mask = completion_token_logps(
            model,
            cands.prompt_ids,
            cands.prompt_mask,
            ids,
            comp_mask,
            logits_to_keep=self._logits_to_keep,
        )
        width = max(logps.shape[-1], better_logps.shape[-1])
        logps = torch.cat(
            [pad_last_dim(logps, width), pad_last_dim(better_logps, width)[:, None]], 1
        )
        token_mask = torch.cat(
            [
                pad_last_dim(token_mask, width, False),
                pad_last_dim(better_mask, width, False)[:, None],
            ],
            dim=1,
        )
        rewards, mask = append_top_candidate(rewards, mask, present)
        return logps, token_mask, rewards, mask

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
        if self.ranker is None:
            with torch.no_grad():
                out = ranked_batch_loss(model, inputs, self.loss_fn, self._logits_to_keep)
            return out.loss.detach(), None, None
        with torch.no_grad():
            outcome = self._run_round(model, inputs, 0, {}, training=False)
        self._eval_stats.add(outcome.stats)
        return outcome.loss.detach(), None, None

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval",
    ):
        if self.ranker is None:  # offline: the Trainer's own mean of the ranking loss
            return super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
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
        if self.model.training:  # evaluation adds its own metrics in evaluation_loop
            metrics = self._metrics.pop_means()
            if metrics and self.ranker is not None:  # offline training has no ranker prompt
                metrics["ablation/dynamic_demonstrations"] = float(
                    self.args.use_dynamic_demonstrations
                )
                metrics["ablation/static_demonstration"] = float(self.args.use_static_demonstration)
            logs = {**logs, **metrics}
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial) -> None:
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        checkpoint_dir = os.path.join(self._get_output_dir(trial=trial), folder)
        ranker_state = self.ranker.state_dict() if self.ranker is not None else {}
        ranker_states = gather_object([ranker_state])  # one per process
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
        if resume_from_checkpoint:
            restore_cycle_state(
                str(resume_from_checkpoint),
                self.accelerator.process_index,
                pool=self.pool,
                ranker=self.ranker,
            )
        return super().train(
            resume_from_checkpoint=resume_from_checkpoint or None,
            trial=trial,
            ignore_keys_for_eval=ignore_keys_for_eval,
        )


def _add_time(times: dict[str, float], name: str, start: float) -> None:
    times[name] = times.get(name, 0.0) + time.perf_counter() - start
