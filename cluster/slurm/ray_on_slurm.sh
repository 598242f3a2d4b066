#!/usr/bin/env bash
# Run rlhf on a Slurm allocation: a Ray head on the first node, a Ray worker on every other
# node, then `python -m rlhf.run $CONFIG` on the head node against that cluster.
#
#   sbatch --nodes=2 --export=ALL,CONFIG=configs/ppo.yaml,RUN_DIR=/shared/$USER/runs/ppo-7b \
#       cluster/slurm/ray_on_slurm.sh [key=value ...]
#
# Submit from the repo root (the job runs there: $SLURM_SUBMIT_DIR). Extra arguments are
# config overrides (e.g. rollout.num_engines=4). The Python environment with rlhf installed
# (`pip install -c constraints/gpu.txt -e .[gpu]`) must be visible on every node: RLHF_VENV,
# or the repo's .venv, or whatever is active when you call sbatch (--export=ALL carries PATH
# to every srun step).
#
# RUN_DIR must be on a filesystem every node sees (Lustre, GPFS, NFS): it becomes
# logging.output_dir, so metrics.jsonl and checkpoints land there. A failed or preempted job
# resubmitted with the same RUN_DIR resumes from the newest complete checkpoint
# (checkpoint.resume=auto), also after `scontrol requeue` or with --requeue below.
#
# CHANGE the #SBATCH lines to your site: partition/account, GPUs and CPUs per node, time.
#SBATCH --job-name=rlhf
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
##SBATCH --partition=gpu
##SBATCH --account=myproject
##SBATCH --requeue

set -euo pipefail

CONFIG=${CONFIG:-configs/ppo.yaml}
RUN_DIR=${RUN_DIR:?set RUN_DIR to a directory on a shared filesystem, e.g. /shared/\$USER/runs/ppo-7b}
RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
NODE_WAIT_S=${NODE_WAIT_S:-600}
# Extra `ray start` flags for every node, e.g. RAY_START_ARGS="--temp-dir=/local/ray".
read -r -a RAY_START_ARGS <<< "${RAY_START_ARGS:-}"

cd "${SLURM_SUBMIT_DIR:-$PWD}"
if [ -n "${RLHF_VENV:-}" ]; then
    source "$RLHF_VENV/bin/activate"
elif [ -x .venv/bin/python ]; then
    source .venv/bin/activate
fi
mkdir -p "$RUN_DIR"

# Nodes: the batch script runs on the allocation's first node; that one hosts the Ray head
# (and its GPUs, which Ray uses like any worker's).
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE=${SLURMD_NODENAME:-${NODES[0]}}
WORKER_NODES=()
for node in "${NODES[@]}"; do
    [ "$node" = "$HEAD_NODE" ] || WORKER_NODES+=("$node")
done
# The address the other nodes reach the head on. Set HEAD_IP yourself if the first address
# is not on the cluster network (e.g. a docker bridge or a management NIC).
HEAD_IP=${HEAD_IP:-$(hostname -I | awk '{print $1}')}
export RAY_ADDRESS="$HEAD_IP:$RAY_PORT"

# Ray token authentication, with one token per job in RUN_DIR (readable only by you). srun
# passes these variables on, so the head, the workers and the driver all use the same token.
# The token is deleted when this script exits (the run ended, failed, or Slurm sent SIGTERM at
# scancel or the time limit): it is only good for this job's cluster.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$RUN_DIR/.ray_auth_token.${SLURM_JOB_ID:-$$}"
trap 'rm -f "$RAY_AUTH_TOKEN_PATH"' EXIT
trap 'exit 143' TERM INT  # exit through the EXIT trap
(umask 077 && python -c 'import secrets; print(secrets.token_hex(32))' > "$RAY_AUTH_TOKEN_PATH")

CPUS=${SLURM_CPUS_PER_TASK:-$(nproc)}
# Each `ray start` is one step holding its node's CPUs and GPUs. Say so explicitly: newer srun
# does not inherit --cpus-per-task from sbatch, and a 1-CPU step would pin all of Ray to one core.
STEP=(--nodes=1 --ntasks=1 --cpus-per-task="$CPUS")
[ -z "${SLURM_GPUS_PER_NODE:-}" ] || STEP+=(--gpus-per-node="$SLURM_GPUS_PER_NODE")
echo "ray head on $HEAD_NODE ($RAY_ADDRESS), workers: ${WORKER_NODES[*]:-none}"

# --block keeps each `ray start` in the foreground, so its srun step lives as long as the job
# and Slurm stops Ray when the job ends. GPUs are detected from the CUDA_VISIBLE_DEVICES
# that Slurm sets for the step. The dashboard (and its job API) listens on the head's cluster
# address only, not on every interface of the node.
srun "${STEP[@]}" -w "$HEAD_NODE" \
    ray start --head --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
    --dashboard-host="$HEAD_IP" --dashboard-port="$RAY_DASHBOARD_PORT" \
    --num-cpus="$CPUS" --disable-usage-stats "${RAY_START_ARGS[@]}" --block &
HEAD_STEP=$!

# Workers only after the head answers, or they give up trying to join. (`ray health-check`
# is what KubeRay's pod probes call.)
deadline=$((SECONDS + NODE_WAIT_S))
until ray health-check --address "$RAY_ADDRESS" >/dev/null 2>&1; do
    kill -0 "$HEAD_STEP" 2>/dev/null || { echo "ray start --head failed (its output is above)" >&2; exit 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "ray head did not start in ${NODE_WAIT_S}s" >&2; exit 1; }
    sleep 5
done

for node in "${WORKER_NODES[@]}"; do
    srun "${STEP[@]}" -w "$node" \
        ray start --address="$RAY_ADDRESS" --num-cpus="$CPUS" --disable-usage-stats "${RAY_START_ARGS[@]}" --block &
done

# Wait until every node has joined: rlhf checks the cluster against its plan once, at start,
# and fails fast (exit 3) if GPUs are missing, so it must not start while workers still join.
python - "${#NODES[@]}" "$((deadline - SECONDS))" <<'PY'
import sys, time

import ray

want, deadline = int(sys.argv[1]), time.time() + max(float(sys.argv[2]), 60.0)
ray.init(logging_level="ERROR")
while True:
    alive = sum(node["Alive"] for node in ray.nodes())
    if alive >= want:
        print(f"{alive} Ray nodes up, resources: {ray.cluster_resources()}")
        break
    if time.time() > deadline:
        sys.exit(f"only {alive} of {want} Ray nodes joined")
    time.sleep(5)
PY

# The driver runs here, on the head node, and connects through RAY_ADDRESS. Its exit code
# (0 ok, 2 config/data error, 3 cluster too small, 1 run failed) is the job's. Not `exec`:
# this shell stays to delete the token. When it exits, Slurm ends the job and with it every
# `ray start` step.
status=0
python -m rlhf.run "$CONFIG" logging.output_dir="$RUN_DIR" checkpoint.resume=auto "$@" || status=$?
exit "$status"
