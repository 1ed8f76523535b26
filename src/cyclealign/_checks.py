"""How tensor arguments are described in error messages, shared by the log-prob and loss code
(so every shape error reads the same: "..., got a tensor of shape [2, 3]")."""

from __future__ import annotations

import torch


def describe(value: object) -> str:
    """``"a tensor of shape [2, 3]"`` for a tensor, ``"a <type name>"`` otherwise."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def check_shape(who: str, arg: str, value: object, expected: list[int], symbolic: str) -> None:
    """Raise ``ValueError`` unless ``value`` is a tensor of shape ``expected``."""
    if not isinstance(value, torch.Tensor) or list(value.shape) != expected:
        raise ValueError(
            f"{who}: {arg} must have shape {symbolic} = {expected}, got {describe(value)}."
        )
