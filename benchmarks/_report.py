"""How every benchmark script ends: its table on stdout, and the same rows with the command
and the machine that produced them in ``benchmarks/results/<script>.json``.

``docs/benchmarks.md`` quotes the committed result files between ``<!-- results:NAME -->``
and ``<!-- /results:NAME -->``; ``python benchmarks/_report.py`` rewrites those blocks from
the files, and ``tests/test_benchmarks.py`` checks that they match, so the documented numbers
are the scripts' own.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cyclealign.evaluation.report import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
_STARTED = time.monotonic()  # scripts import this module first: their run time from here


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        memory_gib = None
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_gib) if memory_gib else None,
        "processor": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def commit() -> str | None:
    """HEAD, with "+changes" when the library or the benchmarks differ from it: such results
    did not come from code anyone can check out."""
    head = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", "src", "benchmarks/*.py", "tests/chat_server.py")
    return f"{head}+changes" if head and changed else head


def emit(
    rows: Sequence[Mapping[str, Any]],
    *,
    caption: str,
    notes: Sequence[str] = (),
    details: Mapping[str, Any] | None = None,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Print ``caption``, the rows as a Markdown table and ``notes``; write them, and
    ``details`` (JSON only), to ``json_path`` (default ``benchmarks/results/<script>.json``)."""
    script = Path(sys.argv[0]).resolve()
    table = markdown_table(rows)
    result = {
        "command": shlex.join(["python", f"benchmarks/{script.name}", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(),
        "commit": commit(),
        "run_s": round(time.monotonic() - _STARTED),
        "machine": machine(),
        "caption": caption,
        "rows": [dict(r) for r in rows],
        "table": table,
        "notes": list(notes),
        "details": dict(details or {}),
    }
    print(f"{caption}\n\n{table}")
    for note in notes:
        print(note)
    path = Path(json_path) if json_path else RESULTS / f"{script.stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwritten: {path}")
    return result


def describe(result: Mapping[str, Any]) -> str:
    """The block ``docs/benchmarks.md`` shows for one result file."""
    m = result["machine"]
    where = f"{m['cpus']} x {m['processor']}, {m['memory_gib']} GiB, torch {m['torch']}"
    where += ", CUDA" if m["cuda"] else ", no GPU"
    lines = [
        f"`{result['command']}`: {result['run_s']} s on {where}; {result['date']}, commit "
        f"{result['commit']}.",
        "",
        result["caption"],
        "",
        result["table"].rstrip("\n"),
    ]
    if result["notes"]:
        lines += ["", *result["notes"]]
    return "\n".join(lines)


def render_docs(path: Path) -> str:
    """``path``'s text with every results block rewritten from ``benchmarks/results/``."""

    def block(match: re.Match[str]) -> str:
        name = match.group(1)
        result = json.loads((RESULTS / f"{name}.json").read_text())
        return f"<!-- results:{name} -->\n{describe(result)}\n<!-- /results:{name} -->"

    pattern = re.compile(r"<!-- results:(\w+) -->.*?<!-- /results:\1 -->", re.S)
    return pattern.sub(block, path.read_text())


if __name__ == "__main__":
    docs = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    docs.write_text(render_docs(docs))
    print(f"rewritten from {RESULTS}: {docs}")
