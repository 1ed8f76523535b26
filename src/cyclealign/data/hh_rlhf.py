"""Anthropic's HH-RLHF as CycleAlign prompts or as ranked pairs.

Each HH-RLHF row is two transcripts, ``chosen`` and ``rejected``, that share a dialogue and
differ in the last assistant reply. We split the shared dialogue into chat messages (the
prompt, ending with the human's turn) and keep the two final replies.

Rows that do not fit are dropped, counted by reason, with their 0-based row indices in the
subset file, and reported (never silently). Each dropped row counts once, under the first
reason that applies, in this order:

1. ``different_prefix``: chosen and rejected differ before their last assistant turn, so
   there is no single prompt for both (17 rows in the test splits);
2. ``malformed``: no dialogue before the last assistant turn, or it does not start and
   end with a human turn;
3. ``empty_reply``: a final reply that is empty or only whitespace (11);
4. ``identical_replies``: the two final replies are the same text (36).

A few transcripts have two turns of the same speaker in a row (an assistant turn split in
two). Many chat templates refuse such a dialogue, so consecutive turns of one speaker are
joined (with a blank line) into one message; the rows where that happened are listed in
the report (``merged``; 10 rows in the test splits), not dropped. Final replies are kept
as written, even the few where the model went on to write a ``Human:`` turn itself (that
is a reason it was rejected).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..prompts import ROLE_NAMES

__all__ = [
    "DROP_REASONS",
    "HH_RLHF_STOP_STRINGS",
    "HH_SUBSETS",
    "HHRLHFReport",
    "load_hh_rlhf",
    "split_dialogue",
]

logger = logging.getLogger("cyclealign.data")

HH_SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
DROP_REASONS = ("different_prefix", "malformed", "empty_reply", "identical_replies")
FORMATS = ("prompts", "ranked")
PROMPT_FORMATS = ("messages", "raw")

#: Where a response to a raw-format prompt (``"\n\nHuman: ...\n\nAssistant:"``) ends: the
#: list of the official PRO code's ``early_truncation``. A base model given that format
#: writes the next ``Human:`` turn itself; ``CycleAlignConfig(stop_strings=...)`` cuts it.
HH_RLHF_STOP_STRINGS = ("Human:", "human:", "Assistant:", "assistant:")

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
# HH-RLHF speaker names -> chat roles: the inverse of the one role map.
_ROLES = {name: role for role, name in ROLE_NAMES.items() if role != "system"}
_LAST_ASSISTANT = "\n\nAssistant:"


@dataclass
class HHRLHFReport:
    """What :func:`load_hh_rlhf` kept and dropped, per subset.

    ``dropped[subset][reason]`` lists the 0-based indices of the dropped rows in that
    subset's file; ``merged[subset]`` the kept rows whose prompt had consecutive turns of
    one speaker joined; ``sampled[subset]`` how many rows ``num_samples`` drew.
    """

    rows: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    merged: dict[str, list[int]] = field(default_factory=dict)
    sampled: dict[str, int] = field(default_factory=dict)

    def dropped_counts(self, subset: str | None = None) -> dict[str, int]:
        """Dropped rows per reason, for one subset or all."""
        subsets = [subset] if subset else list(self.dropped)
        return {
            reason: sum(len(self.dropped[s].get(reason, [])) for s in subsets)
            for reason in DROP_REASONS
        }

    def summary(self) -> str:
        lines = []
        for subset in self.rows:
            counts = ", ".join(f"{r}={n}" for r, n in self.dropped_counts(subset).items() if n)
            lines.append(
                f"{subset}: {self.rows[subset]} rows, kept {self.kept[subset]}"
                + (f", dropped {counts}" if counts else "")
                + (
                    f", merged turns in {len(self.merged[subset])}"
                    if self.merged.get(subset)
                    else ""
                )
                + (f", sampled {self.sampled[subset]}" if subset in self.sampled else "")
            )
        return "HH-RLHF: " + "; ".join(lines)


def split_dialogue(transcript: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: a\\n\\nAssistant: b"`` -> chat messages (content stripped)."""
    parts = _TURN.split(transcript)
    # parts = [text before the first turn, role, content, role, content, ...]
    return [
        {"role": _ROLES[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _merge_runs(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    merged: list[dict[str, str]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {
                **merged[-1],
                "content": f"{merged[-1]['content']}\n\n{message['content']}",
            }
        else:
            merged.append(dict(message))
    return merged


def _convert(row: dict[str, str]) -> tuple[str | None, dict[str, Any] | None]:
    """(drop reason, None) or (None, converted row)."""
    chosen, rejected = row["chosen"], row["rejected"]
    c_cut, r_cut = chosen.rfind(_LAST_ASSISTANT), rejected.rfind(_LAST_ASSISTANT)
    if c_cut < 0 or r_cut < 0 or chosen[:c_cut] != rejected[:r_cut]:
        return "different_prefix", None
    turns = split_dialogue(chosen[:c_cut])
    prompt = _merge_runs(turns)
    if not prompt or prompt[0]["role"] != "user" or prompt[-1]["role"] != "user":
        return "malformed", None
    chosen_reply = chosen[c_cut + len(_LAST_ASSISTANT) :].strip()
    rejected_reply = rejected[r_cut + len(_LAST_ASSISTANT) :].strip()
    if not chosen_reply or not rejected_reply:
        return "empty_reply", None
    if chosen_reply == rejected_reply:
        return "identical_replies", None
    converted = {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}
    # The raw text a base model is given: the dialogue as written, up to "\n\nAssistant:".
    raw = chosen[:c_cut] + _LAST_ASSISTANT
    return None, {**converted, "raw_prompt": raw, "merged": len(prompt) < len(turns)}


def _read_rows(source: str, subset: str, split: str) -> Iterable[dict[str, str]]:
    folder = Path(source)
    if folder.is_dir():
        path = folder / subset / f"{split}.jsonl.gz"
        if not path.is_file():
            raise FileNotFoundError(
                f"No {path}. A local HH-RLHF folder is laid out like the original repository: "
                f"<folder>/<subset>/<split>.jsonl.gz, with subsets {', '.join(HH_SUBSETS)}."
            )
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)
        return
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(
            f"No folder {source!r}, and it is not a hub id like 'Anthropic/hh-rlhf'."
        )
    import datasets

    yield from datasets.load_dataset(source, data_dir=subset, split=split)


def load_hh_rlhf(
    source: str | os.PathLike[str] = "Anthropic/hh-rlhf",
    subsets: Sequence[str] | None = None,
    split: str = "train",
    num_samples: int | None = None,
    seed: int = 0,
    format: str = "prompts",
    return_report: bool = False,
    prompt_format: str = "messages",
) -> Any:
    """Load HH-RLHF as a ``datasets.Dataset``.

    Args:
        source: a hub id, or a local folder laid out like the original repository
            (``<subset>/<split>.jsonl.gz``).
        subsets: any of :data:`HH_SUBSETS` (default: all four).
        split: ``"train"`` or ``"test"``.
        num_samples: draw this many rows, evenly across the subsets (the remainder goes to
            the first subsets), as the paper's 1,000-prompt sample does; ``None``: all.
        seed: seeds the draw.
        format: ``"prompts"``: columns ``prompt`` (the dialogue ending with the human's
            turn, see ``prompt_format``), ``chosen``, ``rejected``, ``subset``; ``"ranked"``: ``prompt``,
            ``responses`` (``[chosen, rejected]``), ``rewards`` (``[1.0, 0.0]``), ``subset``
            (training data for offline PRO/RRHF).
        return_report: also return the :class:`HHRLHFReport` of kept and dropped rows.
        prompt_format: ``"messages"``: the prompt as chat messages, for a chat model (its chat
            template renders them); ``"raw"``: the dialogue as the data writes it,
            ``"\n\nHuman: ...\n\nAssistant: ...\n\nHuman: ...\n\nAssistant:"``, the raw text a
            base model is given (a string prompt is raw text, as in TRL). The black box sees
            the same dialogue either way.

    Returns:
        The dataset, or ``(dataset, report)`` with ``return_report=True``.
    """
    import datasets

    subsets = list(subsets or HH_SUBSETS)
    unknown = [s for s in subsets if s not in HH_SUBSETS]
    if unknown:
        raise ValueError(f"Unknown HH-RLHF subsets {unknown}; choose from {list(HH_SUBSETS)}.")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"prompt_format must be one of {PROMPT_FORMATS} ('messages' for a chat model, 'raw' "
            f"for a base model), got {prompt_format!r}."
        )
    source = os.fspath(source)
    report = HHRLHFReport()
    per_subset: dict[str, list[dict[str, Any]]] = {}
    for subset in subsets:
        kept: list[dict[str, Any]] = []
        dropped: dict[str, list[int]] = {reason: [] for reason in DROP_REASONS}
        count = 0
        merged: list[int] = []
        for index, row in enumerate(_read_rows(source, subset, split)):
            count += 1
            reason, converted = _convert(row)
            if reason is not None:
                dropped[reason].append(index)
                continue
            if converted.pop("merged"):
                merged.append(index)
            raw = converted.pop("raw_prompt")
            if prompt_format == "raw":
                converted["prompt"] = raw
            kept.append({**converted, "subset": subset})
        report.rows[subset], report.kept[subset] = count, len(kept)
        report.dropped[subset], report.merged[subset] = dropped, merged
        per_subset[subset] = kept

    if num_samples is not None:
        per_subset = _sample_evenly(per_subset, num_samples, seed, report)
    rows = [row for subset in subsets for row in per_subset[subset]]
    if format == "ranked":
        rows = [
            {
                "prompt": r["prompt"],
                "responses": [r["chosen"], r["rejected"]],
                "rewards": [1.0, 0.0],
                "subset": r["subset"],
            }
            for r in rows
        ]
    dropped_total = sum(report.dropped_counts().values())
    (logger.warning if dropped_total else logger.info)(report.summary())
    dataset = datasets.Dataset.from_list(rows)
    return (dataset, report) if return_report else dataset


def _sample_evenly(
    per_subset: dict[str, list[dict[str, Any]]], num_samples: int, seed: int, report: HHRLHFReport
) -> dict[str, list[dict[str, Any]]]:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}.")
    names = list(per_subset)
    base, extra = divmod(num_samples, len(names))
    sampled = {}
    for i, name in enumerate(names):
        quota = base + (1 if i < extra else 0)
        available = per_subset[name]
        if quota > len(available):
            raise ValueError(
                f"num_samples={num_samples} asks {quota} rows of {name}, which has only "
                f"{len(available)} usable rows; ask for fewer or add subsets."
            )
        # One generator per subset, so adding a subset does not change the others' draw.
        rng = random.Random(f"{seed}:{name}")
        picked = sorted(rng.sample(range(len(available)), quota))
        sampled[name] = [available[j] for j in picked]
        report.sampled[name] = quota
    return sampled
