"""The README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block, "README.md must open with a ```bash block of commands"
    return [
        line.strip()
        for line in first_block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_readme_opens_with_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < 200, "the commands must come first"


def test_ci_runs_the_readme_test_command_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2, commands  # the main job, then the tests
    assert commands[1].endswith('&& python -m pytest -m "not vllm" && bash scripts/test-vllm.sh')
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands[1] in ci
    # ... with the vLLM tests required: a skip there is a failure.
    assert "export CYCLEALIGN_REQUIRE_VLLM=1" in ci[: ci.index(commands[1])]


def test_the_vllm_test_script_builds_its_environment_then_runs_the_vllm_tests():
    script = (ROOT / "scripts" / "test-vllm.sh").read_text()
    env = script.index("bash scripts/vllm-env.sh")
    vllm = script.index('"$VLLM_PY" -m pytest -m vllm')
    assert env < vllm
    assert "set -euo pipefail" in script  # a failing or empty (exit 5) run fails the script
