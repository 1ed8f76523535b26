"""Benchmarks that measure each engine in a child process of their own (vLLM engines are not
freed reliably, and each engine must find the machine as the others left it): the parent
runs its own script again with ``--child NAME`` and reads the child's ``RESULT`` line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any


def run_as_child(cli: Any, children: dict[str, Callable[[Any], dict]]) -> bool:
    """In a child (``cli.child`` set): run it and print its result line; returns True. In
    the parent: keep the command-line options for the children (``--json`` left out) in
    ``cli.passthrough``; returns False."""
    if cli.child:
        print("RESULT " + json.dumps(children[cli.child](cli)), flush=True)
        return True
    argv = sys.argv[1:]
    if "--json" in argv:
        i = argv.index("--json")
        argv = argv[:i] + argv[i + 2 :]
    cli.passthrough = argv
    return False


def run_child(script: str, name: str, cli: Any, timeout: float) -> dict:
    """Run ``script --child name`` with the parent's options; its result, or exit with its
    output's tail."""
    command = [sys.executable, script, "--child", name, *cli.passthrough]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"child {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    last = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    return json.loads(last.removeprefix("RESULT "))
