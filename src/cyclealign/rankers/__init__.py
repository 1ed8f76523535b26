"""Black-box rankers: the OpenAI-compatible ranker, local rankers and their shared types.

Names are resolved lazily so that using the base types does not import ``openai``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BlackBoxRanker": ".base",
    "PendingRanking": ".pending",
    "RankRequest": "..types",
    "RankResult": "..types",
    "Usage": "..types",
    "is_permutation": "..agreement",
    "RankingTemplate": ".prompt",
    "OpenAIRanker": ".openai",
    "LocalChatRanker": ".local",
    "RewardModelRanker": ".local",
    "FunctionRanker": ".reward_functions",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from ..agreement import is_permutation
    from ..types import RankRequest, RankResult, Usage
    from .base import BlackBoxRanker
    from .local import LocalChatRanker, RewardModelRanker
    from .openai import OpenAIRanker
    from .pending import PendingRanking
    from .prompt import RankingTemplate
    from .reward_functions import FunctionRanker
