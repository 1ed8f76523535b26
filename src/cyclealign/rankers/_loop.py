"""One long-lived asyncio event loop in a daemon thread.

Rankers are async inside, but callers (a ``Trainer``, a notebook that already runs a
loop) are sync. Running every coroutine on one background loop, as TRL's GRPO does for
async reward functions, lets sync code call async code from anywhere and lets one HTTP
client (bound to that loop) be reused across calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="cyclealign-ranker-loop", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the background loop; returns a thread-safe future."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop())
