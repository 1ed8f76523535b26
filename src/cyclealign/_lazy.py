"""Module-level lazy attributes (PEP 562), shared by the package and its sub-packages.

Importing ``cyclealign`` must stay cheap: the trainer pulls in ``transformers.Trainer``,
the rankers pull in ``openai``. So public names are resolved on first access instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], module_globals: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build ``__getattr__`` and ``__dir__`` for ``package``.

    ``exports`` maps a public name to the module (absolute, or relative to ``package``
    when it starts with a dot) that defines it.
    """

    def __getattr__(name: str) -> Any:
        try:
            module_name = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module = importlib.import_module(module_name, package)
        value = getattr(module, name)
        # Cache it so the next access is a plain global lookup.
        module_globals[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(module_globals) | set(exports))

    return __getattr__, __dir__
