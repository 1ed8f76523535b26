"""Real multi-process runs on CPU: DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3 on one and on two
processes (ZeRO-3 with really partitioned parameters), FSDP2 and FSDP1 (really sharded),
LoRA, activation checkpointing, rankers that fail, a SIGKILL between checkpoints.

Each test launches ``tests/multiprocess/train_tiny.py`` as a user would (``accelerate
launch``) and compares what every process wrote. Recipes and traps: ``docs/trainer.md``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "multiprocess" / "train_tiny.py"
CONFIGS = ROOT / "examples" / "accelerate_configs"
TIMEOUT_S = 420  # the first DeepSpeed launch on a machine compiles an op (~100 s)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

# DeepSpeed keeps parameters under 1e5 elements whole by default: the tiny model would never be
# partitioned. A threshold of 0 partitions every parameter, so generation must gather them.
ZERO3_PARTITIONED = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_env() -> dict[str, str]:
    # The code next to these tests, whichever checkout the installed package points to.
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        # DeepSpeed compiles a communication op once (~100 s); keep it between runs.
        "TORCH_EXTENSIONS_DIR": os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "cyclealign-torch-extensions")
        ),
    }


def run(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run to the end or for TIMEOUT_S at most; returns the exit status and the output."""
    # Own session: on a timeout the launcher AND its workers are killed, nothing lingers.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{command[-1]}... hung for {TIMEOUT_S} s:\n{output[-6000:]}")
    return proc.returncode, output


def launch(
    out: Path,
    *script_args: str,
    processes: int = 2,
    config: Path | None = None,
    use_cpu: bool = False,
    expect_kill: bool = False,
) -> list:
    """``processes`` processes of the script: plain DDP (gloo), or what ``config`` says
    (``use_cpu``: with ACCELERATE_USE_CPU=1, as FSDP configs need on CPUs). ``expect_kill``:
    the script SIGKILLs itself; returns nothing."""
    env = script_env()
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    if config is not None:
        command += ["--config_file", str(config)]
    elif processes > 1:
        # Both are needed on a CPU-only machine: without ACCELERATE_USE_CPU=1 two independent
        # rank-0 copies start, with no error.
        env["ACCELERATE_USE_CPU"] = "1"
        command += ["--multi_gpu"]
    command += ["--num_processes", str(processes), "--main_process_port", str(free_port())]
    command += [str(SCRIPT), "--out", str(out), *script_args]
    returncode, output = run(command, env)
    if expect_kill:
        assert returncode != 0 and "SIGKILL" in output, output[-6000:]
        return []
    assert returncode == 0, f"launch failed ({returncode}):\n{output[-6000:]}"
    results = [json.loads((out / f"rank{i}.json").read_text()) for i in range(processes)]
    # A wrong launch starts unrelated single-process runs: each would say 1.
    assert [r["num_processes"] for r in results] == [processes] * processes, output[-3000:]
    assert [r["process_index"] for r in results] == list(range(processes))
    return results


def logged(result: dict, name: str) -> list:
    return [h[name] for h in result["log_history"] if name in h and "train_runtime" not in h]


def updates(result: dict) -> list:
    return logged(result, "cycle/updates")


def assert_ranks_identical(a: dict, b: dict) -> None:
    assert set(a["prompts_seen"]).isdisjoint(b["prompts_seen"])  # each rank its own prompts
    assert a["final"] == b["final"], "parameters differ between ranks"
    assert a["pool"] == b["pool"] and a["pool"]["items"], "pools differ or are empty"
    assert updates(a) == updates(b)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("ddp"))


# -- DDP ---------------------------------------------------------------------------------------


def test_ddp_two_processes_stay_identical(ddp_run):
    a, b = ddp_run
    assert "MULTI_CPU" in a["distributed_type"]
    assert_ranks_identical(a, b)
    assert a["final"] != a["initial"]
    assert updates(a) == [2.0, 2.0] and a["global_step"] == 2


def test_ddp_one_rank_failing_while_the_other_agrees_finishes(tmp_path):
    a, b = launch(tmp_path, "--scenario", "one_fails")
    assert a["final"] == b["final"] and a["final"] != a["initial"]
    assert a["pool"] == b["pool"]
    # Rank 1's failed prompts never count as agreeing, so no early stop: both ranks ran
    # the same number of rounds (anything else would hang a collective).
    assert updates(a) == updates(b) == [2.0, 2.0]


def test_ddp_no_usable_ranking_anywhere_changes_nothing(tmp_path):
    a, b = launch(tmp_path, "--scenario", "all_fail")
    assert a["final"] == b["final"] == a["initial"]
    assert updates(a) == [0.0, 0.0] and a["global_step"] == 2


def test_ddp_lora_trains_only_the_adapter(tmp_path):
    a, b = launch(tmp_path, "--peft")
    assert a["final"] == b["final"] and a["final"] != a["initial"]
    assert a["base_unchanged"] is True and b["base_unchanged"] is True
    assert a["pool"] == b["pool"]


def test_ddp_with_activation_checkpointing_every_second_layer(tmp_path):
    a, b = launch(tmp_path, "--gradient_checkpointing", "--checkpoint_every_n_layers", "2")
    assert "MULTI_CPU" in a["distributed_type"]
    assert_ranks_identical(a, b)
    assert a["final"] != a["initial"]
    assert logged(a, "cycle/updates") == [2.0, 2.0]
    assert all(math.isfinite(v) for v in logged(a, "loss"))
    for rank in (a, b):
        # The settings survived every generation: only layer 0 of 2 is checkpointed, and the
        # embedding has one input-grad hook, not one more per round.
        assert rank["checkpointing_flags"] == [True, False]
        assert rank["embedding_hooks"] == 1
        calls = [tuple(c) for c in rank["layer_calls"]]
        sampling = [c for c in calls if c[0]]
        training = [c for c in calls if not c[0]]
        # Generation ran unchecked and with the KV cache (one new token per call) ...
        assert sampling and not any(flag for _, flag, _ in sampling)
        assert sum(length == 1 for *_, length in sampling) > len(sampling) / 2
        # ... and the training forward passes (one per round, 2 steps x 2) were checkpointed.
        assert len(training) >= 4 and all(flag for _, flag, _ in training)


def test_ddp_step_without_any_ranking_then_a_step_that_learns(tmp_path):
    # Step 1: every request on both ranks fails, so its rounds run a forward with no
    # backward anywhere. Step 2 must still train, in step, on both ranks.
    a, b = launch(tmp_path, "--scenario", "fail_first_step")
    assert_ranks_identical(a, b)
    assert logged(a, "cycle/updates") == [0.0, 2.0] and a["global_step"] == 2
    assert logged(a, "ranker/failure_rate") == [1.0, 0.0]
    assert a["final"] != a["initial"]


# -- DeepSpeed ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("plain"), processes=1)[0]


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_inner_rounds_match_the_plain_run(tmp_path, plain_run, config):
    (ds,) = launch(tmp_path, processes=1, config=CONFIGS / config)
    assert "DEEPSPEED" in ds["distributed_type"]
    # Two rounds a step, each an optimizer update through DeepSpeed's engine step: the
    # same losses, weights and pool as the plain run.
    assert updates(ds) == updates(plain_run) == [2.0, 2.0]
    losses = [h["loss"] for h in ds["log_history"] if "loss" in h]
    plain_losses = [h["loss"] for h in plain_run["log_history"] if "loss" in h]
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    # One learning-rate schedule, stepped once per training step as without DeepSpeed: the
    # linear decay over 2 steps logs the rate each step used (stepped once per round, the
    # second step would have run at 0).
    assert logged(ds, "learning_rate") == pytest.approx(logged(plain_run, "learning_rate"))
    assert logged(ds, "learning_rate") == pytest.approx([1e-3, 5e-4])
    assert ds["final"][1] == pytest.approx(plain_run["final"][1], rel=1e-9)
    assert ds["final"][1] != pytest.approx(ds["initial"][1], rel=1e-9)
    assert ds["pool"] == plain_run["pool"]


def test_deepspeed_config_with_its_own_scheduler_is_refused_at_start(tmp_path):
    own_schedule = {
        "zero_optimization": {"stage": 2},
        "gradient_accumulation_steps": 1,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 1}},
    }
    (tmp_path / "ds.json").write_text(json.dumps(own_schedule))
    config = tmp_path / "zero2_own_scheduler.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\n"
        "distributed_type: DEEPSPEED\n"
        "deepspeed_config:\n"
        f"  deepspeed_config_file: {tmp_path / 'ds.json'}\n"
        "  zero3_init_flag: false\n"
        "num_machines: 1\n"
        "num_processes: 1\n"
        "machine_rank: 0\n"
        "rdzv_backend: static\n"
        "same_network: true\n"
        "use_cpu: false\n"
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    command += ["--num_processes", "1", "--main_process_port", str(free_port())]
    command += [str(SCRIPT), "--out", str(tmp_path / "out")]
    returncode, output = run(command, script_env())
    assert returncode != 0
    assert "has its own 'scheduler' section" in output
    assert "Remove the scheduler section from the DeepSpeed JSON" in output
    assert not (tmp_path / "out" / "rank0.json").exists()  # refused before any training


def zero3_partitioned_config(folder: Path) -> Path:
    (folder / "ds.json").write_text(json.dumps(ZERO3_PARTITIONED))
    # accelerate refuses a config file next to fields it would override (mixed_precision too).
    config = folder / "zero3_partitioned.yaml"
    config.write_text(
        "compute_environment: LOCAL_MACHINE\n"
        "distributed_type: DEEPSPEED\n"
        "deepspeed_config:\n"
        f"  deepspeed_config_file: {folder / 'ds.json'}\n"
        "  zero3_init_flag: true\n"
        "num_machines: 1\n"
        "num_processes: 2\n"
        "machine_rank: 0\n"
        "rdzv_backend: static\n"
        "same_network: true\n"
        "use_cpu: false\n"
    )
    return config


@pytest.mark.parametrize("setup", ["zero2", "zero3_partitioned_checkpointing"])
def test_deepspeed_two_processes_match_ddp(tmp_path, ddp_run, setup):
    if setup == "zero2":
        # No ddp_backend: the config picks gloo itself when there is no accelerator.
        config, extra = CONFIGS / "zero2.yaml", []
    else:
        config = zero3_partitioned_config(tmp_path)
        extra = ["--gradient_checkpointing", "--ddp_backend", "gloo"]
    a, b = launch(tmp_path / "out", *extra, config=config)
    assert "DEEPSPEED" in a["distributed_type"] and a["ddp_backend"] == "gloo"
    assert_ranks_identical(a, b)
    if setup != "zero2":
        assert a["partitioned"] > 0 and a["checkpointing_flags"] == [True, True]
    ref = ddp_run[0]
    # Same prompts per rank, same rounds, losses, pool and weights as plain DDP: every inner
    # round went through DeepSpeed's engine step and gradients were averaged the same way.
    assert [r["prompts_seen"] for r in (a, b)] == [r["prompts_seen"] for r in ddp_run]
    assert logged(a, "cycle/updates") == logged(ref, "cycle/updates") == [2.0, 2.0]
    assert logged(a, "loss") == pytest.approx(logged(ref, "loss"), rel=1e-5)
    assert a["pool"] == ref["pool"]
    # Across ranks of one run the weights are identical (checksums, above). Against DDP they are
    # not: ZeRO reduce-scatters gradients partition by partition while DDP all-reduces buckets,
    # so float32 sums are taken in another order and each gradient entry differs by a few ulp
    # (~1e-7 relative: the logged grad norms agree to ~6e-8). Adam turns that into a relative
    # difference of the same order in each update of lr = 1e-3, so over 4 updates of ~1.2e5
    # weights the sum of |w| (~2.2e3) may move by at most 4 * 1.2e5 * 1e-3 * 1e-7 ~ 5e-5, i.e.
    # ~2e-8 relative (measured: 1.4e-9). rel = 1e-6 leaves room for that and is still 800x
    # tighter than one update (the 4 updates move the sum by 3.3e-3 relative, so a skipped one
    # fails). A wrong gradient scale does not show in the weights (Adam and clipping undo it:
    # checked by doubling the loss under DeepSpeed, which left the sum within 1e-10), so the
    # grad norms are compared too (that mutation doubled them).
    assert a["final"][1] == pytest.approx(ref["final"][1], rel=1e-6)
    assert a["final"][1] != pytest.approx(a["initial"][1], rel=1e-4)
    assert logged(a, "grad_norm") == pytest.approx(logged(ref, "grad_norm"), rel=1e-5)


# -- FSDP --------------------------------------------------------------------------------------

FSDP2_CPU = CONFIGS / "fsdp2_cpu.yaml"
# Checkpoints after every step (for the resume tests) and save_model at the end.
FSDP_ARGS = ("--save_steps", "1", "--save_model")


def fsdp1_cpu_config(folder: Path) -> Path:
    """FSDP1 on CPUs: fsdp2_cpu.yaml with FSDP1's settings (see docs/trainer.md)."""
    text = FSDP2_CPU.read_text().replace("fsdp_version: 2", "fsdp_version: 1")
    text = text.replace(
        "fsdp_reshard_after_forward: true",
        "fsdp_reshard_after_forward: FULL_SHARD\n"
        "  fsdp_use_orig_params: true\n"
        "  fsdp_sync_module_states: false",  # true looks for a GPU
    )
    assert "fsdp_version: 1" in text and "FULL_SHARD" in text
    (folder / "fsdp1_cpu.yaml").write_text(text)
    return folder / "fsdp1_cpu.yaml"


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    return out, launch(out, *FSDP_ARGS, config=FSDP2_CPU, use_cpu=True)


@pytest.fixture(scope="module")
def fsdp1_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp1")
    config = fsdp1_cpu_config(folder)
    return folder / "out", launch(folder / "out", *FSDP_ARGS, config=config, use_cpu=True)


def max_weight_difference(a: dict, b: dict) -> float:
    import torch

    mine, theirs = torch.load(a["weights"]), torch.load(b["weights"])
    assert mine.keys() == theirs.keys()  # FSDP's wrappers left no trace in the names
    return max(float((mine[k].double() - theirs[k].double()).abs().max()) for k in mine)


@pytest.mark.parametrize("version", [2, 1])
def test_fsdp_two_processes_shard_and_match_ddp(request, ddp_run, version):
    _, (a, b) = request.getfixturevalue(f"fsdp{version}_run")
    assert "FSDP" in a["distributed_type"] and a["fsdp_version"] == b["fsdp_version"] == version
    # Really sharded: between steps each process holds its half of the parameters only.
    assert a["local_numel"] + b["local_numel"] == a["numel"] > a["local_numel"]
    assert_ranks_identical(a, b)
    ref = ddp_run[0]
    assert [r["prompts_seen"] for r in (a, b)] == [r["prompts_seen"] for r in ddp_run]
    assert updates(a) == updates(ref) == [2.0, 2.0]
    # Per step, the inner round's update and the Trainer's, each changing this rank's shard.
    assert a["optimizer_steps"] == b["optimizer_steps"] == [0, 0, 1, 1]
    assert a["pool"] == ref["pool"]
    # Tolerance. With 2 processes the gradients are bitwise those of DDP: reduce-scatter and
    # all-reduce both compute a + b (one rounding, either order) and halve it exactly (checked:
    # with max_grad_norm=0 the weights are bitwise equal). Only the clipping norm differs:
    # FSDP adds per-shard partial sums of squares, DDP per-tensor norms, so the norm (~11 here,
    # clipped to 1) and the clip coefficient differ by ~1 float32 ulp (~1e-7 relative; the
    # logged grad norms: 11.544005 vs 11.544006). Adam's step m / (sqrt(v) + eps) is unchanged
    # by a common scale up to that ~1e-7, so an update of lr = 1e-3 differs by ~1e-10 per
    # weight; the changed weights then change the next gradients as little. Measured over the 4
    # updates: max |w_fsdp - w_ddp| = 7.5e-9 (FSDP2 and FSDP1), ||diff||_2 = 1.3e-7. atol 1e-6
    # leaves 100x room and is 1000x below one update (Adam's first step moves each weight by
    # ~lr), so a skipped or extra update fails. The losses: the first round sees identical
    # weights, later ones weights within ||diff||_2 = 1.3e-7 with a gradient norm of ~11, a
    # change below 2e-6 of a loss of ~13 (measured: equal); rel 1e-5 is ~10 float32 ulp. A
    # wrong gradient scale leaves Adam's weights alone, but not the grad norms (rel 1e-6: 10
    # ulp).
    assert max_weight_difference(a, ref) <= 1e-6
    assert logged(a, "loss") == pytest.approx(logged(ref, "loss"), rel=1e-5)
    assert logged(a, "grad_norm") == pytest.approx(logged(ref, "grad_norm"), rel=1e-6)
    # save_model wrote the full trained weights, named as in the model (FSDP1 on CPUs: sharded,
    # merged here with accelerate's merge_fsdp_weights as the warning says).
    assert a["saved_model"] == a["final"]


def test_fsdp2_kill_and_resume_ends_as_the_uninterrupted_run(tmp_path, fsdp2_run):
    """SIGKILLed when step 2 ends (after checkpoint-1, before checkpoint-2), then resumed:
    the same weights, bitwise, and the same pool as the run that was never stopped."""
    _, (whole, _) = fsdp2_run
    out = tmp_path / "killed"
    kill = ("--kill_at_step", "2")
    launch(out, *FSDP_ARGS, *kill, config=FSDP2_CPU, use_cpu=True, expect_kill=True)
    assert (out / "checkpoint-1" / "pytorch_model_fsdp_0").is_dir()  # sharded, with the pool
    assert (out / "checkpoint-1" / "cyclealign_state.json").exists()
    assert not (out / "checkpoint-2").exists()
    a, b = launch(out, *FSDP_ARGS, "--resume", config=FSDP2_CPU, use_cpu=True)
    assert a["global_step"] == 2 and a["optimizer_steps"] == [1, 1]  # step 2 only
    assert a["final"] == b["final"] == whole["final"] != whole["initial"]
    assert a["pool"] == b["pool"] == whole["pool"]
    assert logged(a, "loss") == logged(whole, "loss")


def test_fsdp1_resumes_a_sharded_checkpoint_exactly(tmp_path, fsdp1_run):
    # Resuming checkpoint-1 of the FSDP1 run must repeat its step 2 exactly. Without
    # cyclealign's fix accelerate restores no Adam state under FSDP1 (the optimizer restarts
    # silently; the weights then end 1.8e-3 away).
    out, (whole, _) = fsdp1_run
    shutil.copytree(out / "checkpoint-1", tmp_path / "out" / "checkpoint-1")
    config = fsdp1_cpu_config(tmp_path)
    a, b = launch(tmp_path / "out", *FSDP_ARGS, "--resume", config=config, use_cpu=True)
    assert a["global_step"] == 2 and a["optimizer_steps"] == [1, 1]
    assert a["final"] == b["final"] == whole["final"]
    assert a["pool"] == b["pool"] == whole["pool"]


def test_fsdp2_lora_three_rounds_three_updates_per_step(tmp_path):
    a, b = launch(
        tmp_path, "--peft", "--max_rounds", "3", "--evaluate", config=FSDP2_CPU, use_cpu=True
    )
    assert a["fsdp_version"] == 2 and a["local_numel"] < a["numel"]
    # (Not assert_ranks_identical: the evaluation prompts are also some ranks' training prompts.)
    assert a["final"] == b["final"] and a["pool"] == b["pool"] and a["pool"]["items"]
    assert a["final"] != a["initial"] and a["base_unchanged"] is b["base_unchanged"] is True
    # max_rounds=3: three optimizer updates in every training step (two between rounds, the
    # Trainer's after the last), while global_step advances by one.
    assert a["global_step"] == 2 and updates(a) == [3.0, 3.0]
    assert a["optimizer_steps"] == b["optimizer_steps"] == [0, 0, 0, 1, 1, 1]
    # evaluate() before train() is refused with the way out, which works: eval_on_start
    # (step 0), then evaluate() after training.
    assert "eval_on_start=True" in a["eval_refused"]
    evals = logged(a, "eval_loss")
    assert len(evals) == 2 and all(math.isfinite(v) for v in evals)
    assert evals[-1] == a["final_eval"]["eval_loss"] == b["final_eval"]["eval_loss"]


def test_fsdp2_one_process_matches_the_plain_run(tmp_path, plain_run):
    (f,) = launch(tmp_path, processes=1, config=FSDP2_CPU, use_cpu=True)
    assert "FSDP" in f["distributed_type"] and f["fsdp_version"] == 2
    # One shard is the whole tensor and the clip norm the same sum: bitwise the plain run.
    assert f["final"] == plain_run["final"] != f["initial"]
    assert f["pool"] == plain_run["pool"]
    assert logged(f, "loss") == logged(plain_run, "loss")


def test_sigkill_between_checkpoints_resumes_and_pays_nothing_twice(tmp_path):
    """Killed after step 3 with the last checkpoint at step 2: the resumed run repeats step 3
    from the SQLite cache (written before the kill) and pays only for step 4."""
    from chat_server import ChatServer, rank_by

    def train(out: str, server, *extra: str) -> tuple[int, str]:
        command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / out)]
        command += ["--ranker_url", server.base_url, "--cache", str(tmp_path / f"{out}.sqlite")]
        command += ["--steps", "4", "--save_steps", "2", *extra]
        return run(command, script_env())

    judge = rank_by(lambda text: text.count("e"))
    with ChatServer(judge) as server:
        code, output = train("whole", server)
        assert code == 0, output[-6000:]
        paid_whole = server.count
    with ChatServer(judge) as server:
        code, output = train("killed", server, "--kill_at_step", "3")
        assert code == -signal.SIGKILL, output[-6000:]
        assert not (tmp_path / "killed" / "checkpoint-3").exists()
        paid_before_kill = server.count
        code, output = train("killed", server, "--resume")
        assert code == 0, output[-6000:]
        paid_after_resume = server.count - paid_before_kill
    whole = json.loads((tmp_path / "whole" / "rank0.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "rank0.json").read_text())
    assert resumed["global_step"] == 4
    assert resumed["final"] == whole["final"] != whole["initial"]
    assert resumed["pool"] == whole["pool"]
    assert 0 < paid_after_resume < paid_before_kill < paid_whole
    assert paid_before_kill + paid_after_resume == paid_whole
    # Step 3 (re-run) came from the cache, step 4 from the server.
    requests, hits = logged(resumed, "ranker/requests"), logged(resumed, "ranker/cache_hits")
    assert requests[-2] == 0 and hits[-2] > 0
    assert requests[-1] > 0 and hits[-1] == 0


def test_a_budget_holds_across_a_sigkill_and_a_resume_from_an_older_checkpoint(tmp_path):
    """budget_requests=8 for a job that wants 12 (6 steps of 2 prompts, one round each):
    killed after step 2 with the last checkpoint at step 1, resumed. The ledger in the cache
    file counted what steps 1-2 paid, so the server sees exactly 8 requests in all."""
    from chat_server import ChatServer, rank_by

    def train(server, *extra: str) -> tuple[int, str]:
        command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")]
        command += ["--ranker_url", server.base_url, "--cache", str(tmp_path / "c.sqlite")]
        command += ["--steps", "6", "--save_steps", "1", "--max_rounds", "1"]
        command += ["--budget_requests", "8", *extra]
        return run(command, script_env())

    with ChatServer(rank_by(lambda text: text.count("e"))) as server:
        code, output = train(server, "--kill_at_step", "2")
        assert code == -signal.SIGKILL, output[-6000:]
        assert (tmp_path / "out" / "checkpoint-1").exists()
        assert not (tmp_path / "out" / "checkpoint-2").exists()
        paid_before_kill = server.count
        code, output = train(server, "--resume")
        assert code == 0, output[-6000:]
        paid_after_resume = server.count - paid_before_kill
    resumed = json.loads((tmp_path / "out" / "rank0.json").read_text())
    assert resumed["global_step"] == 6
    assert paid_before_kill == 4  # two steps of two requests, before the kill
    assert paid_before_kill + paid_after_resume == 8  # exactly the budget, over the whole job
    assert paid_after_resume > 0  # the resumed run sent the remainder
    # It wanted more: the requests past the budget failed as "budget exhausted".
    assert sum(logged(resumed, "ranker/failures")) > 0
