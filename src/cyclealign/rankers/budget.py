"""Spending limits of a ranker: a request/token budget and a requests-per-minute limiter.

Both are asyncio-only and live on the ranker's background loop, so a plain lock-free
counter checked and updated without an ``await`` in between is already atomic.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

__all__ = ["Budget", "RateLimiter"]


@dataclass
class Budget:
    """Caps on HTTP requests and on tokens the server reports.

    Requests are *reserved* before they are sent, so ``max_requests`` holds exactly even
    with many requests in flight. Tokens are only known after an answer, so the token cap
    stops *new* requests once reached; the answers already in flight may add their tokens
    on top (at most ``max_concurrency`` answers' worth).
    """

    max_requests: int | None = None
    max_tokens: int | None = None
    requests: int = 0
    tokens: int = 0

    def try_reserve(self) -> bool:
        """Take one request slot; ``False`` when the budget is spent."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            return False
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return False
        self.requests += 1
        return True

    def add_tokens(self, count: int) -> None:
        self.tokens += int(count)


class RateLimiter:
    """At most ``per_minute`` request starts in any 60 s window (evenly spaced)."""

    def __init__(self, per_minute: float | None) -> None:
        if per_minute is not None and per_minute <= 0:
            raise ValueError(f"requests_per_minute must be > 0 or None, got {per_minute}.")
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock: asyncio.Lock | None = None

    def __getstate__(self) -> dict[str, object]:
        # The lock belongs to the loop that made it; a copy makes its own.
        return {**self.__dict__, "_lock": None}

    async def wait(self) -> None:
        if not self.interval:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)
