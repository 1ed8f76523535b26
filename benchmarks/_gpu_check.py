"""The prepared accelerator check: the cycle in bf16 with transformers' ``generate`` on randomly
initialised models of SmolLM2-135M's shape and of a ~1B (Llama-3.2-1B) shape.

    bash benchmarks/gpu_check.sh            # on a CUDA machine (see gpu_check.sh for wheels)
    bash benchmarks/gpu_check.sh --dry-run  # the same code on this CPU: one step, 2 layers

Per model it reports sampling tokens/s (generated tokens over the time in ``generate``), the
time of each phase of a training step (``time/generate``, ``time/forward``,
``time/rank_wait``, ``time/backward``, medians over the measured steps), the step time and the
peak accelerator memory. Weights are fp32 masters with bf16 autocast (the Trainer's ``bf16``),
the documented single-device recipe. The black box is an in-process ranker (longest response
first), so no network is needed and ``time/rank_wait`` is close to 0. Nothing is downloaded:
the tokenizer is a word-level vocabulary built in-process, prompts are random words of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHAPES = {
    # SmolLM2-135M (config.json of HuggingFaceTB/SmolLM2-135M).
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    # Llama-3.2-1B's shape (1.24e9 parameters).
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    # --dry-run: two layers.
    "tiny-2-layer": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=512,
        tie_word_embeddings=False,
    ),
}

FIELDS = [
    "parameters (M)",
    "sampling tokens/s",
    "step s",
    "time/generate s",
    "time/forward s",
    "time/rank_wait s",
    "time/backward s",
    "peak memory GiB",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer of ``vocab_size`` tokens ("w0", "w1", ...), built in-process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    vocab = {token: i for i, token in enumerate(special)}
    for i in range(vocab_size - len(special)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(shape: dict, tokenizer, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: seconds, not minutes, for 1B
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def run_model(name: str, cli: argparse.Namespace, device: str) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    from cyclealign import CycleAlignConfig, CycleAlignTrainer
    from cyclealign.rankers.base import BlackBoxRanker
    from cyclealign.types import RankResult

    class LongestFirst(BlackBoxRanker):
        def rank(self, requests):
            return [
                RankResult(sorted(range(len(r.responses)), key=lambda i: -len(r.responses[i])))
                for r in requests
            ]

    generated: list[int] = []  # new tokens of each generate call

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.start, self.calls = time.perf_counter(), len(generated)

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)
            self.tokens.append(sum(generated[self.calls :]))

    shape = SHAPES[name]
    tokenizer = word_tokenizer(shape["vocab_size"])
    model = build_model(shape, tokenizer, device)
    original_generate = model.generate

    def counting_generate(*args, **kwargs):  # new tokens per call, EOS padding excluded
        out = original_generate(*args, **kwargs)
        new = out[:, kwargs["input_ids"].shape[1] :]
        generated.append(int((new != tokenizer.pad_token_id).sum()))
        return out

    model.generate = counting_generate
    generator = torch.Generator().manual_seed(0)
    words = torch.randint(
        0, shape["vocab_size"] - 4, (cli.prompts, cli.prompt_words), generator=generator
    )
    prompts = [" ".join(f"w{int(i)}" for i in row) for row in words]
    steps = StepTimes()
    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts,
            num_generations=cli.generations,
            max_completion_length=cli.max_completion_length,
            # Random weights rarely write EOS: sampling runs to the length limit, as the
            # longest responses of a real model do.
            max_rounds=cli.rounds,
            stop_on_full_agreement=False,
            max_steps=cli.steps,
            learning_rate=1e-6,
            bf16=device == "cuda",
            use_cpu=device == "cpu",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = CycleAlignTrainer(
            model,
            args,
            train_dataset=Dataset.from_dict(
                {"prompt": [[{"role": "user", "content": p}] for p in prompts]}
            ),
            processing_class=tokenizer,
            ranker=LongestFirst(),
            callbacks=[steps],
        )
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    logs = [h for h in trainer.state.log_history if "time/generate" in h]
    measured = slice(1, None) if len(logs) > 1 else slice(None)  # the first step warms up
    logs, walls, tokens = logs[measured], steps.times[measured], steps.tokens[measured]

    def median(key: str) -> float:
        return statistics.median(h[key] for h in logs)

    rates = [n / h["time/generate"] for n, h in zip(tokens, logs) if h["time/generate"] > 0]
    return {
        "model": name,
        "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "sampling tokens/s": round(statistics.median(rates), 1) if rates else 0.0,
        "step s": round(statistics.median(walls), 3),
        "time/generate s": round(median("time/generate"), 3),
        "time/forward s": round(median("time/forward"), 3),
        "time/rank_wait s": round(median("time/rank_wait"), 3),
        "time/backward s": round(median("time/backward"), 3),
        "peak memory GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device == "cuda"
        else 0.0,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, one step, a 2-layer model")
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "llama-1b"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt_words", type=int, default=64)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", default=None, help="also write the rows here")
    cli = parser.parse_args(argv)
    if cli.dry_run:
        device = "cpu"
        cli.models, cli.steps, cli.prompts, cli.prompt_words = ["tiny-2-layer"], 1, 2, 8
        cli.max_completion_length, cli.rounds = 8, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("No CUDA device: run with --dry-run to check the script on a CPU.")
        device = "cuda"
    started = time.monotonic()
    rows = [run_model(name, cli, device) for name in cli.models]
    header = ["model", *FIELDS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")
    report = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(cli).items() if k != "json"},
        "run_s": round(time.monotonic() - started, 1),
        "rows": rows,
    }
    print(json.dumps(report))
    if cli.json:
        Path(cli.json).write_text(json.dumps(report, indent=2))
    return rows


if __name__ == "__main__":
    main()
