"""vLLM's OpenAI-compatible server as a real black box: started with scripts/vllm-serve.sh on
127.0.0.1, ready once ``GET /v1/models`` answers, stopped by its own PID.

Used by the ``vllm_server`` fixture of ``conftest.py`` (one server per test session). Only
in the environment scripts/vllm-env.sh builds (``pytest -m vllm``, see scripts/test-vllm.sh).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = "smollm2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """``bash scripts/vllm-serve.sh --port P --model DIR`` in its own process group."""

    def __init__(self, model_dir: str | Path, log_path: str | Path) -> None:
        self.model_dir = str(model_dir)
        self.log_path = Path(log_path)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    def start(self, timeout: float = 600.0) -> VLLMServer:
        env = {**os.environ, "VLLM_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
        command = ["bash", str(ROOT / "scripts" / "vllm-serve.sh"), "--port", str(self.port)]
        command += ["--model", self.model_dir]
        log = self.log_path.open("w")
        start = time.monotonic()
        # Its own session: the server (the script execs it, so this PID is the server's)
        # and its engine process form one process group, stopped together by stop().
        self.proc = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the vLLM server exited with status {self.proc.returncode}:\n{self.tail()}"
                )
            if self.models() is not None:
                self.startup_s = time.monotonic() - start
                return self
            if time.monotonic() - start > timeout:
                self.stop()
                raise TimeoutError(f"the vLLM server did not answer in {timeout} s:\n{self.tail()}")
            time.sleep(0.5)

    def models(self) -> list[str] | None:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return [m["id"] for m in json.loads(response.read())["data"]]
        except OSError:
            return None

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
