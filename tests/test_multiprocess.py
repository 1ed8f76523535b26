"""Real multi-process runs on CPU: DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3, LoRA.

Each test launches ``tests/multiprocess/train_tiny.py`` the way a user would (``accelerate
launch``) and compares what every process wrote. Recipes and traps:
``docs/trainer.md`` and the notes on CPU distributed runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "multiprocess" / "train_tiny.py"
CONFIGS = ROOT / "examples" / "accelerate_configs"

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(out: Path, *script_args: str, processes: int = 1, config: str | None = None) -> list:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # DeepSpeed compiles a communication op once (~100 s); keep it between runs.
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cyclealign-torch-extensions")
        ),
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config:
        command += ["--config_file", str(CONFIGS / config)]
    elif processes > 1:
        # Both are needed on a CPU-only machine: without ACCELERATE_USE_CPU=1 two
        # independent rank-0 copies start, with no error.
        env["ACCELERATE_USE_CPU"] = "1"
        command += ["--multi_gpu", "--num_processes", str(processes)]
    else:
        command += ["--num_processes", "1"]
    command += ["--main_process_port", str(free_port()), str(SCRIPT), "--out", str(out)]
    proc = subprocess.run(
        [*command, *script_args], capture_output=True, text=True, timeout=420, env=env
    )
    assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    results = [json.loads((out / f"rank{i}.json").read_text()) for i in range(processes)]
    assert [r["num_processes"] for r in results] == [processes] * processes
    return results


def updates(result) -> list:
    return [h["cycle/updates"] for h in result["log_history"] if "cycle/updates" in h]


def test_ddp_two_processes_stay_identical(tmp_path):
    ranks = launch(tmp_path, processes=2)
    a, b = ranks
    assert "MULTI_CPU" in a["distributed_type"]
    assert set(a["prompts_seen"]).isdisjoint(b["prompts_seen"])  # each its own prompts
    assert a["final"] == b["final"] and a["final"] != a["initial"]
    assert a["pool"] == b["pool"] and a["pool"]["items"]
    assert updates(a) == [2.0, 2.0] and a["global_step"] == 2


def test_ddp_one_rank_failing_while_the_other_agrees_finishes(tmp_path):
    a, b = launch(tmp_path, "--scenario", "one_fails", processes=2)
    assert a["final"] == b["final"] and a["final"] != a["initial"]
    assert a["pool"] == b["pool"]
    # Rank 1's failed prompts never count as agreeing, so no early stop: both ranks ran
    # the same number of rounds (anything else would hang a collective).
    assert updates(a) == updates(b) == [2.0, 2.0]


def test_ddp_no_usable_ranking_anywhere_changes_nothing(tmp_path):
    a, b = launch(tmp_path, "--scenario", "all_fail", processes=2)
    assert a["final"] == b["final"] == a["initial"]
    assert updates(a) == [0.0, 0.0] and a["global_step"] == 2


def test_ddp_lora_trains_only_the_adapter(tmp_path):
    a, b = launch(tmp_path, "--peft", processes=2)
    assert a["final"] == b["final"] and a["final"] != a["initial"]
    assert a["base_unchanged"] is True and b["base_unchanged"] is True
    assert a["pool"] == b["pool"]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("plain"))[0]


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_inner_rounds_match_the_plain_run(tmp_path, plain_run, config):
    (ds,) = launch(tmp_path, config=config)
    assert "DEEPSPEED" in ds["distributed_type"]
    # Two rounds a step, each an optimizer update through DeepSpeed's engine step: the
    # same losses, weights and pool as the plain run.
    assert updates(ds) == updates(plain_run) == [2.0, 2.0]
    losses = [h["loss"] for h in ds["log_history"] if "loss" in h]
    plain_losses = [h["loss"] for h in plain_run["log_history"] if "loss" in h]
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    assert ds["final"][1] == pytest.approx(plain_run["final"][1], rel=1e-9)
    assert ds["final"][1] != pytest.approx(ds["initial"][1], rel=1e-9)
    assert ds["pool"] == plain_run["pool"]


def run_script(*script_args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *script_args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_killed_run_resumes_to_the_uninterrupted_result_without_paying_twice(tmp_path):
    from chat_server import ChatServer, rank_by

    common = ["--steps", "4", "--save_steps", "2", "--max_rounds", "2"]
    with ChatServer(rank_by(lambda text: text.count("e"))) as server:
        whole = run_script(
            "--out",
            str(tmp_path / "whole"),
            "--ranker_url",
            server.base_url,
            "--cache",
            str(tmp_path / "whole.sqlite"),
            *common,
        )
        assert whole.returncode == 0, whole.stderr[-4000:]
        paid_whole = server.count
    with ChatServer(rank_by(lambda text: text.count("e"))) as server:
        out, cache = tmp_path / "killed", tmp_path / "killed.sqlite"
        args = ["--out", str(out), "--ranker_url", server.base_url, "--cache", str(cache)]
        killed = run_script(*args, *common, "--kill_after_save", "2")
        assert killed.returncode == -9, killed.stderr[-4000:]
        assert (out / "checkpoint-2").is_dir() and not (out / "rank0.json").exists()
        paid_before_kill = server.count
        resumed = run_script(*args, *common, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        paid_after_resume = server.count - paid_before_kill
    a = json.loads((tmp_path / "whole" / "rank0.json").read_text())
    b = json.loads((out / "rank0.json").read_text())
    assert b["final"] == a["final"] and b["pool"] == a["pool"] and b["global_step"] == 4
    # Steps 1-2 were paid once, before the kill; the resumed run paid only for steps 3-4.
    assert 0 < paid_before_kill < paid_whole
    assert paid_before_kill + paid_after_resume == paid_whole
