"""Offline ranking training: PRO and RRHF on fixed, already-ranked candidates.

The paper's PRO and RRHF baselines train on ranked data with no generation and no black
box. :class:`~cyclealign.CycleAlignTrainer` does that when it gets ``ranker=None`` and a
dataset with ``prompt``, ``responses`` and either ``rewards`` (higher is better) or
``ranking`` (indices best-first). The forward pass and the loss are the cycle's own
(``generation.completion_token_logps`` and the configured ``RankingLoss``).

Every response is scored as a finished answer, with the EOS token appended, as a sampled
response that ended by itself is in the cycle.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .collator import PromptCollator
from .ranking_results import linear_rewards

__all__ = [
    "RANKED_COLUMNS",
    "RankedCollator",
    "add_candidates",
    "has_ranked_columns",
    "load_round_log",
    "row_rewards",
    "sample_and_score",
    "validate_ranked_rows",
]

logger = logging.getLogger(__name__)

RANKED_COLUMNS = ("prompt", "responses", "rewards", "ranking")


def has_ranked_columns(columns: Sequence[str]) -> bool:
    return "responses" in columns and ("rewards" in columns or "ranking" in columns)


def row_rewards(row: Mapping[str, Any], index: int) -> list[float]:
    """Rewards by response index of a ranked row; a clear error naming the row otherwise."""
    responses = row.get("responses")
    where = f"Ranked data row {index}"
    if not isinstance(responses, Sequence) or isinstance(responses, str):
        raise ValueError(f"{where}: 'responses' must be a list of strings, got {responses!r:.80}.")
    n = len(responses)
    if n < 2:
        raise ValueError(f"{where} has {n} response(s); ranking needs at least two.")
    if not all(isinstance(r, str) for r in responses):
        raise ValueError(f"{where}: every response must be a string.")
    rewards = row.get("rewards")
    if rewards is not None:
        if len(rewards) != n:
            raise ValueError(f"{where} has {n} responses but {len(rewards)} rewards.")
        values = [float(r) for r in rewards]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{where} has non-finite rewards {values}.")
        return values
    ranking = row.get("ranking")
    if ranking is None:
        raise ValueError(f"{where} has neither 'rewards' nor 'ranking'.")
    if sorted(int(i) for i in ranking) != list(range(n)):
        raise ValueError(
            f"{where}: ranking {list(ranking)} is not a permutation of 0..{n - 1} (one entry "
            "per response). Rows of a round log with a failed ranking are dropped by "
            "cyclealign.offline.load_round_log."
        )
    return linear_rewards([int(i) for i in ranking])


def validate_ranked_rows(dataset: Any) -> None:
    """Check every row before training starts, so a bad row fails now, not at step 10,000."""
    columns = list(getattr(dataset, "column_names", None) or [])
    use = [c for c in ("responses", "rewards", "ranking") if c in columns]
    rows = dataset.select_columns(use) if hasattr(dataset, "select_columns") else dataset
    for index, row in enumerate(rows):
        row_rewards(row, index)


def load_round_log(path: str, min_responses: int = 2) -> Any:
    """A trainer's ``round_log.jsonl`` as ranked data (``prompt``, ``responses``, ``ranking``).

    Rows whose ranking failed (an empty ``ranking``) or with fewer than ``min_responses``
    responses are dropped and counted in a log line. The prompt is the chat messages.
    """
    import datasets

    log = datasets.load_dataset("json", data_files=str(path), split="train")
    keep = [
        i
        for i, (ranking, responses) in enumerate(zip(log["ranking"], log["responses"]))
        if ranking and len(responses) >= min_responses
    ]
    dropped = len(log) - len(keep)
    if dropped:
        logger.warning(
            "Round log %s: dropped %d of %d rows without a usable ranking.", path, dropped, len(log)
        )
    log = log.select(keep)
    return datasets.Dataset.from_dict(
        {"prompt": log["messages"], "responses": log["responses"], "ranking": log["ranking"]}
    )


class RankedCollator:
    """Collate ranked rows: the prompt collator's tensors plus the candidates.

    Adds ``completion_ids`` / ``completion_mask`` (``[B, C, L]``, right-padded, EOS appended),
    ``candidate_mask`` (``[B, C]``, prompts with fewer responses share the batch) and
    ``rewards`` (``[B, C]``).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_prompt_length: int | None,
        max_completion_length: int | None,
        eos_token_id: int,
    ) -> None:
        self.prompts = PromptCollator(tokenizer, max_prompt_length)
        self.tokenizer = tokenizer
        self.max_completion_length = max_completion_length
        self.eos_token_id = eos_token_id

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.max_completion_length is not None:
            ids = ids[: self.max_completion_length - 1]
        return [*ids, self.eos_token_id]

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch = self.prompts(features)
        encoded = [[self._encode(r) for r in row["responses"]] for row in features]
        rewards = [row_rewards(row, i) for i, row in enumerate(features)]
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


def ranked_batch_loss(
    model: Any, inputs: Mapping[str, Any], loss_fn: Any, logits_to_keep: bool
) -> Any:
    """The configured ranking loss on a collated ranked batch, through the cycle's forward."""
    from .generation import completion_token_logps

    completion_ids = inputs["completion_ids"]
    batch, num, width = completion_ids.shape
    logps, token_mask = completion_token_logps(
        model,
        inputs["input_ids"].repeat_interleave(num, dim=0),
        inputs["attention_mask"].repeat_interleave(num, dim=0),
        completion_ids.reshape(batch * num, width),
        inputs["completion_mask"].reshape(batch * num, width),
        logits_to_keep=logits_to_keep,
    )
    return loss_fn(
        logps.view(batch, num, width),
        token_mask.view(batch, num, width),
        inputs["rewards"],
        inputs["candidate_mask"],
    )


def add_candidates(
    dataset: Any, candidates: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> Any:
    """Ranked rows with extra scored candidates appended (as PRO's data pipeline does).

    ``candidates[i]`` and ``scores[i]`` extend row ``i``'s ``responses`` and ``rewards``. The
    scores must be on the same scale as the row's rewards (e.g. all from one reward model);
    rows given as ``ranking`` are turned into linear rewards first, so mix those with care.
    """
    if len(candidates) != len(dataset) or len(scores) != len(dataset):
        raise ValueError(
            f"add_candidates: {len(dataset)} rows but {len(candidates)} candidate lists and "
            f"{len(scores)} score lists; give one (possibly empty) list per row."
        )

    def extend(row: dict[str, Any], index: int) -> dict[str, Any]:
        extra, values = list(candidates[index]), [float(s) for s in scores[index]]
        if len(extra) != len(values):
            raise ValueError(
                f"add_candidates: row {index} has {len(extra)} candidates but {len(values)} scores."
            )
        return {
            "responses": [*row["responses"], *extra],
            "rewards": [*row_rewards(row, index), *values],
        }

    columns = [c for c in ("ranking",) if c in dataset.column_names]
    return dataset.map(extend, with_indices=True, remove_columns=columns)


def sample_and_score(
    dataset: Any,
    model: Any,
    tokenizer: Any,
    score_fn: Any,
    num_samples: int = 2,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
) -> tuple[list[list[str]], list[list[float]]]:
    """Sample ``num_samples`` responses per prompt and score them with ``score_fn``.

    ``score_fn`` is a TRL-style reward function ``(prompts, completions) -> list[float]``
    (a ``RewardModelRanker``'s ``score`` method fits). Feed the result to
    :func:`add_candidates`.
    """
    import torch

    from .collator import render_prompt

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = list(dataset["prompt"])
    texts = [render_prompt(p, tokenizer) for p in prompts]
    device = next(model.parameters()).device
    samples: list[list[str]] = []
    for prompt_text in texts:
        batch = tokenizer([prompt_text], return_tensors="pt", add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(
                **batch,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1] :]
        samples.append([t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)])
    flat_prompts = [p for p, row in zip(prompts, samples) for _ in row]
    flat = [c for row in samples for c in row]
    values = list(score_fn(flat_prompts, flat))
    scores, start = [], 0
    for row in samples:
        scores.append([float(v) for v in values[start : start + len(row)]])
        start += len(row)
    return samples, scores
