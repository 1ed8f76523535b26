"""Feeding the demonstration pool with agreements, identically on every process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from accelerate.utils import gather_object

from .cycle_targets import PromptOutcome
from .demonstrations import Demonstration

__all__ = ["select_demonstrations", "share_agreements"]


def select_demonstrations(pool: Any, prompt: Any, args: Any) -> list[Demonstration]:
    """The dynamic demonstrations to send with ``prompt`` (none when switched off)."""
    if not args.use_dynamic_demonstrations or args.max_demonstrations == 0 or not len(pool):
        return []
    return list(
        pool.select(
            prompt,
            args.max_demonstrations,
            policy=args.demonstration_selection,
            max_chars=args.demonstration_max_chars,
        )
    )


def share_agreements(
    pool: Any,
    prompts: Sequence[Any],
    responses: Sequence[Sequence[str]],
    outcomes: Sequence[PromptOutcome],
) -> int:
    """Add every process's agreements of length >= 2 to ``pool``; returns how many.

    A collective: every process must call it each round. Demonstrations are added in
    process order everywhere, so the pools (and the requests built from them) stay identical.
    """
    new = [
        Demonstration.from_agreement(prompt, texts, o.agreement)
        for prompt, texts, o in zip(prompts, responses, outcomes)
        if len(o.agreement) >= 2
    ]
    shared = gather_object(new)
    for demo in shared:
        pool.add(demo)
    return len(shared)
