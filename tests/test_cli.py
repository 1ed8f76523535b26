"""`cyclealign evaluate` end to end: tiny policy, tiny reward model, local judge server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from chat_server import ChatServer, Reply
from cyclealign.cli import main
from helpers import HH_DIR, build_tiny_model, build_tiny_reward_model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("reward-model")
    build_tiny_reward_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("baseline")
    build_tiny_model(tiny_tokenizer, seed=7).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_evaluate_writes_reward_and_pairwise_tables(
    tmp_path, tiny_model_dir, reward_model_dir, baseline_dir, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(
        json.dumps({"log_history": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]})
    )
    always_a = Reply("Both are odd, the first less so.\n### The desired ranking is: [0, 1]")
    with ChatServer(lambda body, n: always_a) as server:
        code = main(
            [
                "evaluate",
                "--model",
                str(tiny_model_dir),
                "--baseline",
                str(baseline_dir),
                "--dataset",
                str(HH_DIR),
                "--num_samples",
                "8",
                "--max_completion_length",
                "4",
                "--reward_model",
                str(reward_model_dir),
                "--judge_model",
                "judge",
                "--judge_base_url",
                server.base_url,
                "--training_run",
                str(run),
                "--output_dir",
                str(tmp_path),
            ]
        )
        assert server.count == 16  # 8 pairs, each judged in both orders
    assert code == 0
    results = json.loads((tmp_path / "results.json").read_text())
    subsets = [row["subset"] for row in results["reward"]]
    assert subsets == [
        "harmless-base",
        "helpful-base",
        "helpful-online",
        "helpful-rejection-sampled",
        "total",
    ]
    assert [row["n"] for row in results["reward"]] == [2, 2, 2, 2, 8]
    assert results["pairwise"]["tie"] == 1.0  # a judge that always answers "A": all ties
    markdown = (tmp_path / "results.md").read_text()
    assert "## Reward score per subset" in markdown and "| total | 8 |" in markdown
    assert "## Pairwise judge" in capsys.readouterr().out
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_without_work_says_what_to_pass(tmp_path):
    with pytest.raises(SystemExit, match="Nothing to evaluate"):
        main(["evaluate", "--model", "x", "--output_dir", str(tmp_path)])


def test_console_script_is_installed():
    out = subprocess.run(
        [sys.executable, "-m", "cyclealign.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--reward_model" in out.stdout and "--judge_base_url" in out.stdout


def test_help_lists_train_and_evaluate():
    out = subprocess.run(
        [sys.executable, "-m", "cyclealign", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in out.stdout and "evaluate" in out.stdout
    train_help = subprocess.run(
        [sys.executable, "-m", "cyclealign", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    # The training script's parser: the script's, CycleAlignConfig's and ModelConfig's fields.
    for flag in ("--ranker_model", "--max_rounds", "--lora_r", "--use_dora", "--load_in_4bit"):
        assert flag in train_help.stdout
    assert train_help.stdout.startswith("usage: cyclealign train")


def test_unknown_arguments_of_evaluate_are_errors(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "x", "--no_such_flag"])
    assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
