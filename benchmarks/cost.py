"""Black-box tokens per ranked response and per implied preference pair.

One listwise ranking of n responses implies n(n-1)/2 preference pairs. Beside CycleAlign's
listwise request (with 0, 2 or 8 demonstrations) the table shows pointwise scoring (one
judge call per response) and pairwise judging (one call per pair), all through the same
local server and the same instruction, without demonstrations for the two baselines.
Token counts are the server's (about 4 characters a token). A second run through the cache
must make no request at all.

    python benchmarks/cost.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chat_server import ChatServer, rank_by
from cyclealign.demonstrations import Demonstration
from cyclealign.rankers import OpenAIRanker, RankRequest
from cyclealign.rankers.prompt import RankingTemplate

QUESTIONS = [
    "How do I keep basil alive on a windowsill?",
    "What is a polite way to decline a wedding invitation?",
    "My neighbour's dog barks all night. What can I do?",
    "Give me three tips for a first job interview.",
]
STYLES = [
    "Water it when the top of the soil is dry and give it six hours of sun a day.",
    "I don't know.",
    "Just ignore it, it will be fine eventually, most things work out.",
    "Talk to them kindly first; if that fails, write down the times and ask for mediation.",
    "Try searching online for more information about this topic.",
    "Here is a detailed, step-by-step answer with the reasons behind each step.",
    "That is not something I can help with.",
    "Start small, be specific, and check back in a week to see what changed.",
]


def responses(i: int, n: int) -> list[str]:
    return [f"{STYLES[(i + k) % len(STYLES)]} ({k})" for k in range(n)]


def demonstrations(count: int, n: int) -> list[Demonstration]:
    return [
        Demonstration(f"Example question {j}?", responses(j + 10, n), list(range(n)))
        for j in range(count)
    ]


def measure(
    server: ChatServer,
    requests: list[RankRequest],
    template: RankingTemplate,
    cache: str | None = None,
) -> dict[str, int]:
    ranker = OpenAIRanker("bench", base_url=server.base_url, template=template, cache_path=cache)
    results = ranker.rank(requests)
    assert all(r.ranking is not None for r in results), [r.error for r in results]
    ranker.close()
    return ranker.usage.as_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    cli = parser.parse_args()
    rows = []
    listwise = RankingTemplate()
    bare = RankingTemplate(static_demonstration=None)
    with ChatServer(rank_by(len)) as server, tempfile.TemporaryDirectory() as tmp:
        for n in (2, 4, 8):
            pairs = n * (n - 1) // 2 * len(QUESTIONS)
            ranked = n * len(QUESTIONS)
            for demos in (0, 2, 8):
                requests = [
                    RankRequest(q, responses(i, n), demonstrations(demos, min(n, 4)))
                    for i, q in enumerate(QUESTIONS)
                ]
                cache = str(Path(tmp) / f"listwise-{n}-{demos}.sqlite")
                usage = measure(server, requests, listwise, cache)
                again = measure(server, requests, listwise, cache)
                tokens = usage["prompt_tokens"] + usage["completion_tokens"]
                rows.append(
                    {
                        "method": f"listwise, {demos} dynamic demos",
                        "n": n,
                        "requests": usage["requests"],
                        "tokens / response": round(tokens / ranked, 1),
                        "tokens / pair": round(tokens / pairs, 1),
                        "requests on cached re-run": again["requests"],
                    }
                )
            # Pointwise: one response per call. Pairwise: one call per pair.
            for method, requests in (
                (
                    "pointwise (1 call per response)",
                    [RankRequest(q, [r]) for i, q in enumerate(QUESTIONS) for r in responses(i, n)],
                ),
                (
                    "pairwise (1 call per pair)",
                    [
                        RankRequest(q, [a, b])
                        for i, q in enumerate(QUESTIONS)
                        for a, b in itertools.combinations(responses(i, n), 2)
                    ],
                ),
            ):
                usage = measure(server, requests, bare)
                tokens = usage["prompt_tokens"] + usage["completion_tokens"]
                rows.append(
                    {
                        "method": method,
                        "n": n,
                        "requests": usage["requests"],
                        "tokens / response": round(tokens / ranked, 1),
                        "tokens / pair": round(tokens / pairs, 1),
                        "requests on cached re-run": "",
                    }
                )
    print(f"{len(QUESTIONS)} prompts; the listwise rows include the static demonstration\n")
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    four = {r["method"]: r["tokens / pair"] for r in rows if r["n"] == 4}
    ratio = four["pairwise (1 call per pair)"] / four["listwise, 0 dynamic demos"]
    print(
        f"\nn=4, no dynamic demos: pairwise / listwise tokens per pair = {ratio:.2f} (target >= 2)"
    )
    if cli.json:
        Path(cli.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
