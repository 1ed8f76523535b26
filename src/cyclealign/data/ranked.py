"""Ranked data: what offline PRO/RRHF training reads, and where it comes from.

A ranked row has a ``prompt`` (a string or chat messages), ``responses`` (two or more
strings) and either ``rewards`` (one float per response, higher is better) or ``ranking``
(response indices, best first; it becomes linear rewards ``n-1, ..., 0``). Sources:

* ``load_hh_rlhf(..., format="ranked")``: the chosen reply above the rejected one;
* a trainer's round log (:func:`from_round_log`, :func:`load_round_log`);
* either of these with extra candidates scored by a reward model (:func:`add_candidates`,
  :func:`sample_and_score`), as PRO's data pipeline does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..agreement import PermutationError, check_permutation

__all__ = [
    "ROUND_LOG_COLUMNS",
    "add_candidates",
    "from_round_log",
    "is_round_log",
    "load_round_log",
    "row_rewards",
    "sample_and_score",
]

logger = logging.getLogger("cyclealign.data")

#: Columns that only a trainer's round log has (besides prompt/responses/ranking).
ROUND_LOG_COLUMNS = ("messages", "whitebox_ranking", "agreement")


def row_rewards(row: Mapping[str, Any], where: str) -> list[float]:
    """Rewards by response index of one ranked row; a ``ValueError`` that starts with
    ``where`` (e.g. ``"train_dataset row 3"``) when the row is not usable."""
    responses = row.get("responses")
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
    try:
        order = check_permutation(ranking, n)
    except PermutationError as err:
        raise ValueError(f"{where}: {err}") from None
    from ..targets import linear_rewards  # here: reading rows needs no torch

    return linear_rewards(order)


def is_round_log(columns: Sequence[str]) -> bool:
    """Whether a dataset with these columns is a trainer's round log."""
    return all(c in columns for c in ("prompt", "responses", "ranking", *ROUND_LOG_COLUMNS))


def _original_prompt(text: str, messages: list[dict[str, str]]) -> Any:
    # The log writes a string prompt as itself plus one user turn with the same text; a chat
    # prompt as its rendered text plus the conversation. Give back what the trainer was given.
    if len(messages) == 1 and messages[0]["role"] == "user" and messages[0]["content"] == text:
        return text
    return messages


def from_round_log(log: Any, min_responses: int = 2) -> Any:
    """A round log (``datasets.load_dataset("json", data_files=".../round_log.jsonl")``) as
    ranked data: columns ``prompt``, ``responses`` and ``ranking`` (the black box's).

    Rows whose ranking failed (an empty ``ranking``) or with fewer than ``min_responses``
    distinct responses are dropped, with a logged count. ``prompt`` is what the trainer was
    given: the string, or the chat messages (messages for every row where a log holds both
    kinds). Improved responses (``better_response``) are not added: the ranking does not
    place them.
    """
    import datasets

    keep = [
        i
        for i, (ranking, responses) in enumerate(zip(log["ranking"], log["responses"]))
        if ranking and len(responses) >= min_responses
    ]
    if len(keep) < len(log):
        logger.warning(
            "Round log: dropped %d of %d rows without a usable ranking (the ranking failed or "
            "fewer than %d responses).",
            len(log) - len(keep),
            len(log),
            min_responses,
        )
    log = log.select(keep)
    prompts = [_original_prompt(t, m) for t, m in zip(log["prompt"], log["messages"])]
    if len({isinstance(p, str) for p in prompts}) > 1:
        # Logs of two runs appended: one column holds one type, and messages fit both.
        prompts = list(log["messages"])
    return datasets.Dataset.from_dict(
        {"prompt": prompts, "responses": list(log["responses"]), "ranking": list(log["ranking"])}
    )


def load_round_log(path: str, min_responses: int = 2) -> Any:
    """Read ``output_dir/round_log.jsonl`` and return :func:`from_round_log` of it."""
    import datasets

    log = datasets.load_dataset("json", data_files=str(path), split="train")
    return from_round_log(log, min_responses)


def add_candidates(
    dataset: Any, candidates: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]
) -> Any:
    """Ranked rows with extra scored candidates appended (as PRO's data pipeline does).

    ``candidates[i]`` and ``scores[i]`` extend row ``i``'s ``responses`` and ``rewards``; the
    result has ``rewards`` and no ``ranking``. The scores must be on the same scale as the
    rows' rewards (all from one reward model, say); rows given as ``ranking`` become linear
    rewards first, so mix those with care.
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
            "rewards": [*row_rewards(row, f"add_candidates: row {index}"), *values],
        }

    columns = [c for c in ("ranking",) if c in dataset.column_names]
    return dataset.map(extend, with_indices=True, remove_columns=columns)


def sample_and_score(
    dataset: Any,
    model: Any,
    tokenizer: Any,
    score_fn: Callable[[list[Any], list[str]], Sequence[float]],
    num_samples: int = 2,
    max_completion_length: int = 64,
    temperature: float = 1.0,
    max_prompt_length: int | None = None,
    stop_strings: Sequence[str] | None = None,
) -> tuple[list[list[str]], list[list[float]]]:
    """Sample ``num_samples`` responses per prompt from ``model`` and score them.

    Prompts are rendered and tokenized as the trainer does (``PromptCollator``), and
    responses end as in training (:func:`cyclealign.sampling.end_responses`, with
    ``stop_strings``). ``score_fn``
    is a TRL-style reward function ``(prompts, completions) -> list[float]``; a
    ``RewardModelRanker``'s ``score`` method fits. Returns ``(candidates, scores)`` for
    :func:`add_candidates`.
    """
    import torch

    from ..prompts import PromptCollator
    from ..sampling import end_responses, eos_token_ids

    eos = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    collate = PromptCollator(_WithPad(tokenizer, pad), max_prompt_length)
    device = next(model.parameters()).device
    prompts = list(dataset["prompt"])
    samples: list[list[str]] = []
    for prompt in prompts:  # one prompt at a time: no padding to get wrong
        batch = collate([{"prompt": prompt}])
        with torch.no_grad():
            out = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                max_new_tokens=max_completion_length,
                num_return_sequences=num_samples,
                pad_token_id=pad,
                eos_token_id=eos,
                **(
                    {"stop_strings": list(stop_strings), "tokenizer": tokenizer}
                    if stop_strings
                    else {}
                ),
            )
        ended = end_responses(
            out[:, batch["input_ids"].shape[1] :].tolist(),
            tokenizer=tokenizer,
            eos_token_ids=eos,
            stop_strings=stop_strings,
        )
        samples.append([r.text.strip() for r in ended])
    flat = [c for row in samples for c in row]
    values = list(score_fn([p for p, row in zip(prompts, samples) for _ in row], flat))
    if len(values) != len(flat):
        raise ValueError(f"sample_and_score: score_fn gave {len(values)} scores for {len(flat)}.")
    scores, start = [], 0
    for row in samples:
        scores.append([float(v) for v in values[start : start + len(row)]])
        start += len(row)
    return samples, scores


class _WithPad:
    """The tokenizer with a pad id, without changing the caller's tokenizer."""

    def __init__(self, tokenizer: Any, pad_token_id: int) -> None:
        self._tokenizer, self.pad_token_id = tokenizer, pad_token_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)
