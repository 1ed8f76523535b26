"""The white-box model and other models: loading from a path (GGUF included), PEFT adapters,
dropout, and loading frozen helper models whole under DeepSpeed ZeRO-3.

transformers can *load* a GGUF file (de-quantising it), but refuses to ``save_pretrained``
a model loaded that way, so a run could never write a checkpoint: :func:`materialize_gguf`
loads once, rebuilds the model from its config, copies the weights in and saves safetensors;
later loads take well under a second instead of ~35 s of de-quantisation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .config import CycleAlignConfig

__all__ = [
    "disable_dropout",
    "load_model_and_tokenizer",
    "materialize_gguf",
    "outside_zero3",
    "wrap_with_peft",
]

logger = logging.getLogger(__name__)

_MARKER = "cyclealign_gguf_source.json"
_FORMAT = 2  # bump when the conversion changes, so old conversions are redone


def materialize_gguf(gguf_dir: str | Path, gguf_file: str, out_dir: str | Path) -> Path:
    """Save the model and tokenizer in ``gguf_dir/gguf_file`` as a safetensors folder.

    Idempotent: when ``out_dir`` already holds a conversion of the same file (same size
    and modification time), it is returned untouched.

    Args:
        gguf_dir: folder holding the ``.gguf`` file.
        gguf_file: the file's name inside ``gguf_dir``.
        out_dir: where the converted folder goes (created if missing).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`, loadable with ``from_pretrained``.
    """
    source = Path(gguf_dir) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(
            f"No GGUF file at {source}. Pass the folder that holds it and the file's name."
        )
    out = Path(out_dir)
    stat = source.stat()
    fingerprint = {
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime": stat.st_mtime,
        "format": _FORMAT,
    }
    marker = out / _MARKER
    if marker.is_file() and json.loads(marker.read_text()) == fingerprint:
        return out

    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to safetensors in %s (once; takes ~35 s on a CPU)", source, out)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    # A fresh model from the same config is not tagged as GGUF-loaded, so it can be saved.
    config = loaded.config
    # The weights are de-quantised fp32 now; a leftover GGUF quantization_config would make
    # transformers treat the saved model as quantised (and refuse to fine-tune it).
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Written last: a conversion cut short is redone next time.
    marker.write_text(json.dumps(fingerprint))
    return out


@contextlib.contextmanager
def outside_zero3() -> Iterator[None]:
    """Load models inside this block as ordinary, whole models even under DeepSpeed ZeRO-3.

    Once ``TrainingArguments`` with a ZeRO-3 config exist, every ``from_pretrained`` is
    partitioned across processes (``zero.Init``). That is right for the model being trained
    (the engine gathers its weights) and wrong for a frozen helper model such as a local
    ranker or a reloaded checkpoint, whose weights would stay empty shards.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def load_model_and_tokenizer(
    model: Any, args: CycleAlignConfig, processing_class: Any, quantization_config: Any = None
) -> tuple[Any, Any]:
    """The model (loaded when ``model`` is a path or hub id) and its tokenizer.

    ``args.model_init_kwargs`` go to ``from_pretrained``; a string ``dtype`` becomes the
    ``torch`` dtype, ``trust_remote_code`` defaults to ``args.trust_remote_code`` and
    ``quantization_config`` (TRL's ``get_quantization_config``) is added, as TRL's trainers do.
    The tokenizer is loaded with the same ``revision`` and ``trust_remote_code``. With
    ``gguf_file`` the checkpoint is first converted to safetensors under
    ``output_dir/gguf-safetensors`` (once; a GGUF-loaded model cannot be saved, so checkpoints
    would fail).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            if "quantization_config" in kwargs:
                raise ValueError(
                    "quantization_config was given both to the trainer and in "
                    "args.model_init_kwargs; set it in one place (the trainer argument)."
                )
            kwargs["quantization_config"] = quantization_config
        kwargs.setdefault("trust_remote_code", getattr(args, "trust_remote_code", False))
        gguf_file = kwargs.pop("gguf_file", None)
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        if dtype is not None:
            kwargs["dtype"] = _torch_dtype(dtype)
        if gguf_file:
            with args.main_process_first(desc="converting the GGUF checkpoint"):
                out = os.path.join(args.output_dir, "gguf-safetensors")
                path = str(materialize_gguf(path, gguf_file, out))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(
                path,
                revision=None if gguf_file else kwargs.get("revision"),
                trust_remote_code=kwargs["trust_remote_code"],
            )
        return model, processing_class

    if args.model_init_kwargs:
        logger.warning("model_init_kwargs are ignored: the model passed is already loaded.")
    if quantization_config is not None:
        logger.warning("quantization_config is ignored: the model passed is already loaded.")
    if processing_class is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", "")
        try:
            processing_class = AutoTokenizer.from_pretrained(
                name, trust_remote_code=getattr(args, "trust_remote_code", False)
            )
        except Exception as err:
            raise ValueError(
                "CycleAlignTrainer: pass processing_class (the tokenizer) when model is an "
                f"already loaded model; loading one from {name!r} failed ({err})."
            ) from None
    return model, processing_class


def _torch_dtype(dtype: Any) -> Any:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"model_init_kwargs: dtype must be 'auto' or a torch dtype name such as 'bfloat16' "
            f"or 'float32', got {dtype!r}."
        )
    return value


def wrap_with_peft(model: Any, peft_config: Any, args: CycleAlignConfig) -> Any:
    """``peft.get_peft_model(model, peft_config)``; only the adapter's weights will train."""
    try:
        import peft
    except ImportError:
        raise ImportError(
            "peft_config needs the peft library: pip install peft (or cyclealign[peft])."
        ) from None
    if not isinstance(peft_config, peft.PeftConfig):
        raise TypeError(
            "peft_config must be a peft.PeftConfig (for example peft.LoraConfig(...)), got "
            f"{type(peft_config).__name__}."
        )
    if isinstance(model, peft.PeftModel):
        raise ValueError(
            "The model already has a PEFT adapter and a peft_config was passed too. Merge and "
            "unload the adapter first (model.merge_and_unload()), or pass no peft_config to "
            "train the existing adapter."
        )
    model = peft.get_peft_model(model, peft_config)
    if args.gradient_checkpointing:
        # With frozen embeddings, checkpointed blocks would see inputs without grad and
        # the adapter would get no gradient.
        model.enable_input_require_grads()
    return model


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in ``model`` to 0; returns how many were non-zero.

    ``nn.Dropout`` modules (GPT-2's, LoRA's) get ``p = 0``. Attention layers that apply
    dropout functionally read a float attribute instead (``attention_dropout`` in LLaMA,
    Qwen, Mistral, ...), which ``model.eval()`` would hide but training mode uses.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p != 0
            module.p = 0.0
        value = getattr(module, "attention_dropout", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            changed += value != 0
            module.attention_dropout = 0.0
    return int(changed)
