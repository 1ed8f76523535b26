"""How much of the black box's latency concurrency hides.

Sends N ranking requests to a local chat-completions server that answers each after a
fixed delay d, through OpenAIRanker with several `max_concurrency` values, and prints the
wall time next to the sequential cost N * d. Ratios, measured side by side in one run.

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
            start = time.perf_counter()
            results = ranker.rank(requests)
            wall = time.perf_counter() - start
            assert all(r.ranking is not None for r in results), [r.error for r in results]
            rows.append(
                {
                    "max_concurrency": concurrency,
                    "wall_s": round(wall, 3),
                    "sequential_s": round(cli.requests * cli.delay, 3),
                    "wall / sequential": round(wall / (cli.requests * cli.delay), 3),
                    "ideal / sequential": round(-(-cli.requests // concurrency) / cli.requests, 3),
                }
            )
    emit(rows, caption=f"{cli.requests} requests, server delay {cli.delay} s", json_path=cli.json)


if __name__ == "__main__":
    main()
