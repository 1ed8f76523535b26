"""log_completions: the completion table on the console and in trackio (local, TRACKIO_DIR)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cyclealign.trainer.completions import COLUMNS, completion_table, log_completion_table

ROOT = Path(__file__).resolve().parents[1]


def row(step, prompt, responses, ranking, better=""):
    return {
        "step": step,
        "messages": [{"role": "user", "content": prompt}],
        "responses": responses,
        "ranking": ranking,
        "whitebox_ranking": list(range(len(responses))),
        "agreement": ranking[:1],
        "better_response": better,
    }


ROWS = [
    row(3, "joke", ["Why?", "No."], [1, 0], "A better one."),
    row(3, "bread", ["Mix flour.", "Buy it."], []),
]


def test_the_table_has_the_six_columns_as_text():
    table = completion_table(ROWS)
    assert list(table) == ["step", *COLUMNS]
    assert table["prompt"][0] == "Human: joke"
    assert table["responses"][0] == "[0] Why?\n[1] No."
    assert table["ranking"] == ["[1, 0]", "[]"]  # a failed ranking is []
    assert table["better_response"] == ["A better one.", ""]


def test_the_console_shows_num_completions_to_print_rows(capsys):
    log_completion_table(ROWS, 3, report_to=[], num_rows=None)
    everything = capsys.readouterr().out
    assert "Step 3" in everything and "black box" in everything  # TRL's rich panel
    assert "joke" in everything and "bread" in everything
    log_completion_table(ROWS, 3, report_to=[], num_rows=1)
    one = capsys.readouterr().out
    assert ("joke" in one) != ("bread" in one)  # one of the two rows
    log_completion_table(ROWS, 3, report_to=[], num_rows=0)
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_a_trackio_run_holds_the_completion_table(tmp_path, tiny_model_dir):
    pytest.importorskip("trackio")
    env = {
        **os.environ,
        "TRACKIO_DIR": str(tmp_path / "trackio"),  # trackio writes here, no server involved
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT / "src"),
    }
    train = [
        *(sys.executable, "-m", "cyclealign", "train"),
        *("--config", str(ROOT / "examples" / "configs" / "cpu_demo.yaml")),
        *("--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "run")),
        *("--max_steps", "1", "--logging_steps", "1", "--max_completion_length", "4"),
        *("--report_to", "trackio", "--project", "cyclealign-test", "--run_name", "tables"),
        *("--log_completions", "true", "--num_completions_to_print", "1"),
    ]
    proc = subprocess.run(train, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "black box" in proc.stdout  # the console table
    read = (
        "import json\nfrom trackio.sqlite_storage import SQLiteStorage\n"
        "print(json.dumps(SQLiteStorage.get_logs('cyclealign-test', 'tables'), default=str))"
    )
    out = subprocess.run(
        [sys.executable, "-c", read], capture_output=True, text=True, env=env, check=True
    )
    logs = json.loads(out.stdout.strip().splitlines()[-1])
    tables = [entry["completions"] for entry in logs if "completions" in entry]
    assert len(tables) == 1 and tables[0]["_type"] == "trackio.table"
    rows = tables[0]["_value"]
    assert len(rows) == 2 * 2  # cpu_demo: 2 prompts per step, 2 rounds (all rows, not 1)
    assert set(COLUMNS) <= set(rows[0]) and rows[0]["step"] == 0
    assert any("train/loss/rank" in entry or "train/loss" in entry for entry in logs)
