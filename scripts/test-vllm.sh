#!/usr/bin/env bash
# The vLLM tests (marker `vllm`), in the environment scripts/vllm-env.sh builds (once; cached
# under ~/.cache/cyclealign). The README's test command runs the main suite
# (`python -m pytest -m "not vllm"`), then this script.
#
#   bash scripts/test-vllm.sh
#
# Where vLLM cannot be installed (another OS or CPU) the vLLM tests are left out with a
# message; with CYCLEALIGN_REQUIRE_VLLM=1 (as .ci/run sets) that fails instead, and so does
# any vLLM test that skips.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== vLLM environment" >&2
status=0
VLLM_PY=$(PYTHON=${PYTHON:-$(command -v python)} bash scripts/vllm-env.sh | tail -n1) || status=$?
if [[ $status -ne 0 ]]; then
    if [[ "${CYCLEALIGN_REQUIRE_VLLM:-0}" == 1 ]]; then
        echo "test-vllm.sh: the vLLM environment could not be built (status $status) and" \
            "CYCLEALIGN_REQUIRE_VLLM=1: failing" >&2
        exit 1
    fi
    echo "test-vllm.sh: no vLLM environment here (status $status): the vLLM tests did not run" >&2
    exit 0
fi

# The checkout's code, not an installed copy: the environment holds third-party packages only.
# One pytest session per file: each starts its vLLM processes (a server, an engine, the two
# engines of the 2-process tests, the benchmark's engines one after the other) and stops
# them before the next file's start. Only the vLLM test files are collected
# (the others import what this environment lacks); pytest's exit status 5 (no test
# collected) fails like any other.
# OpenMP workers that spin stall everything else on two cores (an engine, a server, the
# trainer's threads): wait passively.
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
for file in tests/test_vllm_*.py; do
    echo "== vLLM tests: $file ($VLLM_PY)" >&2
    "$VLLM_PY" -m pytest -m vllm -p no:cacheprovider "$file"
done
