"""A SQLite cache of black-box answers: nothing paid for is ever asked for twice.

An answer is written (and committed) the moment it arrives, *before* it is parsed or used,
so a crash anywhere after the HTTP response costs nothing on the re-run. Keys hash the
model, the messages and every sampling parameter, so a changed prompt or temperature is a
new request, not a stale hit.

The file is in WAL mode with a busy timeout, so several processes (DDP ranks, parallel
runs) share it: readers never block, writers wait their turn instead of failing with
"database is locked". WAL needs a local filesystem (not NFS).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["RankCache", "cache_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """A stable hash of everything that determines an answer."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class RankCache:
    """Answers by key in a SQLite file; one connection per thread, opened lazily."""

    def __init__(self, path: str | os.PathLike[str], busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._retrying(lambda con: con.execute(_SCHEMA))

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
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
                if "locked" not in str(err) and "busy" not in str(err):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._retrying(
            lambda con: con.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        )
        return None if row is None else json.loads(row[0])

    def put(self, key: str, answer: dict[str, Any]) -> None:
        """Store and commit ``answer`` (autocommit: durable when this returns)."""
        blob = json.dumps(answer, ensure_ascii=False)
        self._retrying(
            lambda con: con.execute(
                "INSERT OR REPLACE INTO answers (key, answer, created) VALUES (?, ?, ?)",
                (key, blob, time.time()),
            )
        )

    def __len__(self) -> int:
        return int(
            self._retrying(lambda con: con.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
        )

    def __getstate__(self) -> dict[str, Any]:
        # Connections belong to their threads; a copy opens its own.
        return {"path": self.path, "busy_timeout_s": self.busy_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["busy_timeout_s"])  # type: ignore[misc]

    def close(self) -> None:
        with self._lock:
            for con in self._connections:
                # Another thread's connection may refuse; its thread ending closes it.
                with contextlib.suppress(sqlite3.ProgrammingError):
                    con.close()
            self._connections.clear()
        self._local = threading.local()
