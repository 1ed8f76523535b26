"""Sampling with a colocated vLLM engine against transformers' ``generate``, and what it does
to a CycleAlign step; TRL's GRPO with vLLM on the same work.

One batch of chat prompts (``--prompts`` x ``--samples`` responses of exactly ``--tokens``
new tokens each, temperature 1, so every engine does the same work) on SmolLM2-135M-Instruct
(default; ``--model tiny`` for a check in seconds):

(a) sampling tokens/s (median of ``--repeats`` after a warm-up): transformers in fp32 and
    bf16, and the vLLM engine a ``use_vllm=True`` trainer builds (``--vllm_dtype``,
    compiled unless ``--eager``), with its start-up;
(b) a CycleAlign step of ``--rounds`` rounds (a zero-latency in-process ranker, fp32
    training) with ``use_vllm=False`` and ``True``: whole optimizer steps, median after a
    warm-up step, and the weight sync per round (``time/weight_sync``);
(c) TRL's ``GRPOTrainer(use_vllm=True, vllm_mode="colocate")`` on the same model, prompts
    and sampling settings, one generation and one update per step: the same work as one
    CycleAlign round. TRL 1.16's colocate sync (``load_weights``) fails on CPUs (vLLM packs
    the weights); this script replaces ``VLLMGeneration.sync_weights`` with the
    ``reload_weights`` sync, and says so in the results.

Each engine runs in its own process, one after the other (a vLLM engine is not freed
reliably, and two would share two cores). Without vLLM installed the vLLM rows are skipped
with the reason; scripts/test-vllm.sh runs this script in the environment scripts/vllm-env.sh
builds.

    python benchmarks/generation.py            # SmolLM2-135M, 4 prompts x 4 x 32 tokens
    python benchmarks/generation.py --model tiny --prompts 2 --samples 2 --tokens 4 --steps 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _children import run_as_child, run_child
from _report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# On a shared 2-core machine torch's OpenMP workers spin after each op and stall the rest
# (see benchmarks/latency_hiding.py); passive waiting, for every child, before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = [
    "How do I keep basil alive?",
    "Why is the sky blue?",
    "Tell me a joke.",
    "What is a mortgage?",
    "Name three fruits.",
    "How do I boil an egg?",
    "Write a haiku about the sea.",
    "What is 12 times 12?",
]
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
SKIPPED = (
    "skipped: vLLM is not installed in this environment (scripts/test-vllm.sh runs this script in "
    "the one scripts/vllm-env.sh builds)"
)
TARGETS = {
    "sampling": 2.0,  # vLLM tokens/s at least 2x transformers bf16
    "step": 0.6,  # a CycleAlign step with vLLM at most 0.6x the same step with transformers
    "sync": 0.15,  # the weight sync at most 15 % of a round
    "grpo": 1.0,  # our round no slower than GRPO's step with vLLM
}


# -- children: one engine each ----------------------------------------------------------------


def model_path(name: str) -> str:
    if name == "tiny":
        from helpers import build_tiny_tokenizer, build_vllm_tiny_model

        folder = Path(tempfile.gettempdir()) / "cyclealign-generation-tiny"
        if not (folder / "config.json").exists():
            tokenizer = build_tiny_tokenizer()
            build_vllm_tiny_model(tokenizer).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return str(folder)
    from cyclealign.scripts.train import resolve_model

    # The vLLM environment converts with its own transformers, into a folder of its own.
    cache = Path.home() / ".cache" / "cyclealign" / ("vllm" if HAVE_VLLM else "")
    return resolve_model("smollm2", str(cache))


def prompt_ids(tokenizer, count: int) -> list[list[int]]:
    rows = []
    for prompt in (PROMPTS * count)[:count]:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        rows.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return rows


def median_rate(run, tokens: int, repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(tokens / statistics.median(times), 1)


def hf_tokens_per_s(model, tokenizer, cli) -> float:
    import torch

    rows = prompt_ids(tokenizer, cli.prompts)
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    ids = batch["input_ids"].repeat_interleave(cli.samples, 0)
    mask = batch["attention_mask"].repeat_interleave(cli.samples, 0)

    def run():
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                max_new_tokens=cli.tokens,
                min_new_tokens=cli.tokens,  # the same work as every other engine
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )

    return median_rate(run, cli.prompts * cli.samples * cli.tokens, cli.repeats)


def ranker():
    """A zero-latency black box: longest first."""
    from cyclealign import BlackBoxRanker, RankResult

    class Longest(BlackBoxRanker):
        def rank(self, requests):
            return [
                RankResult(sorted(range(len(r.responses)), key=lambda i: -len(r.responses[i])))
                for r in requests
            ]

    return Longest()


def dataset(cli):
    from datasets import Dataset

    prompts = (PROMPTS * (cli.steps * cli.prompts))[: cli.steps * cli.prompts]
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})


def cycle_steps(cli, path: str, use_vllm: bool) -> dict:
    """A CycleAlign run of ``--steps`` steps; with vLLM, the engine's start-up and tokens/s."""
    from _timing import StepTimer
    from cyclealign import CycleAlignConfig, CycleAlignTrainer

    with tempfile.TemporaryDirectory() as out:
        args = CycleAlignConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts,
            num_generations=cli.samples,
            max_completion_length=cli.tokens,
            generation_kwargs={"min_new_tokens": cli.tokens},
            max_rounds=cli.rounds,
            stop_on_full_agreement=False,
            max_steps=cli.steps,
            learning_rate=1e-6,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            use_better_response=False,
            max_demonstrations=0,
            use_vllm=use_vllm,
            vllm_dtype=cli.vllm_dtype,
            vllm_enforce_eager=cli.eager,
        )
        start = time.perf_counter()
        trainer = CycleAlignTrainer(path, args, train_dataset=dataset(cli), ranker=ranker())
        result: dict = {"trainer_init_s": round(time.perf_counter() - start, 1)}
        if use_vllm:
            result["engine"] = trainer.vllm.engine_kwargs
            result["tokens_per_s"] = vllm_tokens_per_s(trainer, cli)
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
        steps = [h for h in trainer.state.log_history if "cycle/rounds" in h]
        measured = steps[1:] or steps  # the first step warms up
        step_s = statistics.median(timer.times[1:] or timer.times)
        rounds = statistics.mean(h["cycle/rounds"] for h in measured)
        result |= {
            "step_s": round(step_s, 2),
            "step_times": [round(t, 2) for t in timer.times],
            "rounds": rounds,
            "round_s": round(step_s / rounds, 2),
            "generate_s": round(statistics.mean(h["time/generate"] for h in measured), 2),
        }
        if use_vllm:
            sync = statistics.mean(h["time/weight_sync"] for h in measured) / rounds
            result |= {
                "sync_per_round_s": round(sync, 3),
                "sync_tensors": trainer.vllm.last_sync_tensors,
            }
        return result


def vllm_tokens_per_s(trainer, cli) -> float:
    from vllm import SamplingParams

    rows = prompt_ids(trainer.processing_class, cli.prompts)
    params = SamplingParams(
        n=cli.samples, temperature=1.0, max_tokens=cli.tokens, min_tokens=cli.tokens, seed=0
    )

    def run():
        trainer.vllm.llm.generate(
            [{"prompt_token_ids": r} for r in rows], sampling_params=params, use_tqdm=False
        )

    return median_rate(run, cli.prompts * cli.samples * cli.tokens, cli.repeats)


def child_transformers(cli) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(cli.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    result = {"fp32_tokens_per_s": hf_tokens_per_s(model, tokenizer, cli)}
    result["bf16_tokens_per_s"] = hf_tokens_per_s(model.to(torch.bfloat16), tokenizer, cli)
    del model
    result["cycle"] = cycle_steps(cli, path, use_vllm=False)
    return result


def child_vllm(cli) -> dict:
    return cycle_steps(cli, model_path(cli.model), use_vllm=True)


#: What replaces TRL 1.16's colocate sync on CPUs (printed into the results' notes).
TRL_CPU_SYNC = (
    "VLLMGeneration.sync_weights -> llm.collective_rpc('reload_weights', weights_iterator="
    "_iter_named_params(), is_checkpoint_format=True), then the tied LM head re-packed "
    "(dispatch_cpu_unquantized_gemm) and the prefix cache reset"
)


def patch_trl_cpu_sync() -> None:
    from trl.generation.vllm_generation import VLLMGeneration

    def sync_weights(self):
        items = [(name, param.detach().clone()) for name, param in self._iter_named_params()]
        self.llm.collective_rpc(
            "reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True}
        )
        model = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.get_model()
        head, embed = getattr(model, "lm_head", None), model.model.embed_tokens
        if head is not None and head.weight is embed.weight:
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            dispatch_cpu_unquantized_gemm(head, remove_weight=False)
        self.llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def child_grpo(cli) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from _timing import StepTimer

    patch_trl_cpu_sync()
    path = model_path(cli.model)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def longest(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=cli.prompts * cli.samples,
            num_generations=cli.samples,
            max_completion_length=cli.tokens,
            generation_kwargs={"min_tokens": cli.tokens},
            max_steps=cli.steps,
            learning_rate=1e-6,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            beta=0.0,
            disable_tqdm=True,
            bf16=False,  # fp32 training without checkpointing, as the CycleAlign runs
            gradient_checkpointing=False,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            use_vllm=True,
            vllm_mode="colocate",
            # On CPUs vLLM reads this as a fraction of the machine's memory, for the weights,
            # the profiling pass and the KV cache: 3 GiB leaves about the 1 GiB of KV cache
            # the CycleAlign engine gets.
            vllm_gpu_memory_utilization=min(0.9, 3 * 2**30 / memory),
        )
        start = time.perf_counter()
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(path),
            reward_funcs=longest,
            args=args,
            train_dataset=dataset(cli),
            processing_class=tokenizer,
        )
        init_s = time.perf_counter() - start
        llm = trainer.vllm_generation.llm
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
        step_s = statistics.median(timer.times[1:] or timer.times)
        return {
            "trainer_init_s": round(init_s, 1),
            "dtype": str(llm.llm_engine.model_config.dtype).removeprefix("torch."),
            "step_s": round(step_s, 2),
            "step_times": [round(t, 2) for t in timer.times],
        }


CHILDREN = {"transformers": child_transformers, "vllm": child_vllm, "grpo": child_grpo}


# -- the parent: children one after the other, then the table --------------------------------


def verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "missed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per response")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per CycleAlign step")
    parser.add_argument("--steps", type=int, default=3, help="the first one warms up")
    parser.add_argument("--repeats", type=int, default=2, help="timed sampling runs")
    parser.add_argument("--vllm_dtype", default="bfloat16")
    parser.add_argument("--eager", action="store_true", help="vLLM without compilation")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per child")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help="default: benchmarks/results/")
    cli = parser.parse_args()
    if run_as_child(cli, CHILDREN):
        return

    hf = run_child(__file__, "transformers", cli, cli.timeout)
    vllm = run_child(__file__, "vllm", cli, cli.timeout) if HAVE_VLLM else None
    grpo = run_child(__file__, "grpo", cli, cli.timeout) if HAVE_VLLM else None
    cycle = hf["cycle"]
    rows = [
        {
            "engine": "transformers generate",
            "dtype": "float32",
            "start-up (s)": "-",
            "sampling tokens/s": hf["fp32_tokens_per_s"],
            "step (s)": cycle["step_s"],
            "rounds / step": cycle["rounds"],
            "round (s)": cycle["round_s"],
            "weight sync / round (s)": "-",
            "status": "ran",
        },
        {
            "engine": "transformers generate",
            "dtype": "bfloat16",
            "start-up (s)": "-",
            "sampling tokens/s": hf["bf16_tokens_per_s"],
            "step (s)": "-",
            "rounds / step": "-",
            "round (s)": "-",
            "weight sync / round (s)": "-",
            "status": "sampling only",
        },
    ]
    dash = dict.fromkeys(["start-up (s)", "sampling tokens/s", "step (s)", "rounds / step"], "-")
    dash |= {"round (s)": "-", "weight sync / round (s)": "-", "status": SKIPPED}
    if vllm is None:
        rows.append({"engine": "vLLM, colocated (CycleAlign)", "dtype": cli.vllm_dtype, **dash})
        rows.append({"engine": "TRL GRPOTrainer + vLLM colocate", "dtype": "-", **dash})
    else:
        rows.append(
            {
                "engine": "vLLM, colocated (CycleAlign)",
                "dtype": vllm["engine"]["dtype"],
                "start-up (s)": vllm["trainer_init_s"],
                "sampling tokens/s": vllm["tokens_per_s"],
                "step (s)": vllm["step_s"],
                "rounds / step": vllm["rounds"],
                "round (s)": vllm["round_s"],
                "weight sync / round (s)": vllm["sync_per_round_s"],
                "status": "ran, " + ("eager" if cli.eager else "compiled"),
            }
        )
        rows.append(
            {
                "engine": "TRL GRPOTrainer + vLLM colocate",
                "dtype": grpo["dtype"],
                "start-up (s)": grpo["trainer_init_s"],
                "sampling tokens/s": "-",
                "step (s)": grpo["step_s"],
                "rounds / step": 1,
                "round (s)": grpo["step_s"],
                "weight sync / round (s)": "-",
                "status": "ran, CPU sync patched (see notes)",
            }
        )
    ratios = {
        "sampling": vllm and vllm["tokens_per_s"] / hf["bf16_tokens_per_s"],
        "step": vllm and vllm["step_s"] / cycle["step_s"],
        "sync": vllm and vllm["sync_per_round_s"] / vllm["round_s"],
        "grpo": vllm and vllm["round_s"] / grpo["step_s"],
    }
    lines = {
        "sampling": "vLLM sampling / transformers bf16 sampling: {v} (target >= 2x: {m})",
        "step": "CycleAlign step with vLLM / with transformers: {v} (target <= 0.6x: {m})",
        "sync": "weight sync / round with vLLM: {v} (target <= 15 %: {m})",
        "grpo": "CycleAlign round with vLLM / TRL GRPO step with vLLM: {v} (target <= 1x: {m})",
    }
    notes = [
        f"Batch: {cli.prompts} prompts x {cli.samples} samples x {cli.tokens} new tokens "
        f"(exactly: min tokens = max tokens), temperature 1, on {cli.model}; CycleAlign steps "
        f"of {cli.rounds} rounds with a zero-latency ranker, fp32 training; medians after a "
        "warm-up. GRPO does one generation and one update a step: the work of one round.",
    ]
    for key, line in lines.items():
        value = ratios[key]
        shown = "-" if value is None else (f"{value:.0%}" if key == "sync" else f"{value:.2f}x")
        higher = key == "sampling"
        notes.append(line.format(v=shown, m=verdict(value, TARGETS[key], higher)))
    if vllm is not None:
        notes.append(f"TRL 1.16 on CPUs: {TRL_CPU_SYNC}.")
    else:
        notes.append(f"vLLM rows: {SKIPPED}.")
    emit(
        rows,
        caption="Sampling and CycleAlign steps: transformers generate and a colocated vLLM engine",
        notes=notes,
        details={"transformers": hf, "vllm": vllm, "grpo": grpo, "ratios": ratios},
        json_path=cli.json,
    )


if __name__ == "__main__":
    main()
