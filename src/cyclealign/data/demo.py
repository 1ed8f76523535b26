"""A handful of short prompts written for the offline CPU demo.

They imitate the mix of HH-RLHF (helpful requests and a few harmful ones a model should
decline) but are our own text: the package ships no HH-RLHF rows.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def demo_prompts(num_samples: int | None = None) -> list[dict[str, Any]]:
    """The demo prompts as rows ``{"prompt": [chat messages], "id": str}``."""
    text = resources.files("cyclealign.data").joinpath("demo_prompts.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if num_samples is not None:
        if not 0 < num_samples <= len(rows):
            raise ValueError(f"num_samples must be in 1..{len(rows)} for the demo prompts.")
        rows = rows[:num_samples]
    return rows


def load_demo_prompts(num_samples: int | None = None):
    """:func:`demo_prompts` as a ``datasets.Dataset`` with a ``prompt`` column."""
    import datasets

    return datasets.Dataset.from_list(demo_prompts(num_samples))
