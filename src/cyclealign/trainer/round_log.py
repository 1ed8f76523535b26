"""The round log: one JSON line per prompt per round, for auditing and for reuse as data.

Columns keep one type in every row (failures write ``[]`` and ``""``, never ``null``) so
``datasets.load_dataset("json", data_files=".../round_log.jsonl")`` loads the file; the
``prompt``/``responses``/``ranking`` columns are ranked data ready for other trainers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ..prompts import dialogue_text
from ..types import Prompt, RankResult

__all__ = ["ROUND_LOG_NAME", "RoundLogWriter", "log_row"]

ROUND_LOG_NAME = "round_log.jsonl"


def log_row(
    *,
    step: int,
    round_index: int,
    process_index: int,
    prompt: Prompt,
    rendered_prompt: str,
    responses: Sequence[str],
    result: RankResult,
    whitebox_ranking: Sequence[int],
    agreement: Sequence[int],
    ranker_prompt: Prompt | None = None,
) -> dict[str, Any]:
    """One row of the round log.

    ``prompt`` is the prompt string, or for chat prompts the text the model saw (chat template
    applied); ``messages`` always holds the conversation (a string prompt is one user turn).
    ``ranking`` is the black box's, best first (``[]`` when it failed, ``error`` says why).
    ``ranker_prompt`` is the conversation as the black box was shown it (``ranker_prompt``,
    default ``prompt``): after truncation to ``max_prompt_length``, with ``[...]`` where cut.
    """
    if isinstance(prompt, str):
        text, messages = prompt, [{"role": "user", "content": prompt}]
    else:
        text = rendered_prompt
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]
    return {
        "step": int(step),
        "round": int(round_index),
        "process_index": int(process_index),
        "prompt": text,
        "messages": messages,
        "ranker_prompt": dialogue_text(prompt if ranker_prompt is None else ranker_prompt),
        "responses": [str(r) for r in responses],
        "ranking": [int(i) for i in result.ranking] if result.ok else [],
        "whitebox_ranking": [int(i) for i in whitebox_ranking],
        "agreement": [int(i) for i in agreement],
        "scores": [float(s) for s in result.scores] if result.ok and result.scores else [],
        "better_response": result.better_response or "",
        "raw_text": result.raw_text or "",
        "error": result.error or "",
    }


class RoundLogWriter:
    """Appends records to ``output_dir/round_log.jsonl`` (call it on the main process only)."""

    def __init__(self, output_dir: str) -> None:
        self.path = os.path.join(output_dir, ROUND_LOG_NAME)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        if not records:
            return
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
