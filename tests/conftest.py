"""Shared fixtures: tiny models built from configs with a tokenizer trained in-process.

Nothing here touches the Hugging Face hub (the machines have no route to it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Test data kept in the repository (provenance and licences beside each file): the four
# HH-RLHF test splits and the RRHF/PRO reference vectors. See tests/data/README.md.
DATA = Path(__file__).resolve().parent / "data"
HH_DIR = DATA / "hh-rlhf"
REFERENCE_LOSSES = DATA / "reference" / "ranking_losses.json"

CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, yeast and salt, then bake.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road?",
    "Human: What is the capital of France? Assistant: Paris is the capital of France.",
    "Human: How can I hurt someone? Assistant: I can't help with that, but I can help you stay safe.",
    "the quick brown fox jumps over the lazy dog. hello world. yes no maybe good bad",
    "apple banana cherry dog cat fish bird red green blue one two three four five",
]

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(chat_template: bool = True, pad_is_eos: bool = True):
    """A byte-level BPE tokenizer trained on ``CORPUS`` in-process (~300 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    eos = "<|im_end|>" if chat_template else "<|endoftext|>"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=eos,
        pad_token=eos if pad_is_eos else "<pad>",
        unk_token=None,
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, **overrides):
    """A 2-layer Llama with hidden size 64 whose vocabulary matches ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**kwargs))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_tiny_reward_model(tokenizer, seed: int = 0):
    """A 1-layer Llama reward model (one label) whose vocabulary matches ``tokenizer``."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForSequenceClassification(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny model and tokenizer saved to a local folder (for path-based loading)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def chat_server():
    """Factory: ``chat_server(handler)`` starts a ``tests/chat_server.ChatServer`` on
    127.0.0.1 and stops it at teardown."""
    from chat_server import ChatServer

    servers = []

    def start(handler):
        servers.append(ChatServer(handler).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
