"""FSDP through accelerate: switching it on where accelerate silently does not (CPUs), full
parameters for sampling, and what FSDP1 needs for checkpoints.

accelerate 1.15 accepts an FSDP plugin only for GPU-like distributed types: launched on CPUs
(``ACCELERATE_USE_CPU=1``, distributed type ``MULTI_CPU``) with an FSDP config, it drops the
plugin without a word and trains with DDP. :func:`enable_fsdp_on_cpu` puts the plugin back
(FSDP2, or FSDP1 with sharded checkpoints) and refuses, with the reason, what cannot work
there. On GPUs accelerate takes the plugin itself and nothing here changes the setup.

See ``docs/trainer.md`` ("Distributed recipes") for the launch commands and the traps.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate.utils import DistributedType

__all__ = [
    "check_processes_joined",
    "cpu_fsdp_plugin",
    "enable_fsdp_on_cpu",
    "fsdp_version",
    "full_parameters_for_generation",
    "init_optimizer_state",
    "is_fsdp_wrapped",
    "refuse_evaluation_before_wrapping",
    "save_model_with_weights",
]

logger = logging.getLogger(__name__)


def fsdp_version(accelerator: Any) -> int | None:
    """1 or 2 when the accelerator runs FSDP, else None."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return None if plugin is None else int(plugin.fsdp_version)


def fsdp_requested(args: Any) -> bool:
    """FSDP asked for by the arguments (``fsdp``/``fsdp_config``) or by ``accelerate launch``
    with an FSDP config (which sets ``ACCELERATE_USE_FSDP`` and the ``FSDP_*`` variables)."""
    return bool(getattr(args, "fsdp_plugin_args", None)) or (
        os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    )


def check_processes_joined(world_size: int, num_processes: int) -> None:
    """The launcher started ``world_size`` processes; the accelerator must see all of them."""
    if world_size != num_processes:
        raise RuntimeError(
            f"FSDP was requested and the launcher started {world_size} processes, but this one "
            f"sees {num_processes} (accelerate found no distributed setup): every process would "
            "train its own unsharded copy. On a machine without GPUs, launch with "
            "ACCELERATE_USE_CPU=1 (for example `ACCELERATE_USE_CPU=1 accelerate launch "
            "--config_file examples/accelerate_configs/fsdp2_cpu.yaml train.py`)."
        )


def cpu_fsdp_plugin(plugin_args: dict | None) -> Any:
    """The FSDP plugin for a CPU run: from ``plugin_args`` (the Trainer's ``fsdp_config``) or,
    without them, from the ``FSDP_*`` variables ``accelerate launch`` sets. Refuses what FSDP
    cannot do on CPUs (observed with torch 2.13 and accelerate 1.15)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    try:
        plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    except RuntimeError as error:  # FSDP1's sync_module_states looks for a GPU
        raise ValueError(
            f"FSDP on CPUs: accelerate could not build the FSDP plugin ({error}). FSDP1 on CPUs "
            "needs fsdp_sync_module_states: false and fsdp_cpu_ram_efficient_loading: false; "
            "FSDP2 (fsdp_version: 2) needs neither."
        ) from error
    if int(plugin.fsdp_version) == 1 and "FULL_STATE_DICT" in str(plugin.state_dict_type):
        raise ValueError(
            "FSDP1 on CPUs cannot save checkpoints with fsdp_state_dict_type FULL_STATE_DICT: "
            "torch's FSDP1 full state dict crashes rank 0 with a segmentation fault there. Set "
            "fsdp_state_dict_type: SHARDED_STATE_DICT, or use FSDP2 (fsdp_version: 2), which "
            "saves both kinds (examples/accelerate_configs/fsdp2_cpu.yaml)."
        )
    return plugin


def enable_fsdp_on_cpu(trainer: Any) -> bool:
    """Call right after ``Trainer.create_accelerator_and_postprocess``: where FSDP was
    requested on CPUs, give accelerate back the FSDP plugin it dropped. Returns True if it did.

    accelerate's ``AcceleratorState`` copies ``PartialState``'s distributed type over its own
    on every construction, so both are switched to FSDP.
    """
    from accelerate.state import PartialState

    state = trainer.accelerator.state
    if not fsdp_requested(trainer.args) or state.distributed_type == DistributedType.FSDP:
        return False  # not asked for, or accelerate took the plugin itself (GPUs)
    check_processes_joined(int(os.environ.get("WORLD_SIZE", "1")), state.num_processes)
    if state.distributed_type != DistributedType.MULTI_CPU:
        logger.warning(
            "FSDP was requested, but accelerate runs with distributed type %s: the model is "
            "not sharded. On a machine without GPUs, launch with ACCELERATE_USE_CPU=1.",
            state.distributed_type,
        )
        return False
    plugin = cpu_fsdp_plugin(trainer.args.fsdp_plugin_args)
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    if plugin.fsdp_version == 1:
        # MULTI_CPU's device is cpu:0; FSDP1 compares it with torch.device("cpu") and raises
        # "Inconsistent compute device and `device_id`".
        PartialState._shared_state["device"] = torch.device("cpu")
        state.device = torch.device("cpu")
    trainer.is_fsdp_enabled = True
    # The Trainer's own FSDP checks ran before FSDP was on: the same two, now.
    # transformers >= 5.24 names it activation_checkpointing; older ones gradient_checkpointing.
    checkpointing = getattr(trainer.args, "activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = trainer.args.gradient_checkpointing
    if plugin.activation_checkpointing and checkpointing:
        raise ValueError(
            "fsdp_activation_checkpointing (FSDP's own) and activation_checkpointing (or its "
            "old name gradient_checkpointing) cannot both be on: use one of them."
        )
    if trainer.args.save_only_model and "SHARDED_STATE_DICT" in str(plugin.state_dict_type):
        raise ValueError(
            "save_only_model does not work with fsdp_state_dict_type SHARDED_STATE_DICT: set "
            "save_only_model=False or use FULL_STATE_DICT (FSDP2)."
        )
    return True


def is_fsdp_wrapped(model: torch.nn.Module) -> bool:
    """Whether ``model`` is already sharded (FSDP1 wrapper or FSDP2 modules)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return isinstance(model, FSDP) or any(isinstance(m, FSDPModule) for m in model.modules())


def refuse_evaluation_before_wrapping(trainer: Any) -> None:
    """accelerate shards the model together with its optimizer, in ``train()``; evaluating
    first fails in accelerate (FSDP2) or breaks the later ``train()`` (FSDP1)."""
    if trainer.is_fsdp_enabled and not is_fsdp_wrapped(trainer.model):
        raise RuntimeError(
            "Under FSDP the model is sharded in train(), together with its optimizer, so "
            "evaluate() cannot run before train(). To evaluate the initial model, set "
            "eval_on_start=True (train() evaluates it once sharded), or evaluate without FSDP."
        )


@contextlib.contextmanager
def full_parameters_for_generation(model: torch.nn.Module, accelerator: Any) -> Iterator[None]:
    """Full parameters for ``generate`` inside the block, sharded again after it.

    FSDP1: the root unit's parameters are summoned (as in TRL's online trainers); the inner
    units gather in their own forward. FSDP2: every unit is gathered once up front and kept
    whole through all the decoding steps (instead of one all-gather per unit per token), then
    resharded. Without FSDP: nothing.
    """
    version = fsdp_version(accelerator)
    if version is None:
        yield
        return
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, recurse=False, writeback=False):
            yield
        return
    reshard = getattr(accelerator.state.fsdp_plugin, "reshard_after_forward", None)
    if not isinstance(reshard, bool):
        yield  # FSDP2 with a partial reshard (int): the units' own hooks gather
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    handles = [unit.unshard(async_op=True) for unit in units]
    for handle in handles:
        if handle is not None:
            handle.wait()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard, recurse=False)


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give a never-stepped optimizer its per-parameter state, changing no parameter.

    Before an FSDP1 sharded resume: accelerate loads the optimizer into a template taken from
    the optimizer itself, and a never-stepped one has no state to fill, so Adam's moments were
    silently not restored (the resumed run drifted by ~3e-3). A step with learning rate 0 and
    zero gradients creates the state (as torch's own FSDP2 loading path does); the checkpoint
    then overwrites it.
    """
    if optimizer.state:
        return
    learning_rates = [group["lr"] for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, learning_rates):
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def save_model_with_weights(trainer: Any, output_dir: str, save: Callable[[], None]) -> None:
    """Run ``save`` (``Trainer.save_model``), making sure it writes the weights.

    Under ``SHARDED_STATE_DICT`` the Trainer's ``save_model`` writes nothing at all under FSDP.
    Here it gathers a full state dict for the save instead (checkpoints stay sharded). FSDP1 on
    CPUs cannot gather one (a segmentation fault): the sharded weights are written to
    ``output_dir/pytorch_model_fsdp_0`` with the config and tokenizer, for
    ``accelerate merge-weights``.
    """
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if plugin is None or "FULL_STATE_DICT" in str(plugin.state_dict_type):
        save()
        return
    if plugin.fsdp_version == 1 and trainer.accelerator.device.type == "cpu":
        from accelerate.utils import save_fsdp_model

        save()
        save_fsdp_model(plugin, trainer.accelerator, trainer.model, output_dir)
        if trainer.args.should_save:
            trainer.accelerator.unwrap_model(trainer.model).config.save_pretrained(output_dir)
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(output_dir)
        logger.warning(
            "FSDP1 on CPUs cannot gather full weights: save_model wrote them sharded to "
            "%s/pytorch_model_fsdp_0. `accelerate merge-weights %s/pytorch_model_fsdp_0 %s` "
            "writes model.safetensors next to the config (FSDP2 saves full weights itself).",
            output_dir,
            output_dir,
            output_dir,
        )
        return
    saved = (plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config)
    plugin.set_state_dict_type("FULL_STATE_DICT")
    try:
        save()
    finally:
        plugin.state_dict_type, plugin.state_dict_config, plugin.optim_state_dict_config = saved
