"""Whole optimizer steps, timed the same way in every benchmark script.

``Trainer.training_step`` is only part of a step: the optimizer's update, clipping and the LR
schedule run after it, in the Trainer's loop. A callback from step begin to step end covers
all of it, for CycleAlign and TRL's trainers alike.
"""

from __future__ import annotations

import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """``times``: seconds of every optimizer step, in order."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)
