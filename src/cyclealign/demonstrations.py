"""In-context demonstrations for the black-box ranker.

A :class:`Demonstration` is a ranked example shown to the black box before the query.
CycleAlign's *dynamic* demonstrations are the agreements between the black-box and the
white-box rankings (see :func:`cyclealign.agreement_ranking`); they live in a
:class:`DemonstrationPool`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Prompt = str | list[dict[str, Any]]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Demonstration:
    """A prompt, the responses whose order is known, and their full ranking.

    Args:
        prompt: the instruction, a string or chat messages (``[{"role", "content"}, ...]``).
        responses: the ``k`` responses, indexed ``0..k-1``.
        ranking: response indices best-first, a permutation of ``0..k-1``.
    """

    prompt: Prompt
    responses: tuple[str, ...]
    ranking: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "ranking", tuple(int(i) for i in self.ranking))
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", [dict(m) for m in self.prompt])
        k = len(self.responses)
        if k < 1:
            raise ValueError("A Demonstration needs at least one response.")
        if sorted(self.ranking) != list(range(k)):
            raise ValueError(
                f"Demonstration.ranking must be a permutation of 0..{k - 1} "
                f"(one entry per response), got {list(self.ranking)}."
            )

    @classmethod
    def from_agreement(
        cls, prompt: Prompt, responses: Sequence[str], agreement: Sequence[int]
    ) -> Demonstration:
        """Keep only the agreed responses (``agreement`` indexes ``responses``, best-first).

        The kept responses stay in their original relative order and are re-indexed
        ``0..k-1``; the ranking is expressed in the new indices.
        """
        kept = sorted(set(int(i) for i in agreement))
        if len(kept) != len(agreement):
            raise ValueError(f"agreement has duplicate indices: {list(agreement)}")
        new_index = {old: new for new, old in enumerate(kept)}
        return cls(
            prompt=prompt,
            responses=tuple(responses[i] for i in kept),
            ranking=tuple(new_index[int(i)] for i in agreement),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "responses": list(self.responses),
            "ranking": list(self.ranking),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Demonstration:
        return cls(prompt=data["prompt"], responses=data["responses"], ranking=data["ranking"])


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: a string as is, chat messages joined by role."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in prompt)


def _chars(demo: Demonstration) -> int:
    return len(prompt_text(demo.prompt)) + sum(len(r) for r in demo.responses)


def _words(prompt: Prompt) -> set[str]:
    # Only what was said: role labels ("user:") would make every chat prompt look alike.
    text = (
        prompt if isinstance(prompt, str) else " ".join(str(m.get("content", "")) for m in prompt)
    )
    return set(re.findall(r"\w+", text.lower()))


class DemonstrationPool:
    """The dynamic demonstrations: agreements collected during training.

    Bounded by ``max_size`` demonstrations and ``max_chars`` characters in all (prompts plus
    responses); the oldest go first. Identical demonstrations are kept once (re-adding one
    makes it the most recent). A demonstration longer than ``max_chars`` on its own is not
    added (logged at DEBUG level) and leaves the pool as it was.

    ``select(query, k)`` picks what goes into one ranking prompt:

    - ``"recent"``: the ``k`` most recently added, oldest first, so the newest (made by the
      most trained model, hence closest to what the black box is ranking now) sits right
      before the query;
    - ``"similar"``: the ``k`` with the highest word-set Jaccard similarity to the query,
      least similar first (again: the most relevant ends next to the query); ties go to the
      more recent. Only the words of the messages count, not their role labels.

    Two pools compare equal when their :meth:`state_dict` are equal.

    Args:
        max_size: most demonstrations kept.
        max_chars: most characters kept in all (``None``: no limit).
    """

    POLICIES = ("recent", "similar")

    def __init__(self, max_size: int = 64, max_chars: int | None = None) -> None:
        if max_size < 1:
            raise ValueError(f"DemonstrationPool: max_size must be >= 1, got {max_size}.")
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"DemonstrationPool: max_chars must be >= 1 or None, got {max_chars}.")
        self.max_size = int(max_size)
        self.max_chars = max_chars
        self._items: OrderedDict[str, tuple[int, Demonstration]] = OrderedDict()
        self._counter = 0  # insertion order survives state_dict round trips

    @staticmethod
    def _key(demo: Demonstration) -> str:
        return json.dumps(demo.to_dict(), sort_keys=True, ensure_ascii=False)

    def add(self, demo: Demonstration) -> None:
        if not isinstance(demo, Demonstration):
            raise TypeError(
                f"DemonstrationPool.add takes a Demonstration, got {type(demo).__name__}."
            )
        if self.max_chars is not None and _chars(demo) > self.max_chars:
            # Checked first: making room for it would empty the pool and still not fit.
            logger.debug(
                "Demonstration of %d characters exceeds max_chars=%d: not kept.",
                _chars(demo),
                self.max_chars,
            )
            return
        key = self._key(demo)
        self._items.pop(key, None)
        self._counter += 1
        self._items[key] = (self._counter, demo)
        self._evict()

    def extend(self, demos: Iterable[Demonstration]) -> None:
        for demo in demos:
            self.add(demo)

    def _evict(self) -> None:
        while len(self._items) > self.max_size:
            self._items.popitem(last=False)
        if self.max_chars is not None:
            total = sum(_chars(d) for _, d in self._items.values())
            while total > self.max_chars and self._items:
                _, (_, oldest) = self._items.popitem(last=False)
                total -= _chars(oldest)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Demonstration]:
        return (demo for _, demo in self._items.values())

    def select(
        self,
        query: Prompt,
        k: int,
        policy: str | None = None,
        max_chars: int | None = None,
    ) -> list[Demonstration]:
        """Up to ``k`` demonstrations for ``query``, in the order to show them (see class doc).

        ``max_chars`` drops the least relevant picks until the selection fits that budget.
        """
        policy = policy or "recent"
        if policy not in self.POLICIES:
            raise ValueError(f"Unknown selection policy {policy!r}; use one of {self.POLICIES}.")
        if k <= 0 or not self._items:
            return []
        entries = list(self._items.values())  # (counter, demo), oldest first
        if policy == "recent":
            ranked = sorted(entries, key=lambda e: -e[0])
        else:
            words = _words(query)

            def similarity(entry: tuple[int, Demonstration]) -> float:
                other = _words(entry[1].prompt)
                union = words | other
                return len(words & other) / len(union) if union else 0.0

            ranked = sorted(entries, key=lambda e: (-similarity(e), -e[0]))
        picked = [demo for _, demo in ranked[:k]]  # most relevant first
        if max_chars is not None:
            while picked and sum(_chars(d) for d in picked) > max_chars:
                picked.pop()
        return picked[::-1]  # the most relevant ends right before the query

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; ``load_state_dict`` restores the pool exactly."""
        return {
            "max_size": self.max_size,
            "max_chars": self.max_chars,
            "counter": self._counter,
            "items": [[c, d.to_dict()] for c, d in self._items.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with a :meth:`state_dict`'s.

        The pool keeps its own ``max_size``/``max_chars`` (they are configuration: a resumed
        run may change them); a state that exceeds them loses its oldest demonstrations.
        """
        try:
            items = [(int(c), Demonstration.from_dict(d)) for c, d in state["items"]]
            counter = int(state["counter"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "Not a DemonstrationPool state_dict (expected 'counter' and 'items' as "
                f"[[counter, demonstration dict], ...]): {err!r}"
            ) from None
        if (state.get("max_size"), state.get("max_chars")) != (self.max_size, self.max_chars):
            logger.info(
                "Loading a demonstration pool saved with max_size=%s, max_chars=%s into one "
                "with max_size=%s, max_chars=%s: the latter apply.",
                state.get("max_size"),
                state.get("max_chars"),
                self.max_size,
                self.max_chars,
            )
        self._items.clear()
        for count, demo in sorted(items, key=lambda item: item[0]):
            self._items[self._key(demo)] = (count, demo)
        self._counter = max([counter, *(c for c, _ in items)])
        self._evict()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DemonstrationPool):
            return NotImplemented
        return self.state_dict() == other.state_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"DemonstrationPool({len(self)} demonstrations, max_size={self.max_size}, "
            f"max_chars={self.max_chars})"
        )
