"""Loading the white-box model from a path, and wrapping it with a PEFT adapter."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

__all__ = ["load_model_and_tokenizer", "wrap_with_peft"]

logger = logging.getLogger(__name__)


def load_model_and_tokenizer(model: Any, args: Any, processing_class: Any) -> tuple[Any, Any]:
    """The model (loaded when ``model`` is a path or hub id) and its tokenizer.

    ``args.model_init_kwargs`` go to ``from_pretrained``; a string ``dtype`` becomes the
    ``torch`` dtype. With ``gguf_file`` the checkpoint is first converted to safetensors
    under ``output_dir/gguf-safetensors`` (once; a GGUF-loaded model cannot be saved, so
    checkpoints would fail).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model, (str, os.PathLike)):
        path = str(model)
        kwargs = dict(args.model_init_kwargs or {})
        gguf_file = kwargs.pop("gguf_file", None)
        dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", None))
        if dtype is not None:
            kwargs["dtype"] = _torch_dtype(dtype)
        if gguf_file:
            from .models import materialize_gguf

            with args.main_process_first(desc="converting the GGUF checkpoint"):
                out = os.path.join(args.output_dir, "gguf-safetensors")
                path = str(materialize_gguf(path, gguf_file, out))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(path)
        return model, processing_class

    if args.model_init_kwargs:
        logger.warning("model_init_kwargs are ignored: the model passed is already loaded.")
    if processing_class is None:
        name = getattr(getattr(model, "config", None), "_name_or_path", "")
        try:
            processing_class = AutoTokenizer.from_pretrained(name)
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


def wrap_with_peft(model: Any, peft_config: Any, args: Any) -> Any:
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
