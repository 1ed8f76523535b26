"""CycleAlignConfig: defaults, dict fields from JSON/CLI/YAML, validation messages."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser, TrainingArguments

from cyclealign.config import CycleAlignConfig

ROOT = Path(__file__).resolve().parents[1]
OWN_FIELDS = [
    f.name
    for f in dataclasses.fields(CycleAlignConfig)
    if f.name not in {g.name for g in dataclasses.fields(TrainingArguments)}
]


def make(tmp_path, **kwargs):
    return CycleAlignConfig(output_dir=str(tmp_path), **kwargs)


def test_defaults(tmp_path):
    args = make(tmp_path)
    assert (args.num_generations, args.max_rounds, args.max_completion_length) == (4, 5, 64)
    assert args.stop_on_full_agreement and args.use_better_response
    assert args.ranking_loss == "pro" and args.reward_from_ranking == "linear"
    assert args.ranker_failure_policy == "skip"
    assert args.use_dynamic_demonstrations and args.use_static_demonstration
    assert args.remove_unused_columns is False and args.gradient_accumulation_steps == 1
    assert args.round_log is False and args.log_completions is False
    assert args.num_completions_to_print is None and args.chat_template_kwargs is None
    assert args.trust_remote_code is False
    assert args.stop_strings is None
    assert args.demonstration_max_tokens == 4096 and args.max_demonstrations is None


def test_defaults_shared_with_grpo_are_grpos_unless_documented(tmp_path):
    from trl import GRPOConfig

    ours = make(tmp_path)
    assert (ours.learning_rate, ours.logging_steps) == (1e-6, 10)  # GRPO's
    grpo = {g.name: g.default for g in dataclasses.fields(GRPOConfig)}
    differing = {
        f.name
        for f in dataclasses.fields(CycleAlignConfig)
        if f.name in grpo and f.default is not dataclasses.MISSING and f.default != grpo[f.name]
    }
    # Every default that differs from GRPOConfig's is listed, with its reason, in the docs.
    text = (ROOT / "docs" / "trainer.md").read_text()
    table = text.split("<!-- grpo-defaults -->")[1].split("<!-- /grpo-defaults -->")[0]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.M)) == differing


def test_every_own_field_is_documented_and_has_help():
    doc = CycleAlignConfig.__doc__
    for name in OWN_FIELDS:
        assert f"        {name} (" in doc, f"{name} missing from the Parameters docstring"
    for f in dataclasses.fields(CycleAlignConfig):
        if f.name in OWN_FIELDS:
            assert f.metadata.get("help"), f.name
    assert "api_key" not in " ".join(OWN_FIELDS)


def test_dict_fields_accept_json_strings(tmp_path):
    args = make(
        tmp_path,
        generation_kwargs='{"top_k": 5, "repetition_penalty": 1.1}',
        ranking_loss="rrhf",
        ranking_loss_kwargs="{}",
        model_init_kwargs={"dtype": "bfloat16"},
    )
    assert args.generation_kwargs == {"top_k": 5, "repetition_penalty": 1.1}
    assert args.ranking_loss_kwargs == {}
    assert args.model_init_kwargs == {"dtype": "bfloat16"}
    json.loads(args.to_json_string())  # still serialisable for the trainer state


def test_command_line_and_yaml(tmp_path):
    parser = HfArgumentParser(CycleAlignConfig)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path),
            "--num_generations", "3",
            "--ranker_failure_policy", "whitebox",
            "--generation_kwargs", '{"top_k": 7}',
            "--use_dynamic_demonstrations", "false",
        ]
    )  # fmt: skip
    assert args.num_generations == 3 and args.ranker_failure_policy == "whitebox"
    assert args.generation_kwargs == {"top_k": 7}
    assert args.use_dynamic_demonstrations is False

    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\nmax_rounds: 2\nranking_loss_kwargs:\n  sft_weight: 0.1\n"
    )
    (args,) = parser.parse_yaml_file(str(config))
    assert args.max_rounds == 2 and args.ranking_loss_kwargs == {"sft_weight": 0.1}


TRL_SAMPLING = dict(
    num_generations=4, max_completion_length=32, top_k=5, min_p=0.1, repetition_penalty=1.1
)


def _sampling(args):
    return {name: getattr(args, name) for name in TRL_SAMPLING}


def test_trl_names_from_python_yaml_and_command_line(tmp_path):
    from trl import TrlParser

    assert _sampling(make(tmp_path, **TRL_SAMPLING)) == TRL_SAMPLING
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\n" + "".join(f"{k}: {v}\n" for k, v in TRL_SAMPLING.items())
    )
    (args,) = TrlParser(CycleAlignConfig).parse_args_and_config(["--config", str(config)])
    assert _sampling(args) == TRL_SAMPLING
    cli = [f"--{k}={v}" for k, v in TRL_SAMPLING.items()]
    (args,) = TrlParser(CycleAlignConfig).parse_args_and_config(["--output_dir", "o", *cli])
    assert _sampling(args) == TRL_SAMPLING


@pytest.mark.parametrize("old", ["num_responses", "max_new_tokens"])
def test_old_names_fail_everywhere(tmp_path, old):
    from trl import TrlParser

    with pytest.raises(TypeError, match=old):
        make(tmp_path, **{old: 4})
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\n{old}: 4\n")
    with pytest.raises(ValueError, match=f"Unknown arguments from config file.*{old}"):
        TrlParser(CycleAlignConfig).parse_args_and_config(["--config", str(config)])
    with pytest.raises(ValueError, match=f"not used by the HfArgumentParser.*{old}"):
        TrlParser(CycleAlignConfig).parse_args_and_config(["--output_dir", "o", f"--{old}", "4"])


def test_sampling_fields_reach_generation_and_generation_kwargs_win(tmp_path):
    from cyclealign.sampling import sampling_config
    from helpers import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = sampling_config(make(tmp_path, **TRL_SAMPLING), tokenizer, [2])
    assert (config.max_new_tokens, config.top_k, config.min_p) == (32, 5, 0.1)
    assert config.repetition_penalty == 1.1
    override = make(tmp_path, **TRL_SAMPLING, generation_kwargs={"top_k": 9, "min_p": 0.2})
    config = sampling_config(override, tokenizer, [2])
    assert (config.top_k, config.min_p, config.repetition_penalty) == (9, 0.2, 1.1)
    # The defaults are TRL's: every filter off.
    config = sampling_config(make(tmp_path), tokenizer, [2])
    assert (config.top_k, config.min_p, config.repetition_penalty) == (0, None, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gradient_accumulation_steps": 2}, "Raise per_device_train_batch_size"),
        ({"num_generations": 1}, "num_generations must be an integer >= 2"),
        ({"max_rounds": 0}, "max_rounds must be an integer >= 1"),
        ({"max_completion_length": 0}, "max_completion_length"),
        ({"max_prompt_length": 0}, "or None for no limit"),
        ({"scoring_batch_size": -1}, "scoring_batch_size"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"min_p": 1.5}, r"min_p must be in \[0, 1\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"ranker_failure_policy": "retry"}, r"\['skip', 'whitebox'\]"),
        ({"reward_from_ranking": "elo"}, r"\['linear', 'scores'\]"),
        ({"demonstration_selection": "random"}, r"\['recent', 'similar'\]"),
        ({"ranking_loss": "no-such-loss"}, "cannot be built"),
        ({"ranking_loss_kwargs": {"bogus": 1}}, "cannot be built"),
        ({"generation_kwargs": "top_k=5"}, "JSON object string"),
        ({"generation_kwargs": "[1, 2]"}, "JSON object string"),
        ({"ranking_deadline": 0}, "ranking_deadline must be a number of seconds > 0"),
        ({"ranking_deadline": float("inf")}, "ranking_deadline must be"),
        ({"stop_strings": "Human:"}, r"list of non-empty strings such as \['Human:'"),
        ({"stop_strings": ["Human:", ""]}, "list of non-empty strings"),
        ({"demonstration_max_tokens": 0}, "demonstration_max_tokens must be an integer >= 1"),
        ({"max_demonstrations": -1}, "max_demonstrations must be an integer >= 0"),
        (
            {"demonstration_max_tokens": None, "max_demonstrations": None},
            "whole demonstration pool.*Set a token budget",
        ),
    ],
)
def test_validation_errors_say_how_to_fix(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **kwargs)


def test_gradient_accumulation_message_explains_why(tmp_path):
    with pytest.raises(ValueError) as info:
        make(tmp_path, gradient_accumulation_steps=4)
    assert "different models" in str(info.value) and "got 4" in str(info.value)


def test_deepspeed_on_a_cpu_only_machine_is_detected(monkeypatch):
    # The integration (two DeepSpeed processes with no ddp_backend) is in test_multiprocess.py.
    from cyclealign.config_checks import deepspeed_without_accelerator

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert not deepspeed_without_accelerator(None)
    cpu_only = not torch.cuda.is_available()
    assert deepspeed_without_accelerator({"zero_optimization": {"stage": 2}}) == cpu_only
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert deepspeed_without_accelerator(None) == cpu_only
