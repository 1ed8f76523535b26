"""The model card of every save and checkpoint (TRL's generate_model_card), and push_to_hub."""

from __future__ import annotations

from pathlib import Path

import peft
import pytest
from datasets import Dataset
from huggingface_hub import ModelCard

from chat_server import ChatServer, rank_by
from cyclealign import CycleAlignConfig, CycleAlignTrainer, FunctionRanker, OpenAIRanker
from cyclealign.trainer.model_card import ranker_description
from helpers import PROMPTS, build_tiny_model

KEY = "sk-planted-0123456789abcdef"
URL_SECRET = "hunter2-in-the-url"


def args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        max_rounds=1,
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    return CycleAlignConfig(**{**settings, **overrides})


def chats(n=2):
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS[:n]]})


def test_every_save_and_checkpoint_has_the_card_and_no_secret(tmp_path, tiny_model_dir):
    with ChatServer(rank_by(lambda text: text.count("e"))) as server:
        host = server.base_url.split("://", 1)[1]
        ranker = OpenAIRanker(
            "judge-model-7b",
            base_url=f"http://user:{URL_SECRET}@{host}?api-key={URL_SECRET}",
            api_key=KEY,
        )
        trainer = CycleAlignTrainer(str(tiny_model_dir), args(tmp_path), train_dataset=chats(),
                                    ranker=ranker)  # fmt: skip
        trainer.dataset_name = "Anthropic/hh-rlhf"
        trainer.train()
        trainer.save_model()
    out = Path(trainer.args.output_dir)
    for folder in (out, out / "checkpoint-1"):
        text = (folder / "README.md").read_text()
        card = ModelCard.load(folder / "README.md")
        assert {"cyclealign", "trl"} <= set(card.data.tags)
        assert "@article{hong2023cyclealign" in text and "2310.16271" in text
        assert f"`{tiny_model_dir.name}`, a local model (not on the Hub)" in text
        assert str(tiny_model_dir) not in text  # the folder's name, not the machine's layout
        assert "`judge-model-7b` (OpenAIRanker, at http://127.0.0.1:" in text
        assert card.data.datasets == "Anthropic/hh-rlhf"  # as TRL writes it
        assert "https://huggingface.co/None" not in text
        # No secret anywhere in the folder, the card included.
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert KEY.encode() not in data and URL_SECRET.encode() not in data, path


def test_a_hub_base_model_is_linked_and_a_lora_card_is_peft_s(tmp_path, tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    trainer = CycleAlignTrainer(
        model,
        args(tmp_path, save_strategy="no"),
        train_dataset=chats(),
        processing_class=tiny_tokenizer,
        ranker=FunctionRanker(lambda completions, **kw: [0.0] * len(completions)),
        peft_config=peft.LoraConfig(r=2, target_modules=["q_proj"]),
    )
    trainer.save_model()
    card = ModelCard.load(Path(trainer.args.output_dir) / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert card.data.library_name == "peft"
    assert {"cyclealign", "trl", "lora"} <= set(card.data.tags)
    assert "[HuggingFaceTB/SmolLM2-135M-Instruct](https://huggingface.co/" in card.text
    assert "`<lambda>` (FunctionRanker)" in card.text


def test_push_to_hub_uploads_the_card_with_the_model(tmp_path, tiny_tokenizer, monkeypatch):
    import transformers.trainer as hf_trainer

    uploads = []

    class OfflineHub:  # the Hub cannot be reached here: record what would be uploaded
        def upload_folder(self, folder_path, **kwargs):
            files = {p.name: p.read_text() for p in Path(folder_path).iterdir() if p.is_file()
                     and p.suffix in (".md", ".json")}  # fmt: skip
            uploads.append((kwargs["repo_id"], files, kwargs["ignore_patterns"]))

    monkeypatch.setattr(hf_trainer, "hf_api", lambda: OfflineHub())
    trainer = CycleAlignTrainer(
        build_tiny_model(tiny_tokenizer),
        args(tmp_path, save_strategy="no"),
        train_dataset=chats(),
        processing_class=tiny_tokenizer,
        ranker=FunctionRanker(lambda completions, **kw: [0.0] * len(completions)),
    )
    trainer.hub_model_id = "someone/cyclealign-tiny"
    trainer.push_to_hub(dataset_name="Anthropic/hh-rlhf")
    ((repo, files, ignored),) = uploads
    assert repo == "someone/cyclealign-tiny" and "config.json" in files
    assert "checkpoint-*" in ignored  # the model and its card, not the checkpoints
    card = files["README.md"]
    assert "cyclealign" in card and "@article{hong2023cyclealign" in card
    assert "Anthropic/hh-rlhf" in card and "someone/cyclealign-tiny" in card


@pytest.mark.parametrize(
    "ranker, expected",
    [
        (OpenAIRanker("gpt-4o-mini", base_url="https://u:p@api.example.com:8443/v1?k=s"),
         "`gpt-4o-mini` (OpenAIRanker, at https://api.example.com:8443/v1)"),
        (FunctionRanker([len, max]), "`len, max` (FunctionRanker)"),
    ],
)  # fmt: skip
def test_ranker_description_keeps_the_name_and_host_only(ranker, expected):
    assert ranker_description(ranker) == expected


def test_offline_training_says_it_had_no_black_box(tmp_path, tiny_tokenizer):
    from cyclealign import OfflineRankingTrainer

    rows = [{"prompt": "hi", "responses": ["a", "b"], "rewards": [1.0, 0.0]}] * 2
    trainer = OfflineRankingTrainer(
        build_tiny_model(tiny_tokenizer),
        args(tmp_path, save_strategy="no"),
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )
    trainer.save_model()
    text = (Path(trainer.args.output_dir) / "README.md").read_text()
    assert "No black box: offline ranking training with `pro`" in text
    assert "max_rounds" not in text
