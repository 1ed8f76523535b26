"""The ranking-loss registry: built-ins, registration rules and entry-point plugins."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from cyclealign.losses import (
    PROLoss,
    RankingLoss,
    RRHFLoss,
    available_ranking_losses,
    get_ranking_loss,
    ranking_loss_registry,
    register_ranking_loss,
)
from cyclealign.losses import registry as registry_module

PLUGIN_MODULE = "myloss_plugin"


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(registry_module._registry)
    yield
    registry_module._registry.clear()
    registry_module._registry.update(saved)
    for name in [m for m in sys.modules if m == PLUGIN_MODULE or m.startswith(PLUGIN_MODULE + ".")]:
        del sys.modules[name]


class Dummy(RankingLoss):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale


def test_builtins():
    assert {"pro", "rrhf"} <= set(available_ranking_losses())
    assert ranking_loss_registry["pro"] is PROLoss and ranking_loss_registry["rrhf"] is RRHFLoss
    loss = get_ranking_loss("pro", sft_weight=0.2)
    assert isinstance(loss, PROLoss) and loss.sft_weight == 0.2
    assert isinstance(get_ranking_loss("rrhf"), RRHFLoss)
    assert available_ranking_losses() == sorted(available_ranking_losses())


def test_registry_view_is_read_only():
    with pytest.raises(TypeError):
        ranking_loss_registry["pro"] = Dummy  # type: ignore[index]


def test_register_as_decorator_and_call():
    @register_ranking_loss("dummy")
    class Decorated(Dummy):
        pass

    assert ranking_loss_registry["dummy"] is Decorated
    assert register_ranking_loss("dummy2", Dummy) is Dummy
    assert get_ranking_loss("dummy2", scale=3.0).scale == 3.0
    assert {"dummy", "dummy2"} <= set(available_ranking_losses())


def test_name_clash_needs_replace():
    with pytest.raises(ValueError, match=r"'pro' is already registered.*replace=True"):
        register_ranking_loss("pro", Dummy)
    register_ranking_loss("pro", PROLoss)  # re-registering the same class is harmless
    register_ranking_loss("pro", Dummy, replace=True)
    assert ranking_loss_registry["pro"] is Dummy


def test_bad_registrations():
    with pytest.raises(TypeError, match=r"subclass of cyclealign\.losses\.RankingLoss"):
        register_ranking_loss("bad", torch.nn.Module)
    with pytest.raises(TypeError, match="subclass"):
        register_ranking_loss("bad")(lambda: None)
    with pytest.raises(ValueError, match="non-empty string"):
        register_ranking_loss("", Dummy)
    with pytest.raises(ValueError, match="non-empty string"):
        register_ranking_loss(" pro", Dummy)


def test_unknown_name_lists_available():
    with pytest.raises(
        ValueError, match=r"Unknown ranking loss 'dpo'. Available: \[.*'pro', 'rrhf'"
    ):
        get_ranking_loss("dpo")


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match=r"get_ranking_loss\('pro'\).*\['beta'\]"):
        get_ranking_loss("pro", beta=0.1)


def make_plugin(root, entry_points: str) -> None:
    """A real (throwaway) installed distribution: a package plus its dist-info metadata."""
    package = root / PLUGIN_MODULE
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            from cyclealign.losses import RankingLoss
            from cyclealign.losses.base import PromptLosses


            class MyLoss(RankingLoss):
                name = "myloss"
                uses_reward_values = False

                def __init__(self, margin=0.0):
                    super().__init__()
                    self.margin = margin

                def prompt_losses(self, batch):
                    s = batch.sorted(batch.scores)
                    rank = torch.relu(self.margin + s[:, 1] - s[:, 0])
                    sft = -batch.sorted(batch.sum_logps)[:, 0]
                    return PromptLosses(rank=rank, sft=sft, total=rank)


            class NotALoss:
                pass
            """
        )
    )
    info = root / f"{PLUGIN_MODULE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN_MODULE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_entry_point_plugin_is_found_and_loaded_lazily(tmp_path, monkeypatch):
    make_plugin(
        tmp_path,
        "[cyclealign.ranking_losses]\n"
        f"myloss = {PLUGIN_MODULE}:MyLoss\n"
        f"notaloss = {PLUGIN_MODULE}:NotALoss\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates the import caches
    names = available_ranking_losses()
    assert {"myloss", "notaloss", "pro", "rrhf"} <= set(names)
    assert PLUGIN_MODULE not in sys.modules  # listing names imported nothing
    assert "myloss" not in ranking_loss_registry

    loss = get_ranking_loss("myloss", margin=0.5)
    assert PLUGIN_MODULE in sys.modules
    assert type(loss).__name__ == "MyLoss" and loss.margin == 0.5
    assert ranking_loss_registry["myloss"] is type(loss)
    logps = torch.tensor([[[-1.0], [-2.0]]])
    out = loss(logps, torch.ones(1, 2, 1), torch.tensor([[0.0, 1.0]]))
    # Best (candidate 1) scores -2, the other -1: relu(0.5 + -1 - -2) = 1.5.
    torch.testing.assert_close(out.loss, torch.tensor(1.5))

    with pytest.raises(TypeError, match=rf"notaloss = {PLUGIN_MODULE}:NotALoss.*not a subclass"):
        get_ranking_loss("notaloss")


def test_broken_plugin_names_its_entry_point(tmp_path, monkeypatch):
    make_plugin(tmp_path, f"[cyclealign.ranking_losses]\nghost = {PLUGIN_MODULE}:Missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ImportError, match=rf"ghost = {PLUGIN_MODULE}:Missing"):
        get_ranking_loss("ghost")


def test_losses_import_only_torch():
    code = (
        "import sys, cyclealign.losses, cyclealign.logprobs, cyclealign.agreement\n"
        "print(sorted(m for m in ('transformers', 'openai', 'cyclealign.rankers') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
