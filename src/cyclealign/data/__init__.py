"""Data for CycleAlign: HH-RLHF and the demo prompts. Cheap to import (``datasets`` is
imported when a loader runs)."""

from __future__ import annotations

from .demo import demo_prompts, load_demo_prompts
from .hh_rlhf import DROP_REASONS, HH_SUBSETS, HHRLHFReport, load_hh_rlhf, split_dialogue
from .ranked import add_candidates, load_round_log, sample_and_score

__all__ = [
    "DROP_REASONS",
    "HH_SUBSETS",
    "HHRLHFReport",
    "add_candidates",
    "demo_prompts",
    "load_demo_prompts",
    "load_hh_rlhf",
    "load_round_log",
    "sample_and_score",
    "split_dialogue",
]
