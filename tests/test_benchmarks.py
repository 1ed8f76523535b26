"""The scripts in ``benchmarks/`` run (with small settings), write what they print as JSON,
and ``docs/benchmarks.md`` quotes the committed results exactly.

No timing is asserted here: times on a shared machine are noise, which is why the scripts
report ratios measured in one run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("[!_]*.py"))


def run_script(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    # What it printed is what it wrote.
    assert result["table"] in proc.stdout
    assert result["command"].startswith(f"python benchmarks/{name}.py")
    assert result["machine"]["cpus"] == os.cpu_count()
    return result


def test_cost_counts_tokens_and_a_cached_rerun_pays_nothing(tmp_path):
    rows = run_script("cost", tmp_path)["rows"]
    listwise = [r for r in rows if r["method"].startswith("listwise")]
    assert {r["n"] for r in listwise} == {2, 4, 8} and len(listwise) == 15
    assert all(r["requests on cached re-run"] == 0 and r["requests"] == 4 for r in listwise)
    by = {(r["method"], r["n"]): r for r in rows}
    for n in (2, 4, 8):
        # One call per pair: n(n-1)/2 per prompt; one per response: n per prompt.
        assert by["pairwise (1 call per pair)", n]["requests"] == 4 * n * (n - 1) // 2
        assert by["pointwise (1 call per response)", n]["requests"] == 4 * n
        # Every demonstration costs tokens.
        labels = ["listwise, no demos"] + [f"listwise, static + {k} dynamic" for k in (0, 2, 8)]
        costs = [by[label, n]["tokens / pair"] for label in labels]
        assert costs == sorted(costs) and len(set(costs)) == 4
        # The default token budget: as many demonstrations as fit, and the prompt it adds
        # to the static-only request stays within the budget (the server counts ~4 chars a
        # token, as the ranker's estimate does).
        budget = by["listwise, static + 4096-token budget", n]
        static = by["listwise, static + 0 dynamic", n]
        assert budget["demos / request"] > 2
        added = budget["tokens / request"] - static["tokens / request"]
        assert 0.75 * 4096 < added <= 4096 * 1.02
    # With two responses a listwise ranking without demonstrations is a pairwise judgement.
    assert by["listwise, no demos", 2] == {
        **by["pairwise (1 call per pair)", 2],
        "method": "listwise, no demos",
        "requests on cached re-run": 0,
    }
    # Token counts are deterministic, so the cost target is a behaviour here.
    pairwise = by["pairwise (1 call per pair)", 4]["tokens / pair"]
    assert pairwise >= 2 * by["listwise, no demos", 4]["tokens / pair"]


def test_ranker_concurrency_holds_its_limit(tmp_path):
    args = ["--requests", "4", "--delay", "0.3", "--concurrency", "1", "2", "4"]
    rows = run_script("ranker_concurrency", tmp_path, *args)["rows"]
    assert [r["max_concurrency"] for r in rows] == [1, 2, 4]
    # Read off the server's arrival log: the ranker kept exactly that many in flight.
    assert [r["max in flight (server)"] for r in rows] == [1, 2, 4]


@pytest.mark.slow
def test_latency_hiding_sends_requests_before_the_forward_pass(tmp_path):
    args = ["--delays", "0", "0.2", "--prompts", "2", "--repeats", "2", "--hidden", "512"]
    result = run_script("latency_hiding", tmp_path, *args)
    rows = result["rows"]
    assert [(r["demonstrations"], r["delay d (s)"]) for r in rows] == [
        ("budget", 0.0),
        ("budget", 0.2),
        ("none", 0.0),
        ("none", 0.2),
    ]
    assert rows[1]["sequential B*d"] == pytest.approx(0.4)
    # The default budget shows the agreements of earlier steps; "none" shows none.
    assert rows[0]["demos / request"] > 0 and rows[2]["demos / request"] == 0
    # The requests are in flight while the forward pass (~0.3 s at this width) runs, not
    # sent after it: the server logged each step's first request before its forward ended.
    assert result["details"]["overlapped"] == {
        "budget, width 512": [True, True],
        "none, width 512": [True, True],
    }


@pytest.mark.slow
def test_cycle_overhead_table_has_every_setting(tmp_path):
    args = ["--models", "tiny", "--steps", "2", "--max_completion_length", "4"]
    result = run_script("cycle_overhead", tmp_path, *args)
    settings = [(r["gradient checkpointing"], r["scoring_batch_size"]) for r in result["rows"]]
    assert settings == [(False, None), (True, None), (False, 4)]
    # Each setting reached the trainer: checkpointing on in the second, and generate called
    # with at most 4 sequences (2 prompts x 4 responses = 8 otherwise) in the third.
    checks = result["details"]["cycle_checks"]
    assert [c["activation_checkpointing"] for c in checks] == [False, True, False]
    assert [c["generate_rows_per_call"] for c in checks] == [[8], [8], [4]]


@pytest.mark.slow
def test_vs_trl_counts_judge_requests_per_step(tmp_path):
    args = ["--prompts", "2", "--samples", "2", "--steps", "2", "--delay", "0.01"]
    args += ["--max_completion_length", "4", "--repeats", "1", "--decode_ms", "1"]
    rows = run_script("vs_trl", tmp_path, *args)["rows"]
    assert len(rows) == 10  # two latency models x (three trainers + two ratios)
    fixed, by_tokens = rows[:5], rows[5:]
    # The same requests and tokens whatever the latency model.
    for a, b in zip(fixed, by_tokens):
        assert a["judge requests / step"] == b["judge requests / step"]
    cycle, short, criteria, *ratios = fixed
    # CycleAlign: one listwise request per prompt; GRPO: one judge call per completion.
    assert cycle["judge requests / step"] == 2
    assert short["judge requests / step"] == criteria["judge requests / step"] == 4
    assert [r["judge requests / step"] for r in ratios] == [0.5, 0.5]
    # The criteria make the pointwise prompt longer.
    assert criteria["judge tokens / step"] > short["judge tokens / step"]


#: generation.py with settings that take seconds (tests/test_vllm_benchmark.py runs the same
#: in the vLLM environment, where the vLLM rows run).
GENERATION_SMALL = ["--model", "tiny", "--prompts", "2", "--samples", "2", "--tokens", "4"]
GENERATION_SMALL += ["--steps", "2", "--repeats", "1", "--eager"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_generation_without_vllm_skips_its_vllm_rows_with_the_reason(tmp_path):
    result = run_script("generation", tmp_path, *GENERATION_SMALL)
    hf32, hf16, ours, grpo = result["rows"]
    assert hf32["sampling tokens/s"] > 0 and hf16["sampling tokens/s"] > 0
    assert hf32["step (s)"] > 0 and hf32["rounds / step"] == 2
    for row in (ours, grpo):
        assert row["status"].startswith("skipped: vLLM is not installed in this environment")
    assert result["details"]["vllm"] is None


LORA_SMALL = ["--model", "tiny", "--rounds", "2", "--tokens", "4", "--prompts", "2"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_lora_sync_without_vllm_skips_both_rows_with_the_reason(tmp_path):
    rows = run_script("lora_sync", tmp_path, *LORA_SMALL)["rows"]
    assert [r["status"].startswith("skipped: vLLM is not installed") for r in rows] == [True] * 2


@pytest.mark.parametrize("name", SCRIPTS)
def test_docs_quote_the_committed_results(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _report import describe, render_docs
    finally:
        sys.path.remove(str(BENCHMARKS))
    docs = ROOT / "docs" / "benchmarks.md"
    result = json.loads((RESULTS / f"{name}.json").read_text())
    # A default run (the command is the script alone) of committed code, quoted in full.
    assert result["command"] == f"python benchmarks/{name}.py"
    assert result["commit"] and not result["commit"].endswith("+changes")
    block = f"<!-- results:{name} -->\n{describe(result)}\n<!-- /results:{name} -->"
    assert block in docs.read_text(), "run `python benchmarks/_report.py` to update the docs"
    assert render_docs(docs) == docs.read_text()


def test_gpu_check_dry_run_reports_every_field_as_a_number(tmp_path):
    """benchmarks/gpu_check.sh --dry-run runs the accelerator check's code on this CPU."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _gpu_check import FIELDS
    finally:
        sys.path.remove(str(BENCHMARKS))
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["model"] == "tiny-2-layer" and report["settings"]["steps"] == 1
    for field in FIELDS:
        assert isinstance(row[field], (int, float)) and not isinstance(row[field], bool), field
        assert row[field] >= 0, field
    assert row["sampling tokens/s"] > 0 and row["time/generate s"] > 0
    assert row["time/forward s"] > 0 and row["time/backward s"] > 0
    assert f"| tiny-2-layer | {row['parameters (M)']} |" in proc.stdout  # the printed table
