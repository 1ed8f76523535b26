"""How much of the black box's latency concurrency hides.

Sends N ranking requests to a local chat-completions server that answers each after a
fixed delay d, through OpenAIRanker with several `max_concurrency` values (after one
warm-up request each), and prints the wall time next to the sequential cost N * d, the
requests the server held at once, and the overhead per request beyond the ideal (client,
HTTP and server). Ratios, measured side by side in one run.

    python benchmarks/ranker_concurrency.py [--requests 16] [--delay 0.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _report import emit
from chat_server import ChatServer, Reply
from cyclealign.rankers import OpenAIRanker, RankRequest


def max_in_flight(arrivals: list[float], delay: float) -> int:
    """Requests the server held at once: each is held for ``delay`` after it arrives, and a
    ranker at its concurrency limit sends the next one only after an answer is back."""
    return max(sum(a - delay < b <= a for b in arrivals) for a in arrivals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()

    def slow(body, number):
        return Reply("### The desired ranking is: [1, 0]", delay=cli.delay)

    requests = [RankRequest(f"prompt {i}", [f"a {i}", f"b {i}"]) for i in range(cli.requests)]
    rows = []
    with ChatServer(slow) as server:
        for concurrency in cli.concurrency:
            ranker = OpenAIRanker("bench", base_url=server.base_url, max_concurrency=concurrency)
            ranker.rank([RankRequest("warm-up", ["a", "b"])])  # client, loop and connection
            first = server.count
            start = time.perf_counter()
            results = ranker.rank(requests)
            wall = time.perf_counter() - start
            assert all(r.ranking is not None for r in results), [r.error for r in results]
            arrivals = [r.received for r in server.requests[first:]]
            sequential = cli.requests * cli.delay
            rows.append(
                {
                    "max_concurrency": concurrency,
                    "max in flight (server)": max_in_flight(arrivals, cli.delay),
                    "wall_s": round(wall, 3),
                    "sequential_s": round(sequential, 3),
                    "wall / sequential": round(wall / sequential, 3),
                    "ideal / sequential": round(-(-cli.requests // concurrency) / cli.requests, 3),
                    "overhead per request (ms)": round(
                        (wall - cli.delay * -(-cli.requests // concurrency)) / cli.requests * 1e3, 1
                    ),
                }
            )
            ranker.close()
    emit(rows, caption=f"{cli.requests} requests, server delay {cli.delay} s", json_path=cli.json)


if __name__ == "__main__":
    main()
