"""Building the colocated vLLM engine of :class:`~cyclealign.vllm_sampling.VLLMSampler`: its
settings, the folder it loads, TRL's ``VLLMGeneration`` around it, one engine per process.

Nothing here imports vLLM or TRL's vLLM code until an engine is built.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["CPU_KV_CACHE_BYTES", "engine_kwargs", "trl_generation"]

logger = logging.getLogger(__name__)

#: KV cache of a CPU engine when ``vllm_kv_cache_memory_bytes`` is None (on CPUs vLLM's
#: ``gpu_memory_utilization`` is a fraction of the machine's memory).
CPU_KV_CACHE_BYTES = 1 << 30

_ENGINES: dict[str, Any] = {}  # one engine per process and setting (see _engine)


def engine_kwargs(model: Any, tokenizer: Any, args: Any, accelerator: Any) -> dict[str, Any]:
    """What the engine is built with (``vllm.LLM`` keywords); once per sampler (saving a
    folder is collective: every process calls this)."""
    dtype = args.vllm_dtype
    if dtype == "auto":  # the training model's, not vLLM's "auto" (which halves fp32)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    max_len = args.vllm_max_model_length
    if max_len is None and args.max_prompt_length is not None:
        max_len = args.max_prompt_length + args.max_completion_length
    folder, load_format = _model_folder(model, tokenizer, args.output_dir, accelerator)
    kwargs: dict[str, Any] = {
        "model": folder,
        "load_format": load_format,
        "dtype": dtype,
        "max_model_len": max_len,
        "enforce_eager": args.vllm_enforce_eager,
        "distributed_executor_backend": "external_launcher",
        "seed": args.seed,  # per-request seeds (with the process index) vary the samples
        "max_num_batched_tokens": 4096,  # as TRL: vLLM's profiler is misled by more
        "tensor_parallel_size": 1,
    }
    tokenizer_dir = _tokenizer_folder(folder, tokenizer, args.output_dir, accelerator)
    if tokenizer_dir != kwargs["model"]:
        kwargs["tokenizer"] = tokenizer_dir
    if args.vllm_kv_cache_memory_bytes is not None:
        kwargs["kv_cache_memory_bytes"] = args.vllm_kv_cache_memory_bytes
    elif accelerator.device.type == "cpu":
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    else:
        kwargs["gpu_memory_utilization"] = args.vllm_gpu_memory_utilization
    return kwargs


def trl_generation(
    model: Any, accelerator: Any, tokenizer: Any, args: Any, kwargs: dict[str, Any]
) -> Any:
    """TRL's ``VLLMGeneration`` for the parameter iteration and the GPU sync, with our
    engine (built from ``kwargs``)."""
    from trl.generation.vllm_generation import VLLMGeneration

    class _Generation(VLLMGeneration):
        def _init_vllm(self) -> None:
            self.llm = _engine(kwargs, accelerator)
            self.accelerator.wait_for_everyone()

    return _Generation(
        model=model,
        accelerator=accelerator,
        processing_class=tokenizer,
        mode="colocate",
        gpu_memory_utilization=args.vllm_gpu_memory_utilization,
        max_model_length=args.vllm_max_model_length,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p or 0.0,
        repetition_penalty=args.repetition_penalty,
        max_completion_length=args.max_completion_length,
    )


def _model_folder(model: Any, tokenizer: Any, output_dir: str, accelerator: Any) -> tuple[str, str]:
    """The folder the engine is built from, and its ``load_format``: the model's own folder,
    else its config and tokenizer saved once into ``output_dir/vllm-model`` (by the main
    process; under ZeRO-3 the weights are shards) and random weights (vLLM's ``"dummy"``).
    Either way the first sync sends all the training weights."""
    path = str(getattr(model, "name_or_path", None) or "")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path, "auto"
    folder = os.path.join(output_dir, "vllm-model")
    if accelerator.is_local_main_process:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()
    return folder, "dummy"


def _tokenizer_folder(model_dir: str, tokenizer: Any, output_dir: str, accelerator: Any) -> str:
    """The model's folder when it holds the tokenizer, else the trainer's tokenizer saved."""
    if any(
        os.path.isfile(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer.model")
    ):
        return model_dir
    folder = os.path.join(output_dir, "vllm-tokenizer")
    if accelerator.is_local_main_process:
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()
    return folder


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _engine(kwargs: dict[str, Any], accelerator: Any) -> Any:
    """The process's engine for these settings, built on first use. vLLM engines are not
    freed reliably on CPUs, so a second trainer with the same settings (a notebook, a test
    session) reuses the first one; its first sync sends all of its own weights."""
    from trl.trainer.utils import ensure_master_addr_port

    key = json.dumps(kwargs, sort_keys=True, default=str)
    if key in _ENGINES:
        return _ENGINES[key]
    # vLLM's external launcher reads the process's place from the environment (as TRL sets).
    os.environ["RANK"] = str(accelerator.process_index)
    os.environ["LOCAL_RANK"] = str(accelerator.local_process_index)
    os.environ["WORLD_SIZE"] = str(accelerator.num_processes)
    ensure_master_addr_port()
    # On CPUs a colocated engine computes with the process's torch threads (vLLM's OpenMP
    # binding applies to its own worker processes only), and replaces torch.set_num_threads
    # with a no-op from here on.
    from vllm import LLM

    start = time.perf_counter()
    with _rng_untouched():  # vLLM seeds the global RNGs: the Trainer's shuffling must not move
        llm = LLM(**kwargs)
    logger.info("vLLM engine built in %.1f s: %s", time.perf_counter() - start, kwargs)
    _ENGINES[key] = llm
    return llm
