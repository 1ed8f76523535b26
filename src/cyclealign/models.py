"""Turning a GGUF checkpoint into an ordinary, saveable transformers folder.

transformers can *load* a GGUF file (de-quantising it), but refuses to ``save_pretrained``
a model loaded that way, so a run could never write a checkpoint. We load once, rebuild the
model from its config, copy the weights in and save safetensors; later loads take well
under a second instead of ~35 s of de-quantisation.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

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
