"""Two processes, each with its own colocated vLLM engine (`use_vllm=True`), under DDP and
DeepSpeed ZeRO-3 (parameters really partitioned, gathered for every sync): both ranks end
with identical parameters and pools. Launched as in tests/test_multiprocess.py."""

from __future__ import annotations

import pytest

from test_multiprocess import assert_ranks_identical, launch, logged, zero3_partitioned_config

pytestmark = [pytest.mark.vllm, pytest.mark.distributed, pytest.mark.slow]


def assert_sampled_by_the_engines(a: dict, b: dict) -> None:
    assert a["final"] != a["initial"] and logged(a, "cycle/updates") == [2.0, 2.0]
    for rank in (a, b):
        syncs = logged(rank, "time/weight_sync")
        assert len(syncs) == 2 and all(s > 0 for s in syncs)  # a sync before each step
        assert rank["vllm_synced_tensors"] > 0


def test_ddp_two_engines_keep_the_ranks_identical(tmp_path):
    a, b = launch(tmp_path, "--vllm")
    assert "MULTI_CPU" in a["distributed_type"]
    assert_ranks_identical(a, b)
    assert_sampled_by_the_engines(a, b)


def test_zero3_two_engines_sync_from_gathered_parameters(tmp_path):
    config = zero3_partitioned_config(tmp_path)
    a, b = launch(tmp_path / "out", "--vllm", "--ddp_backend", "gloo", config=config)
    assert "DEEPSPEED" in a["distributed_type"] and a["partitioned"] > 0
    assert_ranks_identical(a, b)
    assert_sampled_by_the_engines(a, b)
