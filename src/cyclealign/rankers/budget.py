"""Spending limits of a ranker: a request/token budget kept in a spend ledger, and a
requests-per-minute limiter.

What counts against a budget is recorded *before* a request is sent, in a ledger:

- with a cache file, the ledger is a table of that SQLite file (:class:`.cache.CacheLedger`):
  every reservation is one atomic statement, so it survives a kill at any point and
  processes sharing the file (DDP ranks, parallel runs of one job) share one budget;
- without one, it lives in memory (:class:`MemoryLedger`) and in the checkpoints, so a run
  killed and resumed can overspend by what was paid after its last checkpoint.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Budget", "MemoryLedger", "RateLimiter", "SpendLedger"]


class SpendLedger(Protocol):
    """Where spend is counted: requests reserved and tokens reported."""

    durable: bool  # survives the process (and is shared with others using it)

    def reserve(self, max_requests: int | None, max_tokens: int | None) -> bool:
        """Take one request slot unless a limit is reached; atomic."""

    def add_tokens(self, count: int) -> None: ...

    def spent(self) -> tuple[int, int]:
        """``(requests, tokens)`` so far."""

    def raise_to(self, requests: int, tokens: int) -> None:
        """Count at least this much (a checkpoint's record of what was spent)."""


class MemoryLedger:
    """Spend in this process only. Lock-free: it lives on the ranker's event loop, where a
    check and an update without an ``await`` in between are already atomic."""

    durable = False

    def __init__(self) -> None:
        self.requests = 0
        self.tokens = 0

    def reserve(self, max_requests: int | None, max_tokens: int | None) -> bool:
        if max_requests is not None and self.requests >= max_requests:
            return False
        if max_tokens is not None and self.tokens >= max_tokens:
            return False
        self.requests += 1
        return True

    def add_tokens(self, count: int) -> None:
        self.tokens += int(count)

    def spent(self) -> tuple[int, int]:
        return self.requests, self.tokens

    def raise_to(self, requests: int, tokens: int) -> None:
        self.requests = max(self.requests, int(requests))
        self.tokens = max(self.tokens, int(tokens))


class Budget:
    """Caps on HTTP requests and on tokens the server reports, over a :class:`SpendLedger`.

    Requests are *reserved* before they are sent, so ``max_requests`` holds exactly even
    with many requests in flight (and, with a durable ledger, across kills, resumes and
    processes). Tokens are only known after an answer, so the token cap stops *new*
    requests once reached; the answers already in flight may add their tokens on top (at
    most ``max_concurrency`` answers' worth per process).
    """

    def __init__(
        self,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        ledger: SpendLedger | None = None,
    ) -> None:
        for name, value in (("budget_requests", max_requests), ("budget_tokens", max_tokens)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(
                    f"{name} must be an integer >= 0 or None (no limit), got {value!r}."
                )
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.ledger: SpendLedger = ledger if ledger is not None else MemoryLedger()

    def __repr__(self) -> str:
        requests, tokens = self.ledger.spent()
        return (
            f"Budget(requests={requests}/{self.max_requests}, tokens={tokens}/{self.max_tokens}, "
            f"durable={self.ledger.durable})"
        )

    @property
    def requests(self) -> int:
        return self.ledger.spent()[0]

    @property
    def tokens(self) -> int:
        return self.ledger.spent()[1]

    def try_reserve(self) -> bool:
        """Take one request slot; ``False`` when the budget is spent."""
        return self.ledger.reserve(self.max_requests, self.max_tokens)

    async def areserve(self) -> bool:
        """:meth:`try_reserve` from the event loop (a durable ledger writes a file)."""
        if self.ledger.durable:
            return await asyncio.to_thread(self.try_reserve)
        return self.try_reserve()

    async def aadd_tokens(self, count: int) -> None:
        if self.ledger.durable:
            await asyncio.to_thread(self.ledger.add_tokens, count)
        else:
            self.ledger.add_tokens(count)

    def state_dict(self) -> dict[str, int]:
        requests, tokens = self.ledger.spent()
        return {"requests": requests, "tokens": tokens}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """A checkpoint's record of spend: the ledger counts at least that much (a durable
        ledger usually knows more, what was paid after the checkpoint)."""
        self.ledger.raise_to(int(state.get("requests", 0)), int(state.get("tokens", 0)))


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
