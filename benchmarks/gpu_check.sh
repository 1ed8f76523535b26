#!/usr/bin/env bash
# The prepared accelerator check (issue "Fast sampling, part 2"): the cycle in bf16 with
# transformers' generate on random models of SmolLM2-135M's and a ~1B shape; prints sampling
# tokens/s and each phase's time. Under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh --dry-run     # this CPU: one step, a 2-layer model
#   bash benchmarks/gpu_check.sh --download    # here, with network: fetch the wheels into .whl/
#   bash benchmarks/gpu_check.sh [--json F]    # the CUDA machine (no network), wheels in .whl/
#
# The CUDA machine's image has torch 2.11, transformers 5.17, accelerate, peft, pyarrow, pandas,
# xxhash and tokenizers, but no trl, datasets, evaluate, openai or vLLM. The check needs the
# pure-Python wheels below (about 3 MiB together); cyclealign itself comes from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

if [[ "${1:-}" == "--download" ]]; then
  grep -qs '^/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "${WHEELS[@]}"
  ls -l .whl
  exit 0
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [[ "${1:-}" != "--dry-run" ]]; then
  if ! python3 -c "import trl, datasets" 2>/dev/null; then
    ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run 'bash $0 --download' where pip works, and carry .whl" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu-check-site"
  fi
fi
exec python3 benchmarks/_gpu_check.py "$@"
