"""The SQLite answer cache."""

from __future__ import annotations

import sqlite3
import threading

from cyclealign.rankers.cache import RankCache, cache_key


def test_put_get_and_persistence(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    cache = RankCache(path)
    key = cache_key("m", [{"role": "user", "content": "x"}], {"temperature": 0})
    assert cache.get(key) is None
    cache.put(key, {"content": "### The desired ranking is: [0]"})
    cache.close()
    # Committed: a fresh connection (another process would be the same) sees it.
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 1
    con.close()
    assert RankCache(path).get(key) == {"content": "### The desired ranking is: [0]"}


def test_keys_cover_model_messages_and_params():
    messages = [{"role": "user", "content": "x"}]
    base = cache_key("m", messages, {"temperature": 0, "seed": 1})
    assert base == cache_key("m", [dict(messages[0])], {"seed": 1, "temperature": 0})
    assert base != cache_key("m2", messages, {"temperature": 0, "seed": 1})
    assert base != cache_key("m", [{"role": "user", "content": "y"}], {"temperature": 0, "seed": 1})
    assert base != cache_key("m", messages, {"temperature": 0.5, "seed": 1})


def test_threads_write_concurrently(tmp_path):
    cache = RankCache(tmp_path / "c.sqlite")

    def write(start):
        for i in range(start, start + 50):
            cache.put(f"k{i}", {"i": i})

    threads = [threading.Thread(target=write, args=(s,)) for s in (0, 50, 100, 150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 200 and cache.get("k123") == {"i": 123}
    cache.close()
