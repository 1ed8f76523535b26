"""The end of a training run: ``report.json``, ``report.md``, ``metrics.png``, a sample answer
from the saved model, and where each file is."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..evaluation.report import markdown_table, plot_training_metrics, write_json

__all__ = ["check_checkpoint", "finish_run", "write_report"]

logger = logging.getLogger(__name__)


def write_report(trainer: Any, out: Path) -> dict:
    """Sum the run's metrics into report.json / report.md / metrics.png."""
    history = trainer.state.log_history
    steps = [h for h in history if "cycle/rounds" in h]
    round_log = out / "round_log.jsonl"
    rows = (
        [json.loads(line) for line in round_log.read_text().splitlines()]
        if round_log.exists()
        else []
    )
    summary = {
        "global_step": trainer.state.global_step,
        "rounds": sum(h["cycle/rounds"] for h in steps),
        "updates": sum(h.get("cycle/updates", 0) for h in steps),
        "parsed_rankings": sum(1 for r in rows if r["ranking"]),
        "failed_rankings": sum(1 for r in rows if not r["ranking"]),
        "mean_agreement_length": (
            sum(len(r["agreement"]) for r in rows if r["ranking"])
            / max(1, sum(1 for r in rows if r["ranking"]))
        ),
        "demonstration_pool_size": len(getattr(trainer, "pool", ())),
        "steps_without_update": (
            trainer.failures.steps_without_update if hasattr(trainer, "failures") else None
        ),
        "ranker_usage": trainer.ranker.usage.as_dict() if hasattr(trainer, "ranker") else {},
    }
    write_json({"summary": summary, "log_history": history}, out / "report.json")
    samples = [
        {
            "prompt": r["messages"][-1]["content"][:60],
            "responses": len(r["responses"]),
            "black box": r["ranking"],
            "white box": r["whitebox_ranking"],
            "agreement": r["agreement"],
        }
        for r in rows[-6:]
    ]
    usage = summary["ranker_usage"]
    flat = {k: v for k, v in summary.items() if k != "ranker_usage"}
    flat |= {f"ranker {k}": v for k, v in usage.items() if k != "failures"}
    flat["ranker failures"] = sum(usage.get("failures", {}).values())
    text = "# CycleAlign run report\n\n" + markdown_table([flat])
    text += "\n## Last rounds\n\n" + markdown_table(samples) if samples else ""
    (out / "report.md").write_text(text)
    try:
        plot_training_metrics({"log_history": history}, out / "metrics.png")
    except (ImportError, ValueError) as err:  # no matplotlib, or too short a run to plot
        logger.warning("No plot: %s", err)
    return summary


def check_checkpoint(path: Path, prompt: str) -> str:
    """Reload the saved model as a user would and let it answer one prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import outside_zero3

    tokenizer = AutoTokenizer.from_pretrained(path)
    with outside_zero3():
        model = AutoModelForCausalLM.from_pretrained(path)
    messages = [{"role": "user", "content": prompt}]
    if tokenizer.chat_template:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:
        ids = tokenizer(f"\n\nHuman: {prompt}\n\nAssistant:", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def finish_run(trainer: Any, out: Path, sample: bool = True) -> dict:
    """Write the report (and, for a full model, a sample answer into ``summary.json``) and
    print where everything is. Main process only."""
    summary = write_report(trainer, out)
    write_json(summary, out / "summary.json")  # before anything else can go wrong
    if sample:
        summary["sample_generation"] = check_checkpoint(out, "How do I keep basil alive?")
        write_json(summary, out / "summary.json")
    print(f"\nmodel (loads with from_pretrained): {out.resolve()}")
    print(f"metrics: {(out / 'report.json').resolve()}")
    print(f"report: {(out / 'report.md').resolve()}")
    if (out / "metrics.png").exists():
        print(f"plot: {(out / 'metrics.png').resolve()}")
    print(json.dumps(summary, indent=2))
    return summary
