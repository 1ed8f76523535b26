"""Sampling a round's candidates with a colocated vLLM engine (``use_vllm=True``).

The engine runs in the training process (TRL's ``vllm_mode="colocate"``:
``distributed_executor_backend="external_launcher"``, one engine per process, each sampling
its own prompts) and samples from the weights of the latest update: the trainer marks it
stale after every update and :meth:`VLLMSampler.sync` sends, before the next round samples,
what can have changed (the trainable parameters, with the other shards of the weights vLLM
fuses with them; everything on the first sync).

What comes from TRL's :class:`~trl.generation.vllm_generation.VLLMGeneration`: the parameter
iteration, which merges a PEFT adapter for the sync and gathers ZeRO-3 shards, and the GPU
sync (``load_weights``). What is ours: the engine (:mod:`cyclealign.vllm_engine`: dtype, KV
cache, eager mode, one engine per process whoever asks), the CPU sync, and the sampling. On
CPUs vLLM packs each linear weight into a oneDNN handle and empties ``layer.weight``, so
``load_weights`` cannot write there; ``reload_weights(is_checkpoint_format=True)`` redoes the
packing for the layers it receives, and a tied LM head, packed from the embedding, is packed
again when the embedding changed.

Responses end exactly as on the transformers path: the engine's token ids go through
:func:`cyclealign.sampling.end_responses` (EOS, stop strings, the length limit) and
:func:`cyclealign.sampling.collapse_responses`, so a round gets the same
:class:`~cyclealign.sampling.Candidates`. The white-box ranking and the loss still come from
the training model's own forward pass.

Nothing here imports vLLM or TRL's vLLM code until an engine is built.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .sampling import Candidates, collapse_responses, end_responses
from .vllm_engine import engine_kwargs, trl_generation

__all__ = ["VLLMSampler", "sampling_params_kwargs", "unmappable_generation_kwargs"]

#: ``generation_kwargs`` keys and the ``SamplingParams`` field each one sets.
GENERATION_TO_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
    "min_new_tokens": "min_tokens",
    "stop_strings": "stop",
}
#: Keys that need no counterpart: the engine is told the EOS ids, and samples.
_IGNORED = {"pad_token_id", "eos_token_id", "bos_token_id", "use_cache"}


def unmappable_generation_kwargs(generation_kwargs: dict[str, Any] | None) -> list[str]:
    """The ``generation_kwargs`` keys vLLM's sampling has no counterpart for."""
    keys = set(generation_kwargs or {}) - set(GENERATION_TO_SAMPLING) - _IGNORED
    if (generation_kwargs or {}).get("do_sample", True) is not False:
        keys.discard("do_sample")  # do_sample=True is what the engine does anyway
    if (generation_kwargs or {}).get("num_beams", 1) == 1:
        keys.discard("num_beams")
    return sorted(keys)


def sampling_params_kwargs(args: Any, eos_token_ids: Sequence[int]) -> dict[str, Any]:
    """``SamplingParams`` keywords equivalent to the transformers path's ``GenerationConfig``
    (:func:`cyclealign.sampling.sampling_config`): the config's sampling fields, overridden key
    by key by ``generation_kwargs``; the seed is set per request by :meth:`VLLMSampler.sample`."""
    kwargs: dict[str, Any] = {
        "n": args.num_generations,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,  # 0 is off for both
        "min_p": 0.0 if args.min_p is None else args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "max_tokens": args.max_completion_length,
        "stop": list(args.stop_strings or []),
    }
    for key, value in (args.generation_kwargs or {}).items():
        if key in GENERATION_TO_SAMPLING:
            if key == "stop_strings":
                value = [value] if isinstance(value, str) else list(value or [])
            if key == "min_p" and value is None:
                value = 0.0
            kwargs[GENERATION_TO_SAMPLING[key]] = value
    if (args.generation_kwargs or {}).get("do_sample") is False:
        kwargs["temperature"] = 0.0  # greedy, as generate(do_sample=False)
    # The token ids are what counts: the responses end (EOS, stop strings) in end_responses,
    # with the stop string's tokens still there to cut, as transformers leaves them.
    kwargs["stop_token_ids"] = [int(i) for i in eos_token_ids]
    kwargs["include_stop_str_in_output"] = True
    return kwargs


def request_seed(*parts: Any) -> int:
    """A request's sampling seed from what identifies it (reproducible, resume included)."""
    blob = json.dumps(parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") & 0x7FFFFFFF


class VLLMSampler:
    """A colocated vLLM engine that samples a round's candidates.

    Args:
        model: the training model (PEFT and ZeRO-3 models included), unwrapped.
        accelerator: the trainer's accelerator.
        tokenizer: the trainer's tokenizer (decodes the responses, as on the transformers
            path).
        args: the :class:`~cyclealign.CycleAlignConfig` (sampling and ``vllm_*`` fields).
        eos_token_ids: the tokens that end a response, the tokenizer's EOS first.
    """

    def __init__(
        self, model: Any, accelerator: Any, tokenizer: Any, args: Any, eos_token_ids: Sequence[int]
    ) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ImportError(
                "use_vllm=True needs vLLM: on GPUs pip install 'cyclealign[vllm]'; on CPUs vLLM "
                "runs in an environment of its own, built by scripts/vllm-env.sh (see "
                "docs/trainer.md)."
            )
        self.model = model
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.args = args
        self.eos_token_ids = [int(i) for i in eos_token_ids]
        self.on_cpu = accelerator.device.type == "cpu"
        self.stale = True  # the first sync sends everything: the engine loaded a folder
        self._synced_once = False
        self._calls = 0
        self._step = -1
        self.last_sync_seconds = 0.0
        self.last_sync_tensors = 0
        _check_sampling(args, self.eos_token_ids)  # before the engine: vLLM's own limits
        self.engine_kwargs = engine_kwargs(model, tokenizer, args, accelerator)
        self._generation = trl_generation(model, accelerator, tokenizer, args, self.engine_kwargs)
        self.llm = self._generation.llm
        self._changed = changed_parameter_names(model, _packed_modules(self.vllm_model()))

    # -- the engine ----------------------------------------------------------------------------

    def vllm_model(self) -> torch.nn.Module:
        """The engine's own model (its vLLM implementation, in this process)."""
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.get_model()

    # -- weights -------------------------------------------------------------------------------

    def mark_stale(self) -> None:
        """The training weights changed (an update): sync before the next sample."""
        self.stale = True

    def resync_all(self) -> None:
        """Any weight may have changed outside an update (``train()`` loading a checkpoint,
        say): the next sync sends everything."""
        self.stale, self._synced_once = True, False

    def sync(self) -> bool:
        """Send the weights that can have changed since the last sync, if any did. A
        collective under ZeRO-3 (every process syncs, at the same rounds). Returns whether
        anything was sent; :attr:`last_sync_seconds` and :attr:`last_sync_tensors` say what
        it cost."""
        if not self.stale:
            return False
        start = time.perf_counter()
        names = None if not self._synced_once else self._changed
        sent: list[str] = []

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in self._iter_weights(names):
                sent.append(name)
                yield name, tensor

        if self.on_cpu:
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": weights(), "is_checkpoint_format": True},
            )
            self._repack_tied_head(sent)
        else:  # TRL's colocate sync
            runner_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
            for name, tensor in weights():
                runner_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()
        self.stale = False
        self._synced_once = True
        self.last_sync_seconds = time.perf_counter() - start
        self.last_sync_tensors = len(sent)
        return True

    def _iter_weights(self, names: set[str] | None) -> Iterator[tuple[str, torch.Tensor]]:
        """``(vLLM name, tensor)`` of the parameters in ``names`` (``None``: all), gathered
        under ZeRO-3. A partial layer is buffered by ``reload_weights`` until its fused
        shards arrive, so gathered tensors are copied before their shards are released."""
        generation = self._generation
        zero3 = generation._dist.is_zero3
        peft = hasattr(self.model, "peft_config")
        if names is None or peft or generation._dist.is_fsdp:
            for name, tensor in generation._iter_named_params():  # PEFT merge, FSDP, ZeRO-3
                if names is None or name in names:
                    yield name, (tensor.detach().clone() if zero3 or peft else tensor.detach())
            return
        for raw, param in self.model.named_parameters():  # gather only what is sent
            name = generation._fix_param_name_to_vllm(raw)
            if name not in names:
                continue
            with generation._dist.gather_params([param]):
                yield name, (param.data.clone() if zero3 else param.data)

    def _repack_tied_head(self, sent: Sequence[str]) -> None:
        """On CPUs the LM head's GEMM is packed from the weight at load time; a head tied to
        the embedding shares the updated tensor but keeps the old packing."""
        vllm_model = self.vllm_model()
        head = getattr(vllm_model, "lm_head", None)
        embed = getattr(getattr(vllm_model, "model", None), "embed_tokens", None)
        if head is None or embed is None or head.weight is not embed.weight:
            return
        if not any(name.endswith("embed_tokens.weight") for name in sent):
            return
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(head, remove_weight=False)

    # -- sampling ------------------------------------------------------------------------------

    def sample(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, step: int) -> Candidates:
        """``num_generations`` responses per prompt of the left-padded batch, as
        :class:`~cyclealign.sampling.Candidates`. Request seeds derive from the config's
        seed, the process, ``step`` and the call's place in the step."""
        from vllm import SamplingParams

        if step != self._step:
            self._step, self._calls = step, 0
        self._calls += 1
        base = sampling_params_kwargs(self.args, self.eos_token_ids)
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        params = [
            SamplingParams(
                **base,
                seed=request_seed(
                    self.args.seed, self.accelerator.process_index, step, self._calls, b
                ),
            )
            for b in range(len(rows))
        ]
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in rows], sampling_params=params, use_tqdm=False
        )
        completions = [list(c.token_ids) for out in outputs for c in out.outputs]
        n = base["n"]
        if len(completions) != n * len(rows):
            raise RuntimeError(
                f"vLLM returned {len(completions)} completions for {len(rows)} prompts x {n}."
            )
        ended = end_responses(
            completions,
            tokenizer=self.tokenizer,
            eos_token_ids=self.eos_token_ids,
            stop_strings=base["stop"],
        )
        return collapse_responses(prompt_ids, prompt_mask, ended, n, self.eos_token_ids)

    def greedy(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        """Greedy completions of unpadded prompts with the engine's current weights (EOS
        included where one ended), for checks against ``generate(do_sample=False)``."""
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=0.0, max_tokens=max_tokens, stop_token_ids=self.eos_token_ids
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts], sampling_params=params, use_tqdm=False
        )
        return [list(out.outputs[0].token_ids) for out in outputs]


def _check_sampling(args: Any, eos_token_ids: Sequence[int]) -> None:
    from vllm import SamplingParams

    try:  # vLLM 0.32's own error type; older versions raise ValueError
        from vllm.exceptions import VLLMValidationError as refused
    except ImportError:
        refused = ValueError
    kwargs = sampling_params_kwargs(args, eos_token_ids)
    try:
        SamplingParams(**kwargs, seed=0)
    except (refused, ValueError, TypeError) as err:
        raise ValueError(
            f"use_vllm=True: vLLM refuses these sampling settings ({err}). Change them, or "
            "sample with transformers (use_vllm=False)."
        ) from None


def changed_parameter_names(model: Any, packed: dict[str, list[str]]) -> set[str]:
    """The vLLM names of the weights an update can change: the trainable parameters (for a
    PEFT model, the base weights of the adapted modules, merged for the sync), widened to
    whole layers, since vLLM rebuilds a layer from all of its tensors or leaves it as it
    was: every tensor of a changed module (a weight's bias), and of the modules vLLM fuses
    with it (``packed``: ``{"qkv_proj": ["q_proj", "k_proj", "v_proj"], ...}``)."""
    peft = hasattr(model, "peft_config")
    every: dict[str, str] = {}  # vLLM name -> its module
    changed: set[str] = set()  # modules
    for raw, param in model.named_parameters():
        name = raw.removeprefix("base_model.model.").replace(".base_layer", "") if peft else raw
        name = name.replace("_checkpoint_wrapped_module.", "")
        name = name.replace("modules_to_save.default.", "")
        if ".lora_" in name:  # an adapter: its base layer changes when merged
            changed.add(name.split(".lora_")[0])
            continue
        if "original_module" in name:
            continue
        module = name.rpartition(".")[0]
        every[name] = module
        if param.requires_grad:
            changed.add(module)
    for module in list(changed):
        parent, _, child = module.rpartition(".")
        for shards in packed.values():
            if child in shards:
                changed.update(f"{parent}.{shard}" for shard in shards)
    return {name for name, module in every.items() if module in changed}


def _packed_modules(vllm_model: Any) -> dict[str, list[str]]:
    return dict(getattr(vllm_model, "packed_modules_mapping", {}) or {})
