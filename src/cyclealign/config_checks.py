"""The checks of :class:`~cyclealign.CycleAlignConfig`'s values (run by its ``__post_init__``
and again when a trainer starts): each error says what was wrong and what to do."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import CycleAlignConfig

__all__ = ["CHOICES", "deepspeed_without_accelerator", "parse_dict", "validate_config"]

CHOICES = {
    "vllm_mode": ("colocate",),
    "vllm_dtype": ("auto", "float32", "bfloat16", "float16"),
    "ranker_failure_policy": ("skip", "whitebox"),
    "reward_from_ranking": ("linear", "scores"),
    "demonstration_selection": ("recent", "similar"),
    "invalid_rows": ("drop", "error"),
    "better_response_as": ("sft_target", "candidate"),
}


def validate_config(args: CycleAlignConfig) -> None:
    """Raise ``ValueError`` naming the first field whose value cannot work."""
    if args.gradient_accumulation_steps != 1:
        raise ValueError(
            f"CycleAlignConfig: gradient_accumulation_steps must be 1, got "
            f"{args.gradient_accumulation_steps}. Each training step runs up to max_rounds "
            "rounds that update the weights in between, so gradients accumulated across "
            "micro-batches would come from different models. Raise "
            "per_device_train_batch_size instead."
        )
    _check_int("num_generations", args.num_generations, 2, "a ranking needs two responses")
    _check_int("max_rounds", args.max_rounds, 1, "at least one round per step")
    _check_int("max_completion_length", args.max_completion_length, 1, "responses need a token")
    if args.max_demonstrations is not None:
        _check_int("max_demonstrations", args.max_demonstrations, 0, "0 sends none")
    _check_int("demonstration_pool_size", args.demonstration_pool_size, 1, "")
    if args.max_failed_steps is not None:
        _check_int("max_failed_steps", args.max_failed_steps, 1, "or None to never stop")
    if args.num_completions_to_print is not None:
        _check_int("num_completions_to_print", args.num_completions_to_print, 0, "or None")
    for name in ("max_prompt_length", "scoring_batch_size", "demonstration_max_tokens"):
        if getattr(args, name) is not None:
            _check_int(name, getattr(args, name), 1, "or None for no limit")
    if args.demonstration_max_tokens is None and args.max_demonstrations is None:
        raise ValueError(
            "CycleAlignConfig: demonstration_max_tokens and max_demonstrations are both None, "
            "so every ranking request would carry the whole demonstration pool "
            f"(up to demonstration_pool_size={args.demonstration_pool_size}). Set a token "
            "budget (demonstration_max_tokens, default 4096) or a cap (max_demonstrations)."
        )
    if not args.temperature > 0:
        raise ValueError(
            f"CycleAlignConfig: temperature must be > 0 (responses are sampled), got "
            f"{args.temperature}. For near-greedy sampling use a small value such as 0.1."
        )
    if not 0 < args.top_p <= 1:
        raise ValueError(
            f"CycleAlignConfig: top_p must be in (0, 1], got {args.top_p}. Use 1.0 to disable "
            "nucleus sampling."
        )
    _check_int("top_k", args.top_k, 0, "0 disables top-k filtering")
    if args.min_p is not None and not 0 <= args.min_p <= 1:
        raise ValueError(
            f"CycleAlignConfig: min_p must be in [0, 1] or None, got {args.min_p}. Typical "
            "values are 0.01-0.2; None disables it."
        )
    if not args.repetition_penalty > 0:
        raise ValueError(
            f"CycleAlignConfig: repetition_penalty must be > 0, got "
            f"{args.repetition_penalty}. Use 1.0 to disable it."
        )
    deadline = args.ranking_deadline
    if deadline is not None and (
        isinstance(deadline, bool)
        or not isinstance(deadline, (int, float))
        or not 0 < deadline < float("inf")
    ):
        raise ValueError(
            f"CycleAlignConfig: ranking_deadline must be a number of seconds > 0 or None (the "
            f"ranker's own bound), got {deadline!r}."
        )
    if args.stop_strings is not None and (
        isinstance(args.stop_strings, str)
        or not all(isinstance(x, str) and x for x in args.stop_strings)
    ):
        raise ValueError(
            f"CycleAlignConfig: stop_strings must be a list of non-empty strings such as "
            f"['Human:', 'Assistant:'], or None, got {args.stop_strings!r}."
        )
    for name, choices in CHOICES.items():
        if getattr(args, name) not in choices:
            raise ValueError(
                f"CycleAlignConfig: {name} must be one of {list(choices)}, got "
                f"{getattr(args, name)!r}."
            )
    if args.use_vllm:
        _validate_vllm_fields(args)
    from .losses import get_ranking_loss

    try:  # build it once so a bad name or keyword fails here, not at the first step
        get_ranking_loss(args.ranking_loss, **(args.ranking_loss_kwargs or {}))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"CycleAlignConfig: ranking_loss={args.ranking_loss!r} with ranking_loss_kwargs="
            f"{args.ranking_loss_kwargs!r} cannot be built: {err}"
        ) from err


def _validate_vllm_fields(args: CycleAlignConfig) -> None:
    from .vllm_sampling import unmappable_generation_kwargs

    if not 0 < args.vllm_gpu_memory_utilization <= 1:
        raise ValueError(
            "CycleAlignConfig: vllm_gpu_memory_utilization must be in (0, 1], got "
            f"{args.vllm_gpu_memory_utilization}."
        )
    for name in ("vllm_max_model_length", "vllm_kv_cache_memory_bytes"):
        if getattr(args, name) is not None:
            _check_int(name, getattr(args, name), 1, "or None")
    unmapped = unmappable_generation_kwargs(args.generation_kwargs)
    if unmapped:
        raise ValueError(
            f"CycleAlignConfig: use_vllm=True cannot honour generation_kwargs {unmapped}: vLLM's "
            "sampling has no counterpart for them (it maps temperature, top_p, top_k, min_p, "
            "repetition_penalty, max_new_tokens, min_new_tokens, stop_strings and "
            "do_sample=False). Remove them, or sample with transformers (use_vllm=False)."
        )
    if args.fsdp:
        raise ValueError(
            "CycleAlignConfig: use_vllm=True does not support FSDP yet (the weight sync "
            "gathers DDP and DeepSpeed models). Use DeepSpeed ZeRO-3, or use_vllm=False."
        )


def parse_dict(name: str, value: Any) -> dict | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"CycleAlignConfig: {name} must be a dict or a JSON object string such as "
                f"'{{\"key\": 1}}', got {value!r} ({err.msg})."
            ) from None
        if isinstance(parsed, dict):
            return parsed
    raise ValueError(
        f"CycleAlignConfig: {name} must be a dict or a JSON object string such as "
        f"'{{\"key\": 1}}', got {value!r}."
    )


def _check_int(name: str, value: Any, minimum: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = f" ({why})" if why else ""
        raise ValueError(
            f"CycleAlignConfig: {name} must be an integer >= {minimum}{hint}, got {value!r}."
        )


def deepspeed_without_accelerator(deepspeed: Any) -> bool:
    """DeepSpeed asked for (a config, or ``accelerate launch`` with a DeepSpeed config) on a
    machine with no accelerator torch can use."""
    requested = bool(deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if not requested:
        return False
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return not accelerator.is_available()
    return not torch.cuda.is_available()
