"""A SQLite cache of black-box answers: nothing paid for is ever asked for twice.

An answer is written (and committed) the moment it arrives, *before* it is parsed or used,
so a crash anywhere after the HTTP response costs nothing on the re-run. Keys hash the
model, the messages and every sampling parameter (numbers normalised: ``0 == 0.0``), so a
changed prompt or temperature is a new request, not a stale hit.

The file is in WAL mode with a busy timeout, so several processes (DDP ranks, parallel
runs) share it: readers never block, writers wait their turn instead of failing with
"database is locked". WAL needs a local filesystem (not NFS).

The same file keeps the spend ledger of the budgets (:class:`CacheLedger`).

A damaged cache heals: a file that is not a database fails at open with its path and what
to do; a damaged one is reported by the integrity check at open; a row that cannot be read
or decoded is a miss (counted in :attr:`RankCache.repairs`), so its answer is requested
again and overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["CacheError", "CacheLedger", "RankCache", "cache_key"]

logger = logging.getLogger(__name__)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, "
    "created REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spend (scope TEXT PRIMARY KEY, "
    "requests INTEGER NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0)",
)


class CacheError(RuntimeError):
    """The cache file cannot be used (it names the file and what to do)."""


def _canonical(value: Any) -> Any:
    # An integral float is the int it equals: temperature=0 and 0.0 are one request.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """A stable hash of everything that determines an answer."""
    blob = json.dumps(
        _canonical({"model": model, "messages": messages, "params": params}),
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _busy(err: sqlite3.OperationalError) -> bool:
    return "locked" in str(err) or "busy" in str(err)


class RankCache:
    """Answers by key in a SQLite file; one connection per thread, opened lazily.

    Raises:
        CacheError: at construction, when the file is not a SQLite database.
    """

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self.repairs = 0  # rows that could not be read or decoded (requested again)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            for statement in _SCHEMA:
                self._retrying(lambda con, s=statement: con.execute(s))
            problems = [row[0] for row in self._retrying(_quick_check)]
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _busy(err):
                raise
            self.close()
            salvage = (
                f" To keep what can be read: sqlite3 {self.path} .recover | sqlite3 "
                "repaired.sqlite, and use repaired.sqlite."
                if "malformed" in str(err)
                else ""
            )
            raise CacheError(
                f"The answer cache {self.path} cannot be used: {err}. If it is not the file you "
                "meant, fix cache_path; otherwise move it away (or delete it) and a new, empty "
                f"cache is made (its answers, if any, are then paid for again).{salvage}"
            ) from err
        if problems != ["ok"]:
            logger.warning(
                "The answer cache %s is damaged (SQLite quick_check: %s). Answers that cannot "
                "be read are requested again and overwritten (ranker/cache_repairs counts "
                "them). To salvage the rest into a new file: sqlite3 %s .recover | sqlite3 "
                "repaired.sqlite",
                self.path,
                "; ".join(problems[:3]),
                self.path,
            )

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # Used by its own thread only; check_same_thread=False lets close() close it.
            con = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._local.con = con
            with self._lock:
                self._connections.append(con)
        return con

    def _retrying(self, action):
        # busy_timeout covers most contention; switching to WAL itself can still report
        # "locked" while another process creates the file, so retry briefly.
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                return action(self._connection())
            except sqlite3.OperationalError as err:
                if not _busy(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def lookup(self, key: str) -> tuple[dict[str, Any] | None, bool]:
        """``(answer, repaired)``: the answer, or ``None`` on a miss; ``repaired`` when the
        row was there but could not be read or decoded (a miss that overwrites it)."""
        try:
            row = self._retrying(
                lambda con: con.execute(
                    "SELECT answer FROM answers WHERE key = ?", (key,)
                ).fetchone()
            )
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _busy(err):
                raise
            return self._repaired(key, f"unreadable ({err})")
        if row is None:
            return None, False
        try:
            answer = json.loads(row[0])
        except (TypeError, ValueError) as err:
            return self._repaired(key, f"not JSON ({err})")
        if not isinstance(answer, dict) or not isinstance(answer.get("content", ""), str):
            return self._repaired(key, "not an answer")
        return answer, False

    def _repaired(self, key: str, why: str) -> tuple[None, bool]:
        with self._lock:
            self.repairs += 1
        logger.warning(
            "Answer cache %s: the row for key %s... is %s; it is requested again and overwritten.",
            self.path,
            key[:12],
            why,
        )
        return None, True

    def get(self, key: str) -> dict[str, Any] | None:
        """The answer stored under ``key``; ``None`` on a miss or a damaged row."""
        return self.lookup(key)[0]

    def put(self, key: str, answer: dict[str, Any]) -> None:
        """Store and commit ``answer`` (autocommit: durable when this returns)."""
        blob = json.dumps(answer, ensure_ascii=False)
        self._retrying(
            lambda con: con.execute(
                "INSERT OR REPLACE INTO answers (key, answer, created) VALUES (?, ?, ?)",
                (key, blob, time.time()),
            )
        )

    def try_put(self, key: str, answer: dict[str, Any]) -> bool:
        """:meth:`put`, logging instead of raising when a damaged file refuses the write (the
        answer is still used; it is only not cached)."""
        try:
            self.put(key, answer)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError) and _busy(err):
                raise
            logger.warning("Answer cache %s: an answer could not be stored (%s).", self.path, err)
            return False
        return True

    def __len__(self) -> int:
        return int(
            self._retrying(lambda con: con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        )

    def ledger(self, scope: str = "default") -> CacheLedger:
        """The spend ledger of ``scope`` in this file (see :mod:`.budget`)."""
        return CacheLedger(self, scope)

    def __getstate__(self) -> dict[str, Any]:
        # Connections belong to their threads; a copy opens its own.
        return {"path": self.path, "busy_timeout_s": self.busy_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["busy_timeout_s"])  # type: ignore[misc]

    def close(self) -> None:
        """Close every connection, whichever thread opened it. Safe to call twice; a later
        call opens new ones."""
        with self._lock:
            for con in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    con.close()
            self._connections.clear()
        self._local = threading.local()


def _quick_check(con: sqlite3.Connection) -> list[tuple[str]]:
    return con.execute("PRAGMA quick_check").fetchall()


class CacheLedger:
    """The spend of one ``scope`` (a job) in a cache file: atomic single statements, so
    every process using the file, now or after a kill, counts against the same budget."""

    durable = True

    def __init__(self, cache: RankCache, scope: str) -> None:
        self.cache = cache
        self.scope = scope
        self._ensure_row()

    def _ensure_row(self) -> None:
        self.cache._retrying(
            lambda con: con.execute("INSERT OR IGNORE INTO spend (scope) VALUES (?)", (self.scope,))
        )

    def reserve(self, max_requests: int | None, max_tokens: int | None) -> bool:
        def take(con: sqlite3.Connection) -> int:
            return con.execute(
                "UPDATE spend SET requests = requests + 1 WHERE scope = ? "
                "AND (? IS NULL OR requests < ?) AND (? IS NULL OR tokens < ?)",
                (self.scope, max_requests, max_requests, max_tokens, max_tokens),
            ).rowcount

        if self.cache._retrying(take) == 1:
            return True
        if self._has_row():
            return False  # a limit is reached
        self._ensure_row()  # the file was replaced under us: its row starts again
        return self.cache._retrying(take) == 1

    def _has_row(self) -> bool:
        return self.cache._retrying(
            lambda con: (
                con.execute("SELECT 1 FROM spend WHERE scope = ?", (self.scope,)).fetchone()
                is not None
            )
        )

    def add_tokens(self, count: int) -> None:
        self.cache._retrying(
            lambda con: con.execute(
                "UPDATE spend SET tokens = tokens + ? WHERE scope = ?", (int(count), self.scope)
            )
        )

    def spent(self) -> tuple[int, int]:
        row = self.cache._retrying(
            lambda con: con.execute(
                "SELECT requests, tokens FROM spend WHERE scope = ?", (self.scope,)
            ).fetchone()
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def raise_to(self, requests: int, tokens: int) -> None:
        self.cache._retrying(
            lambda con: con.execute(
                "UPDATE spend SET requests = MAX(requests, ?), tokens = MAX(tokens, ?) "
                "WHERE scope = ?",
                (int(requests), int(tokens), self.scope),
            )
        )
