"""Black-box rankers: the OpenAI-compatible ranker, local rankers and their shared types.

Names are resolved lazily so that using the base types does not import ``openai``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BlackBoxRanker": ".base",
    "RankRequest": ".base",
    "RankResult": ".base",
    "Usage": ".base",
    "is_permutation": ".base",
    "RankingTemplate": ".prompt",
    "OpenAIRanker": ".openai",
    "LocalChatRanker": ".local",
    "RewardModelRanker": ".local",
    "FunctionRanker": ".local",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from .base import BlackBoxRanker, RankRequest, RankResult, Usage, is_permutation
    from .local import FunctionRanker, LocalChatRanker, RewardModelRanker
    from .openai import OpenAIRanker
    from .prompt import RankingTemplate
