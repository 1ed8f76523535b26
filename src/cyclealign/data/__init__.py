"""Data for CycleAlign: HH-RLHF and the demo prompts. Cheap to import (``datasets`` is
imported when a loader runs)."""

from __future__ import annotations

from .demo import demo_prompts, load_demo_prompts
from .hh_rlhf import DROP_REASONS, HH_SUBSETS, HHRLHFReport, load_hh_rlhf, split_dialogue

__all__ = [
    "DROP_REASONS",
    "HH_SUBSETS",
    "HHRLHFReport",
    "demo_prompts",
    "load_demo_prompts",
    "load_hh_rlhf",
    "split_dialogue",
]
