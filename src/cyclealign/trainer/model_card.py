"""The model card (``README.md``) written with every save and checkpoint, through TRL's own
``trl.trainer.utils.generate_model_card``, as TRL's trainers write theirs.

It names the base model (the hub id, or a local model's folder name, said to be local), the
dataset, the black box (its model name and server host, never a key nor a URL's
credentials), the tags ``cyclealign`` and ``trl``, links to the run's trackers and the
CycleAlign citation.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["CITATION", "TAGS", "model_card", "ranker_description", "write_model_card"]

TAGS = ["cyclealign", "trl"]
PAPER = {
    "title": "CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for "
    "Better Human Alignment",
    "id": "2310.16271",
}
CITATION = textwrap.dedent("""\
    @article{hong2023cyclealign,
        title        = {{CycleAlign: Iterative Distillation from Black-box LLM to White-box Models for Better Human Alignment}},
        author       = {Jixiang Hong and Quan Tu and Changyu Chen and Xing Gao and Ji Zhang and Rui Yan},
        journal      = {arXiv preprint arXiv:2310.16271},
        year         = 2023
    }""")  # fmt: skip


def _is_local(name: str) -> bool:
    return os.path.isdir(name) or name.startswith((".", "/", "~")) or name.count("/") > 1


def base_model_of(model: Any) -> tuple[str | None, str | None]:
    """``(hub id, local name)``: the hub id when the model came from the Hub, else the local
    folder's name (a full local path would tell the reader nothing and the machine's layout)."""
    config = getattr(model, "config", None)
    if config is None:  # a PeftModel's base
        config = getattr(getattr(model, "base_model", None), "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    if not name:
        return None, None
    if _is_local(name):
        return None, Path(name.rstrip("/")).name or name
    return name, None


def _server(url: Any) -> str | None:
    """``scheme://host[:port]/path`` of a URL, without credentials or query."""
    if not url:
        return None
    parts = urlsplit(str(url))
    if not parts.hostname:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def ranker_description(ranker: Any) -> str | None:
    """The black box in one line: its class, its model's name and its server's host."""
    if ranker is None:
        return None
    kind = type(ranker).__name__
    model = getattr(ranker, "model", None)
    if isinstance(model, str):
        name = model
    elif model is not None:
        hub, local = base_model_of(model)
        name = hub or local
    else:
        names = getattr(ranker, "reward_func_names", None)
        name = ", ".join(names) if names else None
    server = _server(getattr(ranker, "base_url", None))
    text = f"`{name}` ({kind}" if name else f"({kind}"
    return text + (f", at {server})" if server else ")")


def _tracker_urls() -> dict[str, str | None]:
    from transformers import is_wandb_available
    from trl.trainer.utils import get_comet_experiment_url, get_trackio_space_url

    wandb_url = None
    if is_wandb_available():
        import wandb

        wandb_url = wandb.run.url if wandb.run is not None else None
    return {
        "wandb_url": wandb_url,
        "trackio_url": get_trackio_space_url(),
        "comet_url": get_comet_experiment_url(),
    }


def model_card(trainer: Any, model_name: str | None = None, dataset_name: str | None = None) -> Any:
    """The ``huggingface_hub.ModelCard`` of ``trainer``'s model, from TRL's template."""
    from trl.trainer.utils import generate_model_card

    model = trainer.accelerator.unwrap_model(trainer.model)
    hub_model, local_model = base_model_of(model)
    if model_name is None:
        hub_id = trainer.args.hub_model_id
        model_name = hub_id.split("/")[-1] if hub_id else Path(trainer.args.output_dir).name
    hub_dataset = dataset_name if dataset_name and not _is_local(dataset_name) else None
    tags = [*TAGS, *(t for t in getattr(model, "model_tags", None) or [] if t not in TAGS)]
    urls = _tracker_urls()
    if urls["trackio_url"]:
        tags = [t for t in tags if not t.startswith("trackio:")] + [
            f"trackio:{urls['trackio_url']}"
        ]
    card = generate_model_card(
        base_model=hub_model,
        model_name=model_name,
        hub_model_id=trainer.hub_model_id or model_name,
        dataset_name=hub_dataset,
        tags=tags,
        trainer_name="CycleAlign",
        trainer_citation=CITATION,
        paper_title=PAPER["title"],
        paper_id=PAPER["id"],
        **urls,
    )
    lines = ["## CycleAlign", ""]
    if local_model:
        lines.append(f"- Base model: `{local_model}`, a local model (not on the Hub)")
        # TRL's template links the base model to the Hub; a local one has no page there.
        card.text = card.text.replace(
            "[None](https://huggingface.co/None)", f"the local model `{local_model}`"
        )
    elif hub_model:
        lines.append(f"- Base model: [{hub_model}](https://huggingface.co/{hub_model})")
    if dataset_name and not hub_dataset:
        lines.append(f"- Dataset: `{Path(dataset_name.rstrip('/')).name}`, a local copy")
    elif hub_dataset:
        lines.append(f"- Dataset: [{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})")
    args = trainer.args
    black_box = ranker_description(getattr(trainer, "ranker", None))
    if black_box:
        lines.append(f"- Black box (ranker): {black_box}")
        lines.append(
            f"- Ranking loss `{args.ranking_loss}`, `num_generations={args.num_generations}`, "
            f"`max_rounds={args.max_rounds}`"
        )
    else:
        lines.append(
            f"- No black box: offline ranking training with `{args.ranking_loss}` on ranked data "
            "(the paper's PRO/RRHF baselines)"
        )
    section = "\n".join(lines) + "\n\n"
    marker = "### Framework versions"
    card.text = (
        card.text.replace(marker, section + marker, 1)
        if marker in card.text
        else (card.text + "\n" + section)
    )
    return card


def write_model_card(
    trainer: Any, folder: str, model_name: str | None = None, dataset_name: str | None = None
) -> None:
    """Write ``folder/README.md`` (main process only). For a PEFT adapter, PEFT's own fields
    (``library_name: peft``, version) are added as ``Trainer.create_model_card`` adds them, and
    the base model stays as above (PEFT would write a local path)."""
    if not trainer.is_world_process_zero():
        return
    card = model_card(trainer, model_name, dataset_name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "README.md")
    card.save(path)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "create_or_update_model_card"):
        from huggingface_hub import ModelCard

        model.create_or_update_model_card(folder)
        updated = ModelCard.load(path)
        updated.data.tags = sorted(set(card.data.tags or []) | set(updated.data.tags or []))
        updated.data.base_model = card.data.base_model
        if updated.data.base_model is None:
            updated.data.pop("base_model", None)
        updated.save(path)
