"""examples/hh_rlhf.py as users run it: plain python and `accelerate launch` with ZeRO-3 (it\nruns `cyclealign train`'s code, cyclealign.scripts.train)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import HH_DIR

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hh_rlhf.py"


def run(command: list[str], out: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **extra_env,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cyclealign-torch-extensions")
        ),
    }
    proc = subprocess.run(command, capture_output=True, text=True, timeout=480, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def common_args(model_dir: Path, out: Path) -> list[str]:
    return [
        "--config",
        str(ROOT / "examples" / "configs" / "cpu_demo.yaml"),
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--dataset",
        str(HH_DIR),
        "--split",
        "test",
        "--subsets",
        "helpful-base",
        "harmless-base",
        "--num_samples",
        "4",
        "--max_completion_length",
        "6",
        "--max_prompt_length",
        "48",
    ]


@pytest.mark.slow
def test_example_runs_on_hh_rlhf_and_reports(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = run([sys.executable, str(EXAMPLE), *common_args(tiny_model_dir, out)], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["updates"] >= 1
    assert summary["parsed_rankings"] >= 1 and summary["demonstration_pool_size"] >= 1
    assert isinstance(summary["sample_generation"], str)
    for name in ("report.md", "report.json", "metrics.png", "model.safetensors"):
        assert (out / name).exists(), name
        assert str((out / name).resolve()) in proc.stdout or name == "model.safetensors"


@pytest.mark.slow
def test_example_without_matplotlib_still_writes_the_model_and_report(tiny_model_dir, tmp_path):
    # matplotlib is only in the `eval` extra: a run must not be lost to the plot.
    blocker = tmp_path / "no-matplotlib" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n"
    )
    out = tmp_path / "run"
    path = os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])
    args = [*common_args(tiny_model_dir, out), "--max_steps", "1", "--save_strategy", "no"]
    proc = run([sys.executable, str(EXAMPLE), *args], out, PYTHONPATH=path)
    assert "No plot: Plotting needs matplotlib" in proc.stderr
    assert not (out / "metrics.png").exists()
    for name in ("report.json", "report.md", "summary.json", "model.safetensors"):
        assert (out / name).exists(), name
    assert json.loads((out / "report.json").read_text())["summary"]["global_step"] == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_example_under_accelerate_zero3(tiny_model_dir, tmp_path):
    out = tmp_path / "zero3"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "examples" / "accelerate_configs" / "zero3.yaml"),
        "--main_process_port",
        port,
        str(EXAMPLE),
        *common_args(tiny_model_dir, out),
        "--use_cpu",
        "false",
    ]
    run(command, out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["updates"] >= 1
    state = json.loads((out / "report.json").read_text())
    assert any("cycle/rounds" in h for h in state["log_history"])


@pytest.mark.parametrize("config", sorted((ROOT / "examples" / "configs").glob("*.yaml")))
def test_every_example_config_parses(config, tmp_path):
    from cyclealign.scripts.train import make_parser

    script, args, model_args = make_parser().parse_args_and_config(
        [
            "--config",
            str(config),
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "true",
            "--bf16",
            "false",
        ]
    )
    assert script.ranker in ("openai", "local_chat", "none")
    assert model_args.model_name_or_path
    assert args.gradient_accumulation_steps == 1 and args.num_generations >= 2


def test_the_example_is_the_installed_command():
    source = EXAMPLE.read_text()
    assert "from cyclealign.scripts.train import main" in source
    assert len(source.splitlines()) < 30  # a thin script over the package's code


@pytest.mark.slow
def test_offline_baseline_config_runs(tiny_model_dir, tmp_path):
    out = tmp_path / "pro"
    run(
        [
            sys.executable,
            str(EXAMPLE),
            "--config",
            str(ROOT / "examples" / "configs" / "pro_offline.yaml"),
            "--model_name_or_path",
            str(tiny_model_dir),
            "--dataset",
            str(HH_DIR),
            "--split",
            "test",
            "--num_samples",
            "8",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--max_completion_length",
            "16",
            "--max_prompt_length",
            "64",
            "--use_cpu",
            "true",
            "--logging_steps",
            "1",
        ],
        out,
    )
    report = json.loads((out / "report.json").read_text())
    assert any("loss/rank" in h for h in report["log_history"])
    assert report["summary"]["global_step"] == 2
