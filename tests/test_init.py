"""The package's import surface: cheap import and lazy public names."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cyclealign

HEAVY = ["transformers.trainer", "openai", "deepspeed", "peft", "datasets", "trl"]


def test_import_is_cheap():
    # A fresh interpreter: the test session itself has imported everything already.
    code = (
        "import json, sys, cyclealign\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == []


def test_lazy_name_does_not_pull_trainer():
    # Using a loss must not drag in the Trainer or the OpenAI client either.
    code = (
        "import json, sys, cyclealign\n"
        "cyclealign.PROLoss; cyclealign.agreement_ranking; cyclealign.RankRequest\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("name", [n for n in cyclealign.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    value = getattr(cyclealign, name)
    assert value is not None
    assert name in dir(cyclealign)
    module = __import__("cyclealign", fromlist=[name])
    assert getattr(module, name) is value


def test_unknown_name_is_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cyclealign.nope  # noqa: B018


def test_available_losses_from_the_shell():
    out = subprocess.run(
        [sys.executable, "-c", "import cyclealign; print(cyclealign.available_ranking_losses())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "'pro'" in out and "'rrhf'" in out
