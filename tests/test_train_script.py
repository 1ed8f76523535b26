"""`cyclealign train` (cyclealign.scripts.train): TRL's ModelConfig options and a real step."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch

from cyclealign.cli import main as cli
from cyclealign.scripts.train import build_trainer, make_parser, model_init_kwargs
from helpers import HH_DIR

ROOT = Path(__file__).resolve().parents[1]
CPU_DEMO = str(ROOT / "examples" / "configs" / "cpu_demo.yaml")


def parse(*argv):
    return make_parser().parse_args_and_config(["--config", CPU_DEMO, *argv])


def test_cyclealign_train_runs_a_step_on_the_cpu_demo_config(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(
        [
            "train",
            "--config",
            CPU_DEMO,
            "--max_steps",
            "1",
            "--model_name_or_path",
            str(tiny_model_dir),
            "--output_dir",
            str(out),
            "--dataset",
            str(HH_DIR),
            "--split",
            "test",
            "--subsets",
            "helpful-base",
            "--num_samples",
            "2",
            "--max_completion_length",
            "4",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 1 and summary["rounds"] >= 1
    assert (out / "model.safetensors").exists()
    assert str((out / "report.md").resolve()) in capsys.readouterr().out


def test_model_options_are_trls(tiny_model_dir, tmp_path):
    common = ["--output_dir", str(tmp_path), "--model_name_or_path", str(tiny_model_dir)]
    script, args, model_args = parse(*common, "--dtype", "bfloat16", "--num_samples", "2")
    trainer = build_trainer(script, args, model_args)
    assert trainer.model.dtype == torch.bfloat16
    assert trainer.model.config._name_or_path == str(tiny_model_dir)

    script, args, model_args = parse(
        *common, "--use_peft", "--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj"
    )
    trainer = build_trainer(script, args, model_args)
    assert isinstance(trainer.model, peft.PeftModel)
    config = trainer.model.peft_config["default"]
    assert config.r == 8 and set(config.target_modules) == {"q_proj", "v_proj"}
    assert config.lora_alpha == 32 and not config.use_dora  # TRL's defaults
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_model_init_kwargs_come_from_model_config_and_the_yaml_file_wins(tmp_path):
    _, args, model_args = parse(
        "--output_dir",
        str(tmp_path),
        "--model_revision",
        "v2",
        "--attn_implementation",
        "eager",
        "--trust_remote_code",
        "true",
        "--model_init_kwargs",
        '{"dtype": "bfloat16"}',
    )
    assert model_init_kwargs(model_args, args) == {
        "revision": "v2",
        "trust_remote_code": True,
        "attn_implementation": "eager",
        "dtype": "bfloat16",  # the config's model_init_kwargs over ModelConfig's float32
    }


def test_unknown_keys_and_a_missing_model_are_errors(tmp_path):
    with pytest.raises(ValueError, match="not_a_field"):
        parse("--output_dir", str(tmp_path), "--not_a_field", "1")
    script, args, model_args = make_parser().parse_args_and_config(["--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--model_name_or_path"):
        build_trainer(script, args, model_args)


def test_raw_format_models_get_the_official_stop_strings(tmp_path):
    from cyclealign import CycleAlignConfig
    from cyclealign.data.hh_rlhf import HH_RLHF_STOP_STRINGS
    from cyclealign.scripts import train as hh_rlhf
    from helpers import build_tiny_tokenizer

    def stops(chat_template, **config):
        args = CycleAlignConfig(output_dir=str(tmp_path), **config)
        hh_rlhf.set_stop_strings(args, build_tiny_tokenizer(chat_template=chat_template))
        return args.stop_strings

    # PRO's `early_truncation` list.
    assert HH_RLHF_STOP_STRINGS == ("Human:", "human:", "Assistant:", "assistant:")
    assert stops(chat_template=False) == list(HH_RLHF_STOP_STRINGS)
    assert stops(chat_template=True) is None  # a chat template ends turns with its EOS
    assert stops(chat_template=False, stop_strings=["###"]) == ["###"]  # the user's choice
    assert stops(chat_template=False, generation_kwargs={"stop_strings": ["x"]}) is None
    script = hh_rlhf.ScriptArguments(ranker_template="paper")
    assert hh_rlhf.ranking_template(script).answer_suffix == "."
