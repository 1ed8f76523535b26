"""Evaluation results as files a person reads: JSON, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Training metrics worth a panel each, in this order, when a run logged them.
DEFAULT_PLOT_KEYS = (
    "loss",
    "loss/rank",
    "loss/sft",
    "agreement/length",
    "agreement/full_rate",
    "agreement/kendall_tau",
    "cycle/rounds",
    "demos/pool_size",
    "eval_loss",
    "reward",
)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render ``rows`` (dicts) as a GitHub Markdown table; floats get 4 significant digits."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    return path


def training_curves(trainer_state: str | Path | Mapping[str, Any]) -> dict[str, list[tuple]]:
    """``{metric: [(step, value), ...]}`` from a run's ``trainer_state.json`` (or its dict)."""
    if not isinstance(trainer_state, Mapping):
        path = Path(trainer_state)
        if path.is_dir():
            path = path / "trainer_state.json"
        trainer_state = json.loads(path.read_text())
    curves: dict[str, list[tuple]] = {}
    for entry in trainer_state.get("log_history", []):
        step = entry.get("step")
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, int | float):
                continue
            curves.setdefault(key, []).append((step, float(value)))
    return curves


def plot_training_metrics(
    trainer_state: str | Path | Mapping[str, Any],
    out_path: str | Path,
    keys: Sequence[str] | None = None,
) -> Path:
    """Plot the training metrics of a run (one panel per metric) to a PNG file.

    Args:
        trainer_state: a ``trainer_state.json`` path, the folder holding it, or its dict.
        out_path: the PNG to write.
        keys: metrics to plot; default: those of :data:`DEFAULT_PLOT_KEYS` the run logged.
    """
    try:
        import matplotlib
    except ImportError as err:  # an optional dependency: say how to get it
        raise ImportError("Plotting needs matplotlib: pip install 'cyclealign[eval]'") from err

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    curves = training_curves(trainer_state)
    keys = [k for k in (keys or DEFAULT_PLOT_KEYS) if k in curves]
    if not keys:
        raise ValueError(
            "The run's log_history has none of the metrics to plot "
            f"(looked for {list(DEFAULT_PLOT_KEYS)}); found {sorted(curves)}."
        )
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = zip(*curves[key], strict=True)
        ax.plot(steps, values, marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
