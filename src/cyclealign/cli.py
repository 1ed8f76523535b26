"""The ``cyclealign`` command.

    cyclealign train --config examples/configs/cpu_demo.yaml [--field value ...]
    accelerate launch [--config_file ...] -m cyclealign train --config x.yaml [...]

trains (:mod:`cyclealign.scripts.train`, as ``trl grpo``: the script's arguments,
``CycleAlignConfig`` and TRL's ``ModelConfig``, from a YAML file and flags).

    cyclealign evaluate --model runs/cpu_demo --dataset path/to/hh-rlhf --num_samples 100 \
        --reward_model path/to/reward-model [--baseline path/to/base-model \
        --judge_base_url http://localhost:8000/v1 --judge_model NAME] [--training_run DIR]

Writes ``results.json`` and ``results.md`` (and ``metrics.png`` with ``--training_run``) to
``--output_dir`` and prints the tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cyclealign", description="CycleAlign tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "train",
        help="Train with CycleAlign (or the offline PRO/RRHF baselines) from a YAML config and "
        "flags; `cyclealign train --help` lists them.",
        add_help=False,  # the training script's own parser answers --help
    )
    ev = commands.add_parser(
        "evaluate",
        help="Reward scores, pairwise judging and plots, as in the CycleAlign paper.",
        description="Generate answers to HH-RLHF test prompts and score them.",
    )
    ev.add_argument("--model", required=True, help="Policy: a local folder or hub id.")
    ev.add_argument("--adapter", default=None, help="A LoRA adapter folder on top of --model.")
    ev.add_argument("--baseline", default=None, help="Second policy for pairwise judging.")
    ev.add_argument("--baseline_adapter", default=None)
    ev.add_argument("--dataset", default="Anthropic/hh-rlhf", help="Hub id or local folder.")
    ev.add_argument("--subsets", nargs="*", default=None)
    ev.add_argument("--split", default="test")
    ev.add_argument("--num_samples", type=int, default=100, help="Prompts, even per subset.")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max_completion_length", type=int, default=128)
    ev.add_argument(
        "--stop_strings",
        nargs="*",
        default=None,
        help="Answers end before the first of these, as in training (e.g. Human: Assistant: "
        "for a model without a chat template).",
    )
    ev.add_argument("--batch_size", type=int, default=8)
    ev.add_argument("--reward_model", default=None, help="AutoModelForSequenceClassification.")
    ev.add_argument("--judge_model", default=None, help="Judge model name on the server.")
    ev.add_argument("--judge_base_url", default=None, help="OpenAI-compatible endpoint.")
    ev.add_argument(
        "--judge_api_key_env",
        default="OPENAI_API_KEY",
        help="Environment variable holding the judge's API key (never the key itself).",
    )
    ev.add_argument("--judge_cache", default=None, help="SQLite cache of the judge's answers.")
    ev.add_argument("--training_run", default=None, help="A run's output_dir to plot.")
    ev.add_argument("--output_dir", default="eval")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.command == "train":
        from .scripts.train import main as train

        train(rest, prog="cyclealign train")
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "evaluate":
        from .evaluation.run import run_evaluation

        results = run_evaluation(args)
        print(results["markdown"])
        print(f"results: {Path(args.output_dir, 'results.json').resolve()}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
