"""examples/hh_rlhf.py as users run it: plain python and `accelerate launch` with ZeRO-3."""

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


def run(command: list[str], out: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
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
def test_every_example_config_parses(config, tmp_path, monkeypatch):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import hh_rlhf
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    from trl import TrlParser

    from cyclealign import CycleAlignConfig

    parser = TrlParser((hh_rlhf.ScriptArguments, CycleAlignConfig))
    script, args = parser.parse_args_and_config(
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
    assert args.gradient_accumulation_steps == 1 and args.num_generations >= 2


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


def test_raw_format_models_get_the_official_stop_strings(tmp_path):
    sys.path.insert(0, str(EXAMPLE.parent))
    try:
        import hh_rlhf
    finally:
        sys.path.remove(str(EXAMPLE.parent))
    from cyclealign import CycleAlignConfig
    from cyclealign.data.hh_rlhf import HH_RLHF_STOP_STRINGS
    from helpers import build_tiny_tokenizer

    def stops(chat_template, **config):
        args = CycleAlignConfig(output_dir=str(tmp_path), **config)
        hh_rlhf.set_stop_strings(args, build_tiny_tokenizer(chat_template=chat_template))
        return args.stop_strings

    # PRO's `early_truncation` list.
    assert HH_RLHF_STOP_STRINGS == ("Human:", "human:", "Assistant:", "assistant:")
    assert stops(chat_template=False) == list(HH_RLHF_STOP_STRINGS)
    assert stops(chat_template=True) is None  # a chat template ends turns with its EOS
    assert stops(chat_template=False, stop_strings=["###"]) == ["###"]  # the user's choice
    assert stops(chat_template=False, generation_kwargs={"stop_strings": ["x"]}) is None
    script = hh_rlhf.ScriptArguments(ranker_template="paper")
    assert hh_rlhf.ranking_template(script).answer_suffix == "."
