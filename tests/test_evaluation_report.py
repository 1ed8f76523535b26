"""Evaluation outputs: the local evaluate metrics, Markdown tables and the training plot."""

from __future__ import annotations

import json

import pytest

from cyclealign.evaluation.metrics import load_metric, metric_path
from cyclealign.evaluation.report import markdown_table, plot_training_metrics, training_curves


def test_pairwise_win_rate_counts_disagreement_as_tie():
    metric = load_metric("pairwise_win_rate")
    # forward: A shown first; backward: B shown first.
    # pair 1: A both times -> win; pair 2: B both times -> lose;
    # pair 3: "always the first position" -> tie; pair 4: no verdict once -> tie.
    result = metric.compute(predictions=[0, 1, 0, -1], references=[1, 0, 0, 1])
    assert result == {"win": 0.25, "tie": 0.5, "lose": 0.25, "n": 4}


def test_a_judge_that_always_answers_first_gives_only_ties():
    metric = load_metric("pairwise_win_rate")
    assert metric.compute(predictions=[0] * 7, references=[0] * 7)["tie"] == 1.0


def test_pairwise_win_rate_rejects_bad_verdicts():
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        load_metric("pairwise_win_rate").compute(predictions=[2], references=[0])


def test_ranking_accuracy_counts_failures_as_wrong():
    result = load_metric("ranking_accuracy").compute(
        predictions=[0, 1, -1, 0], references=[0, 0, 0, 0]
    )
    assert result == {"accuracy": 0.5, "failures": 0.25, "n": 4}


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ValueError, match="pairwise_win_rate, ranking_accuracy"):
        metric_path("bleu")


def test_markdown_table_escapes_and_formats():
    table = markdown_table([{"subset": "a|b", "reward": 1.234567}, {"subset": "c", "reward": 2.0}])
    assert table.splitlines() == [
        "| subset | reward |",
        "|---|---|",
        "| a\\|b | 1.235 |",
        "| c | 2 |",
    ]
    assert markdown_table([]) == ""


def test_training_plot_from_trainer_state(tmp_path):
    state = {
        "log_history": [
            {"step": 1, "epoch": 0.5, "loss": 2.0, "agreement/length": 2.0},
            {"step": 2, "epoch": 1.0, "loss": 1.5, "agreement/length": 3.0},
            {"step": 2, "train_runtime": 3.0},
        ]
    }
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    curves = training_curves(tmp_path)
    assert curves["loss"] == [(1, 2.0), (2, 1.5)]
    out = plot_training_metrics(tmp_path, tmp_path / "plots" / "metrics.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none of the metrics"):
        plot_training_metrics({"log_history": [{"step": 1, "foo": 1.0}]}, tmp_path / "x.png")
