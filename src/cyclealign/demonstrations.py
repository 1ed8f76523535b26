"""In-context demonstrations for the black-box ranker.

A :class:`Demonstration` is a ranked example shown to the black box before the query.
CycleAlign's *dynamic* demonstrations are the agreements between the black-box and the
white-box rankings (see :func:`cyclealign.agreement_ranking`); they live in a
:class:`DemonstrationPool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Prompt = str | list[dict[str, Any]]


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
