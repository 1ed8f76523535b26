"""The types that every part of the cycle shares: prompts, demonstrations, ranking requests and
their results, and what a ranker has spent.

Rankers (``cyclealign.rankers``), the trainer and the data helpers all use these, so they
live here rather than in any one of them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .agreement import check_permutation

__all__ = ["Demonstration", "Prompt", "RankRequest", "RankResult", "Usage"]

#: A prompt: plain text, or chat messages ``[{"role": ..., "content": ...}, ...]``.
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
        object.__setattr__(self, "ranking", tuple(self.ranking))
        if isinstance(self.prompt, list):
            object.__setattr__(self, "prompt", [dict(m) for m in self.prompt])
        if not self.responses:
            raise ValueError("A Demonstration needs at least one response.")
        check_permutation(self.ranking, len(self.responses), name="Demonstration.ranking")

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


@dataclass(frozen=True)
class RankRequest:
    """One prompt, its candidate responses and the demonstrations to show with it.

    Args:
        prompt: the prompt, a string or chat messages.
        responses: the candidate responses, indexed ``0..n-1``.
        demonstrations: the demonstrations to show with them.
        columns: the prompt's dataset row without its ``prompt`` (for example a ``solution``),
            as TRL gives reward functions the dataset's other columns.
        completion_ids: the token ids of each response (its EOS included when it ended by
            itself), when the white-box model sampled them; ``None`` otherwise.
    """

    prompt: Prompt
    responses: Sequence[str]
    demonstrations: Sequence[Demonstration] = ()
    columns: Mapping[str, Any] = field(default_factory=dict)
    completion_ids: Sequence[Sequence[int]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "demonstrations", tuple(self.demonstrations))
        object.__setattr__(self, "columns", dict(self.columns))
        if self.completion_ids is not None:
            ids = tuple([int(t) for t in row] for row in self.completion_ids)
            if len(ids) != len(self.responses):
                raise ValueError(
                    f"RankRequest: {len(ids)} completion_ids for {len(self.responses)} responses; "
                    "give one list of token ids per response, or None."
                )
            object.__setattr__(self, "completion_ids", ids)


@dataclass
class Usage:
    """What a ranker has spent. Token counts are the ones the server reports."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_repairs: int = 0  # cached answers that could not be read, so were asked again

    @property
    def total_failures(self) -> int:
        return sum(self.failures.values())

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        """Accumulate ``other`` into ``self`` (in place)."""
        self.requests += other.requests
        self.cache_hits += other.cache_hits
        self.retries += other.retries
        self.failures.update(other.failures)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cache_repairs += other.cache_repairs

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "failures": dict(self.failures),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache_repairs": self.cache_repairs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        data = dict(data)
        data["failures"] = Counter(data.get("failures", {}))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class RankResult:
    """A ranker's answer for one request.

    Args:
        ranking: response indices best-first (a full permutation), or ``None`` when the
            ranker could not produce one; ``error`` then says why.
        scores: real-valued quality per response, when the ranker has them.
        better_response: an improved response written by the black box, when asked for.
        error: why there is no ranking (``None`` on success).
        raw_text: the black box's raw answer, for logs.
        usage: what this request cost.
    """

    ranking: list[int] | None
    scores: list[float] | None = None
    better_response: str | None = None
    error: str | None = None
    raw_text: str = ""
    usage: Usage | None = None

    @property
    def ok(self) -> bool:
        return self.ranking is not None
