"""Shared fixtures; the builders behind them are in ``helpers.py``."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import build_tiny_model, build_tiny_tokenizer


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
