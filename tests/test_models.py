"""Loading the white-box model from a path and wrapping it with PEFT."""

from __future__ import annotations

from types import SimpleNamespace

import peft
import pytest
import torch

from cyclealign.models import disable_dropout, load_model_and_tokenizer, wrap_with_peft
from helpers import build_tiny_model


def test_path_with_string_dtype_loads_model_and_tokenizer(tiny_model_dir):
    args = SimpleNamespace(model_init_kwargs={"dtype": "bfloat16"})
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), args, None)
    assert model.dtype == torch.bfloat16
    assert tokenizer.eos_token == "<|im_end|>"


def test_quantization_config_and_revision_reach_from_pretrained(tiny_model_dir, monkeypatch):
    # bitsandbytes needs a GPU: record what from_pretrained is given instead of loading 4-bit.
    import transformers
    from transformers import BitsAndBytesConfig

    calls = []
    for auto in ("AutoModelForCausalLM", "AutoTokenizer"):
        real = getattr(transformers, auto).from_pretrained

        def record(path, *a, _real=real, _auto=auto, **kwargs):
            calls.append((_auto, dict(kwargs)))
            kwargs.pop("quantization_config", None)
            return _real(path, *a, **kwargs)

        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", record)
    quantized = BitsAndBytesConfig(load_in_4bit=True)
    args = SimpleNamespace(model_init_kwargs={"revision": "v1"}, trust_remote_code=False)
    load_model_and_tokenizer(str(tiny_model_dir), args, None, quantization_config=quantized)
    (_, model_kwargs), (_, tokenizer_kwargs) = calls
    assert model_kwargs["quantization_config"] is quantized
    assert model_kwargs["revision"] == tokenizer_kwargs["revision"] == "v1"
    assert model_kwargs["trust_remote_code"] is tokenizer_kwargs["trust_remote_code"] is False
    both = SimpleNamespace(model_init_kwargs={"quantization_config": {}}, trust_remote_code=False)
    with pytest.raises(ValueError, match="set it in one place"):
        load_model_and_tokenizer(str(tiny_model_dir), both, None, quantization_config=quantized)


def test_bad_dtype_and_missing_tokenizer_are_explained(tiny_model_dir, tiny_tokenizer):
    with pytest.raises(ValueError, match="torch dtype name such as 'bfloat16'"):
        load_model_and_tokenizer(
            str(tiny_model_dir), SimpleNamespace(model_init_kwargs={"dtype": "float99"}), None
        )
    with pytest.raises(ValueError, match="pass processing_class"):
        load_model_and_tokenizer(
            build_tiny_model(tiny_tokenizer), SimpleNamespace(model_init_kwargs=None), None
        )


def test_peft_wrapping_checks(tiny_tokenizer):
    args = SimpleNamespace(gradient_checkpointing=False)
    with pytest.raises(TypeError, match=r"peft\.PeftConfig"):
        wrap_with_peft(build_tiny_model(tiny_tokenizer), {"r": 4}, args)
    config = peft.LoraConfig(r=2, target_modules=["q_proj"])
    wrapped = wrap_with_peft(build_tiny_model(tiny_tokenizer), config, args)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with pytest.raises(ValueError, match="merge_and_unload"):
        wrap_with_peft(wrapped, config, args)


def test_disable_dropout_makes_training_mode_forwards_deterministic(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer, attention_dropout=0.5)
    config = peft.LoraConfig(
        r=2, lora_dropout=0.3, target_modules=["q_proj"], init_lora_weights=False
    )
    model = wrap_with_peft(model, config, SimpleNamespace(gradient_checkpointing=False))
    model.train()
    ids = tiny_tokenizer(["hello world one two three"], return_tensors="pt")["input_ids"]

    def logits():
        torch.manual_seed(len(ids[0]))  # no effect on the result unless dropout samples
        first = model(input_ids=ids).logits
        return first, model(input_ids=ids).logits

    first, second = logits()
    assert not torch.equal(first, second)  # dropout: the ranking's log-probs would be noise
    # Two attention layers (functional dropout) and two LoRA dropout modules.
    assert disable_dropout(model) == 4
    first, second = logits()
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(model(input_ids=ids).logits, first)
    assert disable_dropout(model) == 0
