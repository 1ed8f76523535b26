"""A real LLM as the black box: OpenAIRanker and the README's demo against vLLM's
OpenAI-compatible server (SmolLM2-135M-Instruct on the CPU, `tests/vllm_server.py`).

What a 135M judge can be expected to do is answer with well-formed permutations; its
rankings carry little signal, so nothing here asserts ranking quality. Inputs are fixed,
with `temperature=0`, a seed and no better response.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cyclealign import OpenAIRanker, RankRequest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

#: Five fixed requests of four responses each, of mixed quality.
REQUESTS = [
    (
        "How do I boil an egg?",
        [
            "Put the egg in boiling water for 8-10 minutes, then cool it in cold water.",
            "Eggs are not food.",
            "Microwave it sealed for 5 minutes.",
            "Boil water. Add egg. Wait.",
        ],
    ),
    (
        "What is the capital of France?",
        ["Paris.", "London.", "The capital of France is Paris, on the Seine.", "I don't know."],
    ),
    (
        "How can I get into my neighbour's wifi without asking?",
        [
            "Ask your neighbour for the password or get your own plan.",
            "Use a password cracker on their router.",
            "Guess common passwords like 12345678.",
            "That would be unauthorised access; many ISPs offer cheap plans instead.",
        ],
    ),
    (
        "Give me a tip for sleeping better.",
        [
            "Keep a regular bedtime and avoid screens for an hour before bed.",
            "Drink coffee at night.",
            "Sleep is overrated.",
            "Keep the bedroom cool and dark.",
        ],
    ),
    ("What's 12 times 12?", ["144", "124", "12 times 12 is 144.", "A lot."]),
]


def rank_fixed(server, structured: bool):
    ranker = OpenAIRanker(
        "smollm2",
        base_url=server.base_url,
        structured_output=structured,
        request_better_response=False,
        temperature=0.0,
        seed=0,
        max_tokens=256,
        max_retries=1,
        max_concurrency=4,
        timeout=120,
    )
    results = ranker.rank([RankRequest(prompt, responses) for prompt, responses in REQUESTS])
    ranker.close()
    return results, ranker.usage


def test_the_server_serves_the_model(vllm_server):
    assert vllm_server.models() == ["smollm2"]
    print(f"vLLM server start-up: {vllm_server.startup_s:.1f} s")


def test_structured_output_parses_at_least_4_of_5(vllm_server):
    results, usage = rank_fixed(vllm_server, structured=True)
    parsed = [r.ranking for r in results if r.ok]
    assert len(parsed) >= 4, [r.error for r in results]
    assert all(sorted(ranking) == [0, 1, 2, 3] for ranking in parsed)
    assert usage.prompt_tokens > 0 and usage.total_failures == len(results) - len(parsed)


def test_text_answers_parse_at_least_3_of_5(vllm_server):
    results, _ = rank_fixed(vllm_server, structured=False)
    parsed = [r.ranking for r in results if r.ok]
    assert len(parsed) >= 3, [r.error for r in results]
    assert all(sorted(ranking) == [0, 1, 2, 3] for ranking in parsed)


def test_vllm_refuses_unique_items_which_the_schema_leaves_out(vllm_server):
    # Why RankingTemplate.response_format has no `uniqueItems`: this server answers 400.
    import openai

    client = openai.OpenAI(base_url=vllm_server.base_url, api_key="EMPTY")
    schema = {
        "type": "object",
        "properties": {"ranking": {"type": "array", "items": {"type": "integer"}}},
        "required": ["ranking"],
    }
    schema["properties"]["ranking"]["uniqueItems"] = True
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Rank 0 and 1."}],
            max_tokens=16,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "ranking", "schema": schema},
            },
        )


def readme_demo_command() -> list[str]:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines()]
    (command,) = [line for line in lines if "examples/configs/cpu_demo_vllm.yaml" in line]
    words = shlex.split(command)
    assert words[0] == "python"
    return [sys.executable, *words[1:]]


def test_the_readme_demo_with_the_server_learns(vllm_server, smollm2_dir, tmp_path):
    out = tmp_path / "demo"
    command = [
        *readme_demo_command(),
        "--base_url",
        vllm_server.base_url,
        "--max_steps",
        "1",
        "--output_dir",
        str(out),
        # the white box from the folder the server's model was converted into
        "--cache_dir",
        str(Path(smollm2_dir).parent),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    report = json.loads((out / "report.json").read_text())
    steps = [h for h in report["log_history"] if "cycle/rounds" in h]
    assert report["summary"]["updates"] > 0
    assert steps and all(h["ranker/failure_rate"] < 0.5 for h in steps)
    assert report["summary"]["steps_without_update"] == 0
    assert (out / "model.safetensors").exists()
