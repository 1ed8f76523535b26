"""The black-box ranker interface (its request and result types live in :mod:`cyclealign.types`).

A ranker receives, for each prompt, the white-box model's sampled responses and returns
their order best-first. Subclasses implement either :meth:`BlackBoxRanker.rank` (sync)
or :meth:`BlackBoxRanker.arank` (async); the base supplies the other one and
:meth:`BlackBoxRanker.submit`, which the trainer uses to overlap the black box's latency
with its own forward pass.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Any, ClassVar

from ..demonstrations import CHARS_PER_TOKEN
from ..prompts import dialogue_text
from ..types import Demonstration, RankRequest, RankResult, Usage
from ._loop import submit as _submit_coroutine
from .prompt import RankingTemplate

__all__ = ["BlackBoxRanker", "RankRequest", "RankResult", "Usage"]


class BlackBoxRanker:
    """Base class of every ranker. Implement :meth:`rank` or :meth:`arank` (or both).

    A minimal ranker::

        class LengthRanker(BlackBoxRanker):
            def rank(self, requests):
                return [RankResult(sorted(range(len(r.responses)),
                                          key=lambda i: -len(r.responses[i])))
                        for r in requests]
    """

    #: ``True`` when an exception from :meth:`rank` / :meth:`arank` is a bug in user code (a
    #: reward function that raises) rather than a flaky service: the trainer then stops with
    #: that exception instead of counting the prompts as failed.
    stops_on_error: bool = False

    #: The trainer's ``TrainerState`` while a trainer uses this ranker (set before each batch
    #: is ranked), ``None`` otherwise. :class:`~cyclealign.rankers.FunctionRanker` passes it to
    #: reward functions as ``trainer_state``, as TRL does.
    trainer_state: Any = None

    #: Whether its results can carry a ``better_response`` (written text): ``False`` for
    #: rankers that only score or choose (the trainer then warns once that
    #: ``use_better_response`` has nothing to use); ``None``: unknown.
    writes_better_responses: ClassVar[bool | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.rank is BlackBoxRanker.rank and cls.arank is BlackBoxRanker.arank:
            # Checked when the class is defined, not at the first training step.
            raise TypeError(f"{cls.__name__} must implement rank() or arank().")

    # ``usage`` is created on first access so subclasses need not call super().__init__().
    @property
    def usage(self) -> Usage:
        try:
            return self.__dict__["_usage"]
        except KeyError:
            self.__dict__["_usage"] = Usage()
            return self.__dict__["_usage"]

    @usage.setter
    def usage(self, value: Usage) -> None:
        self.__dict__["_usage"] = value

    def rank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        """Rank every request; results come back in request order."""
        return self.submit(requests).result()

    async def arank(self, requests: Sequence[RankRequest]) -> list[RankResult]:
        """Async version of :meth:`rank`."""
        # A sync-only ranker runs in a worker thread so the caller's loop stays free.
        return await asyncio.to_thread(type(self).rank, self, list(requests))

    def submit(
        self, requests: Sequence[RankRequest]
    ) -> concurrent.futures.Future[list[RankResult]]:
        """Start ranking in the background and return a future of the results.

        The trainer calls this, runs its forward pass, then waits on the future.
        """
        requests = list(requests)
        if type(self).arank is not BlackBoxRanker.arank:
            return _submit_coroutine(self.arank(requests))
        return _submit_coroutine(asyncio.to_thread(type(self).rank, self, requests))

    def submit_each(
        self, requests: Sequence[RankRequest]
    ) -> list[concurrent.futures.Future[RankResult]] | None:
        """One future per request, for rankers that answer requests one by one (a round
        deadline then keeps the answers that came in time). ``None`` (the default): the
        trainer uses :meth:`submit`, and a deadline fails the whole batch."""
        return None

    def deadline_s(self, num_requests: int) -> float | None:
        """The longest ``num_requests`` requests submitted together may take, retries
        included: the trainer's default round deadline. ``None`` (the default): no deadline
        unless ``CycleAlignConfig.ranking_deadline`` sets one."""
        return None

    def demonstration_tokens(self, demo: Demonstration) -> int:
        """Prompt tokens ``demo`` adds to one of this ranker's requests (the trainer's budget,
        ``demonstration_max_tokens``, is counted with it).

        The text is the demonstration's turns as the ranker's ``template`` renders them (a
        :class:`~cyclealign.rankers.prompt.RankingTemplate`, as ``OpenAIRanker`` and
        ``LocalChatRanker`` have), else its prompt and responses. It is counted with the
        ranker's ``tokenizer`` where it has one (``LocalChatRanker``; set one on an
        ``OpenAIRanker`` to count exactly), else estimated at
        :data:`~cyclealign.demonstrations.CHARS_PER_TOKEN` characters a token. The few
        tokens a chat format adds per turn are not counted. Override it for another count.
        """
        template = getattr(self, "template", None)
        if isinstance(template, RankingTemplate):
            text = "\n".join(turn["content"] for turn in template.demonstration_turns(demo))
        else:
            text = "\n".join([dialogue_text(demo.prompt), *demo.responses])
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is not None:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return -(-len(text) // CHARS_PER_TOKEN)

    def state_dict(self) -> dict[str, Any]:
        """What to store in a checkpoint (never secrets)."""
        return {"usage": self.usage.as_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.usage = Usage.from_dict(state.get("usage", {}))

    def close(self) -> None:
        """Release clients, files and threads. Safe to call twice."""
