"""A run that learns nothing says so: the black box's failures seen in each logging interval,
warnings that name them, and the stop after ``max_failed_steps`` steps without a ranking.

Ranker errors never raise into the training loop (``rankers.pending``), so without this a
server that answers every request with something unusable (a refusal, the wrong format, an
exhausted budget) trains on nothing for as long as the run lasts, and only
``ranker/failure_rate`` shows it. Outages (``TRANSIENT_FAILURES``: 5xx, 429, timeouts,
refused connections) are different: the ranker retries them and the run keeps going,
warning, until the server is back.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from ..rankers.pending import TRANSIENT_FAILURES, failure_kind
from ..types import RankResult
from .stats import RoundStats

__all__ = ["FAILURE_RATE_WARNING", "BlackBoxFailureError", "FailureWatch"]

logger = logging.getLogger(__name__)

#: A logging interval whose ``ranker/failure_rate`` is above this gets a warning.
FAILURE_RATE_WARNING = 0.5


class BlackBoxFailureError(RuntimeError):
    """Training stopped: ``max_failed_steps`` consecutive steps had no usable black-box
    ranking because of failures no retry can fix. A checkpoint was saved first."""


class FailureWatch:
    """Counts the black box's failures for warnings and for ``max_failed_steps``.

    Failure kinds and an example error are kept per process (the warnings name what this
    process saw); the decision to stop is taken from counters summed over processes, so
    every process stops at the same step.
    """

    def __init__(self, max_failed_steps: int | None) -> None:
        self.max_failed_steps = max_failed_steps
        self.kinds: Counter[str] = Counter()  # since the last logging interval
        self.example: str | None = None
        self.consecutive = 0  # steps in a row without a black-box ranking, non-transient
        self._step_kinds: Counter[str] = Counter()  # this step's
        self._streak_kinds: Counter[str] = Counter()  # the consecutive steps'
        self._streak_example: str | None = None
        self.steps = 0
        self.steps_without_update = 0
        self.steps_without_ranking = 0
        self.stopped = False

    def observe(self, results: Sequence[RankResult]) -> int:
        """Record one round's results; returns how many failed for a non-transient reason."""
        hard = 0
        for result in results:
            kind = failure_kind(result)
            if kind is None:
                continue
            self.kinds[kind] += 1
            self._step_kinds[kind] += 1
            if result.error and self.example is None:
                self.example = f"{kind}: {result.error}"
            if result.error and self._streak_example is None:
                self._streak_example = f"{kind}: {result.error}"
            hard += kind not in TRANSIENT_FAILURES
        return hard

    def end_step(self, step: int, stats: RoundStats, updates: int) -> bool:
        """Account for one training step (``stats`` summed over its rounds and over
        processes); warn when it made no update. Returns whether training must stop."""
        self.steps += 1
        self.steps_without_update += updates == 0
        no_ranking = stats.ranked == 0 and stats.prompts > 0
        self.steps_without_ranking += no_ranking
        if updates == 0:
            logger.warning(
                "Step %d made no update: no prompt had a usable ranking (%s).",
                step,
                self.describe(),
            )
        if no_ranking and stats.hard_failures > 0:
            self.consecutive += 1
            self._streak_kinds.update(self._step_kinds)
        else:
            self.consecutive = 0
            self._streak_kinds.clear()
            self._streak_example = None
        self._step_kinds.clear()
        limit = self.max_failed_steps
        self.stopped = limit is not None and self.consecutive >= limit
        return self.stopped

    def check_interval(self, failure_rate: float | None) -> None:
        """At each log: warn when the interval's failure rate is above
        :data:`FAILURE_RATE_WARNING`, then start counting the next interval."""
        if failure_rate is not None and failure_rate > FAILURE_RATE_WARNING:
            logger.warning(
                "The black box failed for %.0f%% of the prompts since the last log (%s).",
                100 * failure_rate,
                self.describe(),
            )
        self.kinds.clear()
        self.example = None

    def describe(self) -> str:
        """The failure kinds seen since the last log and one example error."""
        return _describe(self.kinds, self.example)

    def stop_message(self, checkpoint: str) -> str:
        return (
            f"CycleAlignTrainer stopped: {self.consecutive} consecutive steps had no usable "
            "black-box ranking, for reasons no retry fixes "
            f"({_describe(self._streak_kinds, self._streak_example)}). "
            f"max_failed_steps={self.max_failed_steps} (None never stops). The checkpoint is "
            f"{checkpoint}: fix the ranker (its model, base_url, structured_output, max_tokens "
            "or budget; see docs/rankers.md), then resume from it with "
            "resume_from_checkpoint."
        )

    def finish(self, metrics: dict[str, float], checkpoint: str) -> None:
        """At the end of ``train()``: say how many steps learned nothing (logged and in
        ``metrics`` as ``steps_without_update``), and raise if training was stopped."""
        level = logging.WARNING if self.steps_without_update else logging.INFO
        logger.log(
            level,
            "%d of %d steps made no update; %d had no black-box ranking.",
            self.steps_without_update,
            self.steps,
            self.steps_without_ranking,
        )
        metrics["steps_without_update"] = self.steps_without_update
        if self.stopped:
            raise BlackBoxFailureError(self.stop_message(checkpoint))


def _describe(kinds: Counter[str], example: str | None) -> str:
    if not kinds:
        return "no black-box failure on this process: its rankings gave no pair to learn"
    listed = ", ".join(f"{kind} x{count}" for kind, count in kinds.most_common())
    return f"failure kinds: {listed}" + (f"; for example {example!r}" if example else "")
