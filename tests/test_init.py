"""The package's import surface: cheap import and lazy public names."""

from __future__ import annotations

import importlib
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


LAZY_PACKAGES = ["cyclealign", "cyclealign.rankers", "cyclealign.evaluation"]


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_lazy_name_is_the_object_its_module_defines(package):
    # In a fresh interpreter, so the lazy path runs (this session has imported it all).
    code = (
        "import importlib, json, sys\n"
        f"package = importlib.import_module({package!r})\n"
        "checked = []\n"
        "for name, module in package._EXPORTS.items():\n"
        "    assert name not in vars(package), f'{name} resolved before first use'\n"
        "    value = getattr(package, name)\n"
        "    defined = getattr(importlib.import_module(module, package.__name__), name)\n"
        "    assert value is defined, (name, value, defined)\n"
        "    assert vars(package)[name] is defined, name  # cached after first use\n"
        "    assert name in dir(package) and name in package.__all__, name\n"
        "    checked.append(name)\n"
        "print(json.dumps(checked))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    exports = importlib.import_module(package)._EXPORTS
    assert json.loads(out) == list(exports) and exports
    for name, module in exports.items():  # and here, where they were resolved already
        defined = getattr(importlib.import_module(module, package), name)
        assert getattr(importlib.import_module(package), name) is defined


def test_all_lists_exactly_the_exports():
    assert set(cyclealign.__all__) == {"__version__", *cyclealign._EXPORTS}
    assert len(cyclealign.__all__) == len(set(cyclealign.__all__))


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
