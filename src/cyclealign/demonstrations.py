"""The dynamic demonstrations: the pool of agreements, what each ranking request is shown,
and how the pool stays identical on every process.

A :class:`~cyclealign.Demonstration` is a ranked example shown to the black box before the
query. CycleAlign's *dynamic* demonstrations are the agreements between the black-box and the
white-box rankings (see :func:`cyclealign.agreement_ranking`); they live in a
:class:`DemonstrationPool`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .prompts import dialogue_text
from .types import Demonstration, Prompt

if TYPE_CHECKING:
    from .config import CycleAlignConfig
    from .targets import PromptOutcome

__all__ = [
    "CHARS_PER_TOKEN",
    "Demonstration",
    "DemonstrationPool",
    "estimate_tokens",
    "select_demonstrations",
    "share_agreements",
]

logger = logging.getLogger(__name__)

#: The estimate of prompt tokens where no tokenizer counts them: about four characters of
#: English text a token (OpenAI's rule of thumb for its tokenizers).
CHARS_PER_TOKEN = 4


def estimate_tokens(demo: Demonstration) -> int:
    """About how many prompt tokens ``demo`` costs: its prompt and responses at
    :data:`CHARS_PER_TOKEN` characters a token (rounded up)."""
    chars = len(dialogue_text(demo.prompt)) + sum(len(r) for r in demo.responses)
    return -(-chars // CHARS_PER_TOKEN)


def _words(prompt: Prompt) -> set[str]:
    # Only what was said: role labels ("user:") would make every chat prompt look alike.
    text = (
        prompt if isinstance(prompt, str) else " ".join(str(m.get("content", "")) for m in prompt)
    )
    return set(re.findall(r"\w+", text.lower()))


class DemonstrationPool:
    """The dynamic demonstrations: agreements collected during training.

    Bounded by ``max_size`` demonstrations; the oldest go first. Identical demonstrations are
    kept once (re-adding one makes it the most recent). What one ranking request is shown is
    bounded separately (``select``'s ``max_tokens``), so a long demonstration stays available
    to the requests it fits.

    ``select(query, k, max_tokens=...)`` picks what goes into one ranking prompt, by
    relevance: first the agreements on the query's own prompt (from earlier rounds), then
    the others by the policy:

    - ``"recent"``: the most recently added first (made by the most trained model, hence
      closest to what the black box is ranking now);
    - ``"similar"``: the highest word-set Jaccard similarity to the query first; ties go to
      the more recent. Only the words of the messages count, not their role labels.

    It takes them in that order while they fit ``max_tokens`` (one that does not fit is
    left out and the next is tried), up to ``k``, and returns them least relevant first, so
    the most relevant ends right before the query.

    Two pools compare equal when their :meth:`state_dict` are equal.

    Args:
        max_size: most demonstrations kept.
    """

    POLICIES = ("recent", "similar")

    def __init__(self, max_size: int = 64) -> None:
        if max_size < 1:
            raise ValueError(f"DemonstrationPool: max_size must be >= 1, got {max_size}.")
        self.max_size = int(max_size)
        self._items: OrderedDict[str, tuple[int, Demonstration]] = OrderedDict()
        self._counter = 0  # insertion order survives state_dict round trips
        # Tokens of each demonstration, by key, as the last ``count_tokens`` counted them.
        self._tokens: dict[str, int] = {}
        self._count_tokens: Callable[[Demonstration], int] | None = None

    @staticmethod
    def _key(demo: Demonstration) -> str:
        return json.dumps(demo.to_dict(), sort_keys=True, ensure_ascii=False)

    def add(self, demo: Demonstration) -> None:
        if not isinstance(demo, Demonstration):
            raise TypeError(
                f"DemonstrationPool.add takes a Demonstration, got {type(demo).__name__}."
            )
        key = self._key(demo)
        self._items.pop(key, None)
        self._counter += 1
        self._items[key] = (self._counter, demo)
        self._evict()

    def _evict(self) -> None:
        while len(self._items) > self.max_size:
            key, _ = self._items.popitem(last=False)
            self._tokens.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Demonstration]:
        return (demo for _, demo in self._items.values())

    def select(
        self,
        query: Prompt,
        k: int | None = None,
        policy: str | None = None,
        max_tokens: int | None = None,
        count_tokens: Callable[[Demonstration], int] = estimate_tokens,
    ) -> list[Demonstration]:
        """Demonstrations for ``query``, in the order to show them (see class doc).

        Args:
            query: the prompt the request is for.
            k: most demonstrations (``None``: no cap).
            policy: ``"recent"`` (default) or ``"similar"``.
            max_tokens: the prompt tokens they may take together (``None``: no budget).
            count_tokens: the tokens one demonstration takes (default :func:`estimate_tokens`);
                each demonstration is counted once while it stays in the pool.
        """
        policy = policy or "recent"
        if policy not in self.POLICIES:
            raise ValueError(f"Unknown selection policy {policy!r}; use one of {self.POLICIES}.")
        if (k is not None and k <= 0) or not self._items:
            return []
        entries = list(self._items.items())  # (key, (counter, demo)), oldest first
        if policy == "recent":

            def relevance(entry: tuple[str, tuple[int, Demonstration]]) -> tuple:
                return (entry[1][1].prompt != query, -entry[1][0])
        else:
            words = _words(query)

            def relevance(entry: tuple[str, tuple[int, Demonstration]]) -> tuple:
                other = _words(entry[1][1].prompt)
                union = words | other
                similarity = len(words & other) / len(union) if union else 0.0
                return (entry[1][1].prompt != query, -similarity, -entry[1][0])

        if count_tokens != self._count_tokens:
            self._tokens.clear()
            self._count_tokens = count_tokens
        picked: list[Demonstration] = []
        used = 0
        for key, (_, demo) in sorted(entries, key=relevance):  # most relevant first
            if k is not None and len(picked) >= k:
                break
            if max_tokens is not None:
                if key not in self._tokens:
                    self._tokens[key] = int(count_tokens(demo))
                if used + self._tokens[key] > max_tokens:
                    continue
                used += self._tokens[key]
            picked.append(demo)
        return picked[::-1]  # the most relevant ends right before the query

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; ``load_state_dict`` restores the pool exactly."""
        return {
            "max_size": self.max_size,
            "counter": self._counter,
            "items": [[c, d.to_dict()] for c, d in self._items.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the contents with a :meth:`state_dict`'s.

        The pool keeps its own ``max_size`` (it is configuration: a resumed run may change
        it); a state that exceeds it loses its oldest demonstrations.
        """
        try:
            items = [(int(c), Demonstration.from_dict(d)) for c, d in state["items"]]
            counter = int(state["counter"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                "Not a DemonstrationPool state_dict (expected 'counter' and 'items' as "
                f"[[counter, demonstration dict], ...]): {err!r}"
            ) from None
        if state.get("max_size") != self.max_size:
            logger.info(
                "Loading a demonstration pool saved with max_size=%s into one with "
                "max_size=%s: the latter applies.",
                state.get("max_size"),
                self.max_size,
            )
        self._items.clear()
        self._tokens.clear()
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
        return f"DemonstrationPool({len(self)} demonstrations, max_size={self.max_size})"


def select_demonstrations(
    pool: DemonstrationPool,
    prompt: Prompt,
    args: CycleAlignConfig,
    count_tokens: Callable[[Demonstration], int] = estimate_tokens,
) -> list[Demonstration]:
    """The dynamic demonstrations to send with ``prompt``: as many as fit
    ``args.demonstration_max_tokens`` (counted by ``count_tokens``, the ranker's count), at
    most ``args.max_demonstrations``; none when switched off."""
    if not args.use_dynamic_demonstrations or args.max_demonstrations == 0 or not len(pool):
        return []
    return list(
        pool.select(
            prompt,
            args.max_demonstrations,
            policy=args.demonstration_selection,
            max_tokens=args.demonstration_max_tokens,
            count_tokens=count_tokens,
        )
    )


def share_agreements(
    pool: DemonstrationPool,
    prompts: Sequence[Prompt],
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
    from accelerate.utils import gather_object  # here: the pool itself needs no accelerate

    shared = gather_object(new)
    for demo in shared:
        pool.add(demo)
    return len(shared)
