"""benchmarks/generation.py and benchmarks/lora_sync.py in the vLLM environment: every row
runs (in CI their vLLM rows are never skipped), with the settings of tests/test_benchmarks.py
(a tiny model, seconds)."""

from __future__ import annotations

import pytest

from test_benchmarks import GENERATION_SMALL, LORA_SMALL, run_script

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_generation_measures_vllm_and_trls_grpo(tmp_path):
    result = run_script("generation", tmp_path, *GENERATION_SMALL)
    hf32, hf16, ours, grpo = result["rows"]
    assert ours["status"] == "ran, eager" and grpo["status"].startswith("ran, CPU sync patched")
    for row in (hf32, hf16, ours):
        assert row["sampling tokens/s"] > 0
    for row in (hf32, ours, grpo):
        assert row["step (s)"] > 0
    assert ours["rounds / step"] == hf32["rounds / step"] == 2
    assert ours["weight sync / round (s)"] > 0 and ours["start-up (s)"] > 0
    ratios = result["details"]["ratios"]
    assert all(isinstance(ratios[k], float) for k in ("sampling", "step", "sync", "grpo"))
    # The engine was built with the trainer's settings, fp32 nowhere forced.
    assert result["details"]["vllm"]["engine"]["dtype"] == "bfloat16"
    assert any("TRL 1.16 on CPUs" in note for note in result["notes"])


def test_lora_sync_measures_both_ways_into_the_engine(tmp_path):
    merge, adapter = run_script("lora_sync", tmp_path, *LORA_SMALL)["rows"]
    for row in (merge, adapter):
        assert row["status"] == "ran"
        assert row["adapter into the engine (s)"] > 0 and row["sampling tokens/s"] > 0
    assert merge["method"].startswith("merge and sync")
