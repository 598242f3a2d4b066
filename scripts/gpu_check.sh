#!/usr/bin/env bash
# One command for a GPU machine: runs tests/gpu (NCCL broadcast into vLLM TP=1 / TP=2 where 2 / 3 GPUs
# exist, CUDA IPC on the policy's GPU, vLLM sleep mode around a sync, 10 PPO steps on a locally built
# ~100M-parameter model) and prints the benchmark lines they report:
#   generation tokens/s, training tokens/s, sync seconds and GB/s for the model's bytes, logprob gap.
# Aim: under 10 minutes on one GPU. Needs the GPU install (pip install -c constraints/gpu.txt -e '.[gpu]'): plain vllm, CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" - <<'PY'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_check: torch sees no CUDA device; nothing to check here (tests/gpu skips on the CPU)")
print(f"gpu_check: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PY
log="$(mktemp -t gpu_check.XXXXXX.log)"
set +e
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" timeout 900 "$PYTHON" -m pytest -q -s -rs tests/gpu 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
echo "================ gpu_check figures ================"
grep '^\[gpu\]' "$log" || echo "(no figures: see $log)"
echo "log: $log"
exit "$status"
