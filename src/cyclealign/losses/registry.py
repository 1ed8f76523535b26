"""Name -> ranking-loss class registry, with third-party losses found through entry points.

Built-ins (``"pro"``, ``"rrhf"``) register themselves on import. An installed package can
add a loss by declaring an entry point in the group ``cyclealign.ranking_losses``::

    [project.entry-points."cyclealign.ranking_losses"]
    myloss = "my_package.losses:MyLoss"

Entry points are only listed until a loss is asked for by name: listing the available
names does not import any plugin module; :func:`get_ranking_loss` imports the one it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, TypeVar, overload

from .base import RankingLoss

__all__ = [
    "ENTRY_POINT_GROUP",
    "available_ranking_losses",
    "get_ranking_loss",
    "ranking_loss_registry",
    "register_ranking_loss",
]

ENTRY_POINT_GROUP = "cyclealign.ranking_losses"

_registry: dict[str, type[RankingLoss]] = {}
#: Read-only view of the loss classes loaded so far (built-ins, registered classes and
#: plugins already fetched by name). Installed-but-unloaded plugins are not in it; see
#: :func:`available_ranking_losses`.
ranking_loss_registry: MappingProxyType[str, type[RankingLoss]] = MappingProxyType(_registry)

L = TypeVar("L", bound=type[RankingLoss])


@overload
def register_ranking_loss(name: str, *, replace: bool = False) -> Callable[[L], L]: ...
@overload
def register_ranking_loss(name: str, cls: L, *, replace: bool = False) -> L: ...


def register_ranking_loss(name: str, cls: Any = None, *, replace: bool = False) -> Any:
    """Register a :class:`RankingLoss` subclass under ``name``.

    Use as a decorator, ``@register_ranking_loss("myloss")``, or call it directly,
    ``register_ranking_loss("myloss", MyLoss)``. A name already taken raises ``ValueError``
    unless ``replace=True``. Returns the class unchanged.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(
            f"register_ranking_loss: name must be a non-empty string without surrounding "
            f"spaces, got {name!r}."
        )

    def decorator(loss_cls: L) -> L:
        if not (isinstance(loss_cls, type) and issubclass(loss_cls, RankingLoss)):
            raise TypeError(
                f"register_ranking_loss({name!r}): expected a subclass of "
                f"cyclealign.losses.RankingLoss, got {loss_cls!r}."
            )
        existing = _registry.get(name)
        if existing is not None and existing is not loss_cls and not replace:
            raise ValueError(
                f"A ranking loss named {name!r} is already registered ({_qualname(existing)}). "
                "Choose another name or pass replace=True to override it."
            )
        _registry[name] = loss_cls
        return loss_cls

    return decorator if cls is None else decorator(cls)


def available_ranking_losses() -> list[str]:
    """Sorted names of registered losses and of installed plugins (not imported)."""
    return sorted(set(_registry) | set(_plugin_entry_points()))


def get_ranking_loss(name: str, **kwargs: Any) -> RankingLoss:
    """An instance of the loss registered (or installed as a plugin) under ``name``.

    ``kwargs`` go to the loss's constructor, e.g. ``get_ranking_loss("pro", sft_weight=0.1)``.
    Registered names take precedence over plugin entry points of the same name.
    """
    cls = _registry.get(name)
    if cls is None:
        entry_point = _plugin_entry_points().get(name)
        if entry_point is None:
            raise ValueError(
                f"Unknown ranking loss {name!r}. Available: {available_ranking_losses()}. "
                f"Third-party losses are found through the entry-point group "
                f"{ENTRY_POINT_GROUP!r}; is the package that provides it installed?"
            )
        cls = _load_plugin(entry_point)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(
            f"get_ranking_loss({name!r}): could not build {_qualname(cls)} with "
            f"arguments {sorted(kwargs)}: {err}"
        ) from err


def _plugin_entry_points() -> dict[str, EntryPoint]:
    # Re-read on every call (cheap: metadata files only) so plugins installed while the
    # process runs, or added to sys.path, show up.
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(entry_point: EntryPoint) -> type[RankingLoss]:
    label = f"{entry_point.name} = {entry_point.value} (group {ENTRY_POINT_GROUP!r})"
    try:
        obj = entry_point.load()
    except Exception as err:
        raise ImportError(f"Could not load the ranking-loss entry point {label}: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, RankingLoss)):
        raise TypeError(
            f"The ranking-loss entry point {label} resolved to {obj!r}, which is not a subclass "
            "of cyclealign.losses.RankingLoss."
        )
    # The plugin module may have registered itself already under this name; that is fine.
    return register_ranking_loss(entry_point.name, obj)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
