"""``cyclealign evaluate``: the evaluation protocol from the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from .protocol import (
    generate_responses,
    judge_template,
    load_policy,
    pairwise_judgement,
    reward_table,
)
from .report import markdown_table, plot_training_metrics, write_json

__all__ = ["run_evaluation"]


def run_evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """Generate answers for HH-RLHF prompts, then every evaluation the arguments ask for."""
    from ..data import load_hh_rlhf

    if not (args.reward_model or args.baseline or args.training_run):
        raise SystemExit(
            "Nothing to evaluate: pass --reward_model (reward table), --baseline with "
            "--judge_model (pairwise judging) and/or --training_run (plot)."
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_hh_rlhf(
        args.dataset,
        subsets=args.subsets,
        split=args.split,
        num_samples=args.num_samples,
        seed=args.seed,
    )
    prompts, subsets = list(data["prompt"]), list(data["subset"])
    model, tokenizer = load_policy(args.model, args.adapter)
    answers = generate_responses(
        model,
        tokenizer,
        prompts,
        max_completion_length=args.max_completion_length,
        batch_size=args.batch_size,
        stop_strings=getattr(args, "stop_strings", None),
    )
    results: dict[str, Any] = {"model": args.model, "adapter": args.adapter, "n": len(prompts)}
    sections = [f"# Evaluation of {args.model}\n"]

    if args.reward_model:
        from ..rankers.local import RewardModelRanker

        scorer = RewardModelRanker(args.reward_model, batch_size=args.batch_size)
        table = reward_table(prompts, answers, subsets, scorer)
        results["reward"] = table
        sections.append("## Reward score per subset\n\n" + markdown_table(table))

    if args.baseline:
        if not args.judge_model:
            raise SystemExit("--baseline needs --judge_model (and --judge_base_url if local).")
        from ..rankers.openai import OpenAIRanker

        base_model, base_tokenizer = load_policy(args.baseline, args.baseline_adapter)
        baseline_answers = generate_responses(
            base_model,
            base_tokenizer,
            prompts,
            max_completion_length=args.max_completion_length,
            batch_size=args.batch_size,
            stop_strings=getattr(args, "stop_strings", None),
        )
        judge = OpenAIRanker(
            args.judge_model,
            base_url=args.judge_base_url,
            api_key=os.environ.get(args.judge_api_key_env),
            cache_path=args.judge_cache,
            template=judge_template(),
        )
        outcome = pairwise_judgement(prompts, answers, baseline_answers, judge)
        judge.close()
        results["pairwise"] = {"baseline": args.baseline, **outcome}
        row = {"model": args.model, "vs": args.baseline, **outcome}
        sections.append("## Pairwise judge (both orders)\n\n" + markdown_table([row]))
        results["samples"] = [
            {"prompt": p, "model": a, "baseline": b}
            for p, a, b in zip(prompts[:5], answers[:5], baseline_answers[:5])
        ]

    if args.training_run:
        plot = plot_training_metrics(args.training_run, out / "metrics.png")
        results["plot"] = str(plot)
        sections.append(f"## Training metrics\n\n![training metrics]({plot.name})\n")

    results["markdown"] = "\n".join(sections)
    write_json({k: v for k, v in results.items() if k != "markdown"}, out / "results.json")
    (out / "results.md").write_text(results["markdown"])
    return results
