"""The SQLite answer cache, alone and under OpenAIRanker in real subprocesses."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from chat_server import ChatServer, Reply, shown_responses
from cyclealign.rankers.cache import RankCache, cache_key

SRC = Path(__file__).resolve().parents[1] / "src"


def by_length(body, number) -> Reply:
    shown = shown_responses(body["messages"][-1]["content"])
    ranking = sorted(range(len(shown)), key=lambda k: -len(shown[k]))
    return Reply(f"### The desired ranking is: {ranking}")


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


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = [{src!r}]
    import cyclealign.rankers.openai as module
    from cyclealign.types import RankRequest

    def die(*args, **kwargs):  # the answer is in the cache; die before reading it
        os.kill(os.getpid(), signal.SIGKILL)

    if sys.argv[3] == "kill":
        module.read_answer = die
    budget = int(sys.argv[5]) if len(sys.argv) > 5 else None
    ranker = module.OpenAIRanker(
        "judge", base_url=sys.argv[1], cache_path=sys.argv[2], budget_requests=budget
    )
    tag = os.getpid() if budget else ""  # with a budget: prompts of its own in each process
    requests = [
        RankRequest("p%d%s" % (i, tag), ["a" * (i + 1), "b"]) for i in range(int(sys.argv[4]))
    ]
    print([r.ranking for r in ranker.rank(requests)], ranker.usage.requests)
    """
)


def _run_ranker(tmp_path, server, cache, mode, count=3):
    script = tmp_path / "rank.py"
    script.write_text(KILL_SCRIPT.format(src=str(SRC)))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, str(script), server.base_url, str(cache), mode, str(count)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow
def test_sigkill_after_the_answer_costs_nothing_on_rerun(tmp_path):
    cache = tmp_path / "answers.sqlite"
    with ChatServer(by_length) as server:
        killed = _run_ranker(tmp_path, server, cache, "kill", count=1)
        assert killed.returncode == -9, killed.stderr
        assert server.count == 1
        rerun = _run_ranker(tmp_path, server, cache, "run", count=1)
        assert rerun.returncode == 0, rerun.stderr
        assert server.count == 1  # the re-run made no request
    assert rerun.stdout.split("]]")[-1].strip() == "0"


@pytest.mark.slow
def test_two_processes_share_one_cache_file(tmp_path):
    cache = tmp_path / "answers.sqlite"
    script = tmp_path / "rank.py"
    script.write_text(KILL_SCRIPT.format(src=str(SRC)))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with ChatServer(by_length) as server:
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), server.base_url, str(cache), "run", "20"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
        assert "None" not in out and "locked" not in err
    assert outs[0][0].split("]]")[0] == outs[1][0].split("]]")[0]


def test_busy_database_is_waited_for_not_an_error(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = RankCache(path, busy_timeout_s=5.0)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process mid-write holds the write lock
    done = threading.Event()

    def write():
        cache.put("k", {"content": "x"})
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert not done.wait(0.3)  # waiting, not failing with "database is locked"
    blocker.execute("COMMIT")
    thread.join(5)
    assert done.is_set() and cache.get("k") == {"content": "x"}
    blocker.close()
    cache.close()


def test_a_row_with_broken_json_is_asked_again_once_then_served(tmp_path):
    from cyclealign.rankers.openai import OpenAIRanker
    from cyclealign.types import RankRequest

    path = tmp_path / "answers.sqlite"
    request = [RankRequest("p", ["aa", "a", "aaa"])]
    with ChatServer(by_length) as server:
        ranker = OpenAIRanker("judge", base_url=server.base_url, cache_path=path)
        expected = ranker.rank(request)[0].ranking
        ranker.close()
        con = sqlite3.connect(path)
        con.execute('UPDATE answers SET answer = \'{"content": "### The desi\'')
        con.commit()
        con.close()
        for run in range(2):
            ranker = OpenAIRanker("judge", base_url=server.base_url, cache_path=path)
            assert ranker.rank(request)[0].ranking == expected
            assert ranker.usage.cache_repairs == (1 if run == 0 else 0)
            assert ranker.usage.cache_hits == (0 if run == 0 else 1)
            ranker.close()
        assert server.count == 2  # the first answer and the one re-request, nothing more


def test_a_file_of_garbage_fails_at_construction_naming_it(tmp_path):
    from cyclealign.rankers.cache import CacheError

    path = tmp_path / "answers.sqlite"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(CacheError) as info:
        RankCache(path)
    assert str(path) in str(info.value) and "move it away" in str(info.value)


def _filled(path, rows=400):
    cache = RankCache(path)
    for i in range(rows):
        cache.put(f"k{i}", {"content": "x" * 200})
    cache._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all in the main file
    cache.close()
    return bytearray(path.read_bytes())


def test_a_half_truncated_file_fails_at_construction_naming_it(tmp_path):
    from cyclealign.rankers.cache import CacheError

    path = tmp_path / "answers.sqlite"
    data = _filled(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CacheError) as info:
        RankCache(path)
    assert str(path) in str(info.value) and ".recover" in str(info.value)


def test_a_damaged_page_is_reported_and_its_rows_are_misses(tmp_path, caplog):
    path = tmp_path / "answers.sqlite"
    data = _filled(path)
    page = 4096 * 10  # a leaf page of the answers table
    data[page + 100 : page + 600] = b"\xa5" * 500
    path.write_bytes(bytes(data))
    damaged = RankCache(path)
    assert "is damaged" in caplog.text and str(path) in caplog.text
    missing = [i for i in range(400) if damaged.get(f"k{i}") is None]
    assert 0 < len(missing) < 400 and damaged.repairs == len(missing)
    assert damaged.try_put(f"k{missing[0]}", {"content": "again"})
    damaged.close()


def test_close_closes_the_connections_of_every_thread(tmp_path):
    cache = RankCache(tmp_path / "c.sqlite")
    threads = [threading.Thread(target=cache.put, args=(f"k{i}", {"i": i})) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    connections = list(cache._connections)
    assert len(connections) == 5  # the constructor's and one per worker thread
    cache.close()
    for con in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            con.execute("SELECT 1")
    assert cache.get("k2") == {"i": 2}  # a later call opens a new connection


def test_cache_keys_normalise_numbers():
    messages = [{"role": "user", "content": "x"}]
    assert cache_key("m", messages, {"temperature": 0}) == cache_key(
        "m", messages, {"temperature": 0.0}
    )
    assert cache_key("m", messages, {"extra_body": {"top_p": 1}}) == cache_key(
        "m", messages, {"extra_body": {"top_p": 1.0}}
    )
    assert cache_key("m", messages, {"temperature": 0}) != cache_key(
        "m", messages, {"temperature": 0.5}
    )


def test_the_ledger_reserves_exactly_across_threads(tmp_path):
    cache = RankCache(tmp_path / "c.sqlite")
    ledger = cache.ledger("job")
    granted = []

    def take():
        for _ in range(30):
            granted.append(ledger.reserve(50, None))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(True) == 50 and ledger.spent() == (50, 0)
    ledger.add_tokens(7)
    assert not cache.ledger("job").reserve(None, 7)  # the token cap holds too
    assert cache.ledger("other").spent() == (0, 0)
    cache.close()


@pytest.mark.slow
def test_two_processes_sharing_one_cache_file_share_one_budget(tmp_path):
    cache = tmp_path / "answers.sqlite"
    script = tmp_path / "rank.py"
    script.write_text(KILL_SCRIPT.format(src=str(SRC)))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    with ChatServer(by_length) as server:
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), server.base_url, str(cache), "run", "20", "13"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=120) for p in procs]
        assert server.count == 13  # both wanted 20 (different prompts each): 13 in all
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err
