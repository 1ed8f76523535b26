"""Offline ranking training: PRO and RRHF on fixed, already-ranked candidates.

The paper's PRO and RRHF baselines train on ranked data with no generation and no black
box: :class:`OfflineRankingTrainer` does that on a dataset of ranked rows (see
:mod:`cyclealign.data.ranked`) or a :class:`~cyclealign.CycleAlignTrainer`'s round log. The
forward pass and the loss are the cycle's own (:func:`~cyclealign.logprobs.candidate_token_logps`
and the configured ``RankingLoss``).

Every response is scored as a finished answer: its tokens and an EOS, cut to
``max_completion_length`` (a cut response has no EOS), exactly like the black box's improved
response in the cycle (:func:`~cyclealign.targets.finished_response_ids`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..config import CycleAlignConfig
from ..data.ranked import from_round_log, is_round_log, row_rewards
from ..logprobs import candidate_token_logps
from ..losses import RankingLossOutput
from ..prompts import PromptCollator
from ..targets import finished_response_ids
from .base import RankingTrainerBase

__all__ = [
    "RANKED_COLUMNS",
    "OfflineRankingTrainer",
    "RankedCollator",
    "has_ranked_columns",
    "prepare_ranked_datasets",
    "validate_ranked_rows",
]

RANKED_COLUMNS = ("prompt", "responses", "rewards", "ranking")


def has_ranked_columns(columns: Sequence[str]) -> bool:
    return (
        "prompt" in columns
        and "responses" in columns
        and ("rewards" in columns or "ranking" in columns)
    )


def validate_ranked_rows(dataset: Any, name: str = "ranked data") -> None:
    """Check every row before training starts, so a bad row fails now, not at step 10,000."""
    columns = list(getattr(dataset, "column_names", None) or [])
    use = [c for c in ("responses", "rewards", "ranking") if c in columns]
    rows = dataset.select_columns(use) if hasattr(dataset, "select_columns") else dataset
    for index, row in enumerate(rows):
        row_rewards(row, f"{name} row {index}")


def prepare_ranked_datasets(train_dataset: Any, eval_dataset: Any) -> tuple[Any, Any]:
    """The datasets an offline trainer uses, checked row by row before training starts.

    A round log becomes ranked data (:func:`~cyclealign.data.ranked.from_round_log`: rows
    whose ranking failed are dropped, with a logged count). A dict of evaluation datasets is
    prepared entry by entry; ``None`` stays ``None``, but one of the two is needed.
    """
    if train_dataset is None and eval_dataset is None:
        raise ValueError(_needs("train_dataset", None))
    return _prepare(train_dataset, "train_dataset"), _prepare(eval_dataset, "eval_dataset")


def _prepare(dataset: Any, name: str) -> Any:
    if dataset is None:
        return None
    if isinstance(dataset, Mapping):
        return {key: _prepare(d, f"{name}[{key!r}]") for key, d in dataset.items()}
    columns = list(getattr(dataset, "column_names", None) or [])
    if is_round_log(columns):
        dataset = from_round_log(dataset)
    elif not has_ranked_columns(columns):
        raise ValueError(_needs(name, columns))
    validate_ranked_rows(dataset, name)
    return dataset


def _needs(name: str, columns: list[str] | None) -> str:
    got = "is None" if columns is None else f"has columns {columns}"
    return (
        "OfflineRankingTrainer trains on ranked data: columns 'prompt', 'responses' and "
        "'rewards' or 'ranking' (load_hh_rlhf(format='ranked') gives them), or a "
        "round_log.jsonl loaded with datasets. To run the cycle on prompts, use "
        f"CycleAlignTrainer with a ranker. {name} {got}."
    )


class RankedCollator:
    """Collate ranked rows: the prompt collator's tensors plus the candidates.

    Adds ``completion_ids`` / ``completion_mask`` (``[B, C, L]``, right-padded, each response
    a finished answer), ``candidate_mask`` (``[B, C]``, prompts with fewer responses share
    the batch) and ``rewards`` (``[B, C]``).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_prompt_length: int | None,
        max_completion_length: int | None,
        eos_token_id: int,
        chat_template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.prompts = PromptCollator(tokenizer, max_prompt_length, chat_template_kwargs)
        self.tokenizer = tokenizer
        self.max_completion_length = max_completion_length
        self.eos_token_id = eos_token_id

    def _encode(self, text: str) -> list[int]:
        return finished_response_ids(
            text, self.tokenizer, self.eos_token_id, self.max_completion_length
        )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.prompts(features)
        del batch["columns"]  # the responses and rewards, read below
        encoded = [[self._encode(r) for r in row["responses"]] for row in features]
        rewards = [row_rewards(row, f"ranked batch row {i}") for i, row in enumerate(features)]
        size = len(features)
        num = max(len(c) for c in encoded)
        width = max(len(ids) for c in encoded for ids in c)
        pad = self.tokenizer.pad_token_id
        completion_ids = torch.full((size, num, width), pad, dtype=torch.long)
        completion_mask = torch.zeros((size, num, width), dtype=torch.bool)
        candidate_mask = torch.zeros((size, num), dtype=torch.bool)
        reward_tensor = torch.zeros((size, num), dtype=torch.float32)
        for b, candidates in enumerate(encoded):
            for c, ids in enumerate(candidates):
                completion_ids[b, c, : len(ids)] = torch.tensor(ids)
                completion_mask[b, c, : len(ids)] = True
                candidate_mask[b, c] = True
                reward_tensor[b, c] = rewards[b][c]
            for c in range(len(candidates), num):
                # A padded slot repeats candidate 0 so that every row is a real sequence.
                completion_ids[b, c] = completion_ids[b, 0]
                completion_mask[b, c] = completion_mask[b, 0]
        batch.update(
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            candidate_mask=candidate_mask,
            rewards=reward_tensor,
        )
        return batch


class OfflineRankingTrainer(RankingTrainerBase):
    """Train a causal LM with a ranking loss (PRO, RRHF, a plugin) on fixed ranked candidates:
    the paper's PRO and RRHF baselines, or a rerun of a CycleAlign round log.

    One optimizer update per step; no generation, no ranker. The ``CycleAlignConfig`` fields
    of the cycle (rounds, sampling, demonstrations) are not used; ``max_prompt_length`` and
    ``max_completion_length`` cut prompts and responses.

    Args:
        model, args, processing_class, peft_config, quantization_config, callbacks,
            optimizers: as for :class:`~cyclealign.CycleAlignTrainer`.
        train_dataset, eval_dataset: ranked rows (``prompt``, ``responses``, and ``rewards``
            or ``ranking``), or round logs; every row is checked before training starts.
    """

    def __init__(
        self,
        model: Any,
        args: CycleAlignConfig | None = None,
        *,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        quantization_config: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
    ) -> None:
        train_dataset, eval_dataset = prepare_ranked_datasets(train_dataset, eval_dataset)

        def make_collator(tokenizer: Any, args: CycleAlignConfig, eos: list[int]) -> RankedCollator:
            return RankedCollator(
                tokenizer,
                args.max_prompt_length,
                args.max_completion_length,
                eos[0],
                args.chat_template_kwargs,
            )

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
            make_collator=make_collator,
        )

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = list(RANKED_COLUMNS)

    def _ranked_loss(self, model: torch.nn.Module, inputs: Mapping[str, Any]) -> RankingLossOutput:
        logps, token_mask = candidate_token_logps(
            model,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["completion_ids"],
            inputs["completion_mask"],
            logits_to_keep=self._logits_to_keep,
        )
        return self.loss_fn(logps, token_mask, inputs["rewards"], inputs["candidate_mask"])

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """One update on a batch of ranked rows."""
        model.train()
        out = self._ranked_loss(model, self._prepare_inputs(inputs))
        self._metrics.add("loss/rank", float(out.rank_loss.detach()))
        self._metrics.add("loss/sft", float(out.sft_loss.detach()))
        return self._update(model, out.loss, last=True)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The ranking loss on a batch of ranked rows (the Trainer averages it)."""
        with torch.no_grad():
            out = self._ranked_loss(model, self._prepare_inputs(inputs))
        return out.loss.detach(), None, None
