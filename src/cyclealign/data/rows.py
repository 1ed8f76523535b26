"""Prompt rows checked before anything is paid: one rule, counted per reason.

A row is valid when its ``prompt`` is a non-empty string, or a non-empty list of messages
each with a known role (:data:`~cyclealign.prompts.ROLE_NAMES`) and a non-empty string
``content``. A chat ending with an assistant turn is valid. How a valid prompt is rendered is
not this module's business (:mod:`cyclealign.prompts`).

:func:`validate_rows` applies the rule to a dataset: a ``datasets.Dataset`` at once (with
``Dataset.map`` and ``Dataset.filter``, fast and cached), any other map-style dataset (a
list, a torch ``Dataset``) row by row, an ``IterableDataset`` lazily as rows are read (the
same rule and the same counts, in a :class:`RowReport` that fills up during training).
Bad rows are dropped and counted (``invalid_rows="drop"``), or refused with an error that
lists the first few (``"error"``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..prompts import ROLE_NAMES

__all__ = [
    "REASONS",
    "RowReport",
    "check_datasets",
    "prompt_problem",
    "rows_summary",
    "validate_rows",
]

logger = logging.getLogger(__name__)

#: Why a row is refused, by the name counted in reports.
REASONS = {
    "no_prompt": "no prompt (the value is missing or None)",
    "not_a_prompt": "the prompt is neither a string nor a list of messages",
    "empty_prompt": "the prompt is empty or whitespace only",
    "not_a_message": "a message is not a mapping with a 'role'",
    "unknown_role": f"a message's role is none of {sorted(ROLE_NAMES)}",
    "no_content": "a message has no 'content' (missing or None)",
    "empty_content": "a message's content is not a string, or is empty or whitespace only",
}
_EXAMPLES = 5


def prompt_problem(prompt: Any) -> str | None:
    """The reason (a key of :data:`REASONS`) why ``prompt`` cannot be trained on, or ``None``."""
    if prompt is None:
        return "no_prompt"
    if isinstance(prompt, str):
        return None if prompt.strip() else "empty_prompt"
    if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
        return "not_a_prompt"
    if not prompt:
        return "empty_prompt"
    for message in prompt:
        if not isinstance(message, Mapping) or message.get("role") is None:
            return "not_a_message"
        if message["role"] not in ROLE_NAMES:
            return "unknown_role"
        content = message.get("content")
        if content is None:
            return "no_content"
        if not isinstance(content, str) or not content.strip():
            return "empty_content"
    return None


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, Mapping):
        return "not_a_prompt"
    return prompt_problem(row.get("prompt"))


@dataclass
class RowReport:
    """What the check of one dataset found: rows seen, problems by reason, first examples."""

    name: str
    seen: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[int, str, str]] = field(default_factory=list)
    lazy: bool = False

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def add(self, index: int, problem: str | None, prompt: Any) -> None:
        self.seen += 1
        if problem is None:
            return
        self.dropped[problem] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append((index, problem, repr(prompt)[:120]))

    def summary(self) -> str:
        if not self.total_dropped:
            return f"{self.name}: all {self.seen} rows are valid prompts."
        reasons = ", ".join(f"{REASONS[r]}: {n}" for r, n in self.dropped.most_common())
        first = "; ".join(f"row {i}: {p}" for i, _, p in self.examples)
        return (
            f"{self.name}: {self.total_dropped} of {self.seen} rows dropped ({reasons}). "
            f"First: {first}."
        )

    def error(self) -> ValueError:
        lines = "\n".join(f"  row {i}: {REASONS[r]}: {p}" for i, r, p in self.examples)
        return ValueError(
            f"{self.name} has {self.total_dropped} invalid rows"
            f"{'' if self.lazy else f' of {self.seen}'}; the first:\n{lines}\nFix them, or set "
            "invalid_rows='drop' to train without them."
        )


def _problems(prompts: list[Any]) -> dict[str, list[str]]:
    return {"problem": [prompt_problem(p) or "" for p in prompts]}


def _valid(prompts: list[Any]) -> list[bool]:
    return [prompt_problem(p) is None for p in prompts]


class _LazyCheck:
    """The filter of an iterable dataset: checks, counts and drops (or refuses) as it reads."""

    def __init__(self, report: RowReport, refuse: bool) -> None:
        self.report = report
        self.refuse = refuse

    def __call__(self, prompt: Any) -> bool:
        problem = prompt_problem(prompt)
        self.report.add(self.report.seen, problem, prompt)
        if problem is None:
            return True
        if self.refuse:
            raise self.report.error()
        if self.report.total_dropped <= _EXAMPLES:
            logger.warning(
                "%s: row %d dropped: %s: %r",
                self.report.name,
                self.report.seen - 1,
                REASONS[problem],
                prompt,
            )
        return False


def validate_rows(
    dataset: Any, policy: str = "drop", name: str = "train_dataset"
) -> tuple[Any, RowReport]:
    """``(dataset without bad rows, report)``; see the module doc.

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset``, or any map-style dataset of
            rows with a ``prompt``.
        policy: ``"drop"`` (count and drop) or ``"error"`` (raise ``ValueError``).
        name: what the report and errors call the dataset.
    """
    import datasets

    report = RowReport(name)
    refuse = policy == "error"
    if isinstance(dataset, datasets.IterableDataset):
        report.lazy = True
        return dataset.filter(_LazyCheck(report, refuse), input_columns="prompt"), report
    if isinstance(dataset, datasets.Dataset):
        if "prompt" not in dataset.column_names:
            raise ValueError(
                f"{name} has no 'prompt' column (its columns: {dataset.column_names}). Rename "
                "the column with the prompts (strings or chat messages) to 'prompt'."
            )
        flags = dataset.map(
            _problems,
            batched=True,
            input_columns="prompt",
            remove_columns=dataset.column_names,
            desc=f"Checking {name} prompts",
        )
        for index, problem in enumerate(flags["problem"]):
            report.add(index, problem or None, dataset[index]["prompt"] if problem else None)
        if report.total_dropped and not refuse:
            dataset = dataset.filter(
                _valid, batched=True, input_columns="prompt", desc=f"Dropping invalid {name} rows"
            )
    elif not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        logger.info(
            "%s (%s) is not checked: it has no rows by index.", name, type(dataset).__name__
        )
        return dataset, report
    else:
        valid = []
        for index in range(len(dataset)):
            row = dataset[index]
            problem = _row_problem(row)
            report.add(index, problem, row.get("prompt") if isinstance(row, Mapping) else row)
            if problem is None:
                valid.append(index)
        if report.total_dropped and not refuse:
            from torch.utils.data import Subset

            dataset = Subset(dataset, valid)
    if report.total_dropped and refuse:
        raise report.error()
    return dataset, report


def check_datasets(train: Any, evaluation: Any, policy: str) -> tuple[Any, Any, list[RowReport]]:
    """A trainer's ``train_dataset`` and ``eval_dataset`` (one, a dict of them, or ``None``)
    checked with :func:`validate_rows`, the findings logged; returns both and the reports."""
    reports: list[RowReport] = []

    def check(dataset: Any, name: str) -> Any:
        if dataset is None:
            return None
        dataset, report = validate_rows(dataset, policy, name)
        reports.append(report)
        if report.total_dropped:
            logger.warning(report.summary())
        elif report.lazy:
            logger.info("%s is iterable: its rows are checked as they are read.", name)
        return dataset

    train = check(train, "train_dataset")
    if isinstance(evaluation, dict):
        evaluation = {k: check(v, f"eval_dataset[{k!r}]") for k, v in evaluation.items()}
    else:
        evaluation = check(evaluation, "eval_dataset")
    return train, evaluation, reports


def rows_summary(reports: list[RowReport]) -> dict[str, float]:
    """The end-of-run summary of the training rows dropped (``data/invalid_rows``, and per
    reason), logged as a line too."""
    summary: dict[str, float] = {}
    for report in reports:
        if report.name != "train_dataset":
            continue
        summary["data/invalid_rows"] = float(report.total_dropped)
        for reason, count in report.dropped.items():
            summary[f"data/invalid_rows/{reason}"] = float(count)
        (logger.warning if report.total_dropped else logger.info)(report.summary())
    return summary
