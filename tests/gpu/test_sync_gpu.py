"""Weight sync into real vLLM engines on GPUs: NCCL broadcast (TP=1, TP=2), CUDA IPC on the policy's own
GPU, and vLLM sleep mode around a sync. Each test starts the policy trainer from a perturbed copy of the
~100M model and the engine from the original, so only a sync that really lands makes the engine's
sampling logprobs match the trainer's (fp32, within 1e-3)."""

from __future__ import annotations

import time

from rlhf.config import RLHFConfig

from .conftest import needs_gpus

TOLERANCE = 1e-3


def gpu_config(assets, **rollout) -> RLHFConfig:
    return RLHFConfig.model_validate({
        "model": {"policy": assets["policy_perturbed"], "reward": assets["reward"], "critic": assets["critic"], "dtype": "float32"},
        "data": {"train": assets["prompts_train"]},
        "algorithm": {"ppo": {"rollout_batch_size": 8, "mini_batch_size": 8}},
        "trainer": {"micro_batch_size": 8, "zero_stage": 2},
        "rollout": {"max_new_tokens": 16, "temperature": 0.7, "gpu_memory_utilization": 0.25, "sync_bucket_mb": 64, **rollout},
        "resources": {"device": "cuda", "call_timeout_s": 600},
    })


def sync_and_measure(assets, policy_gpus: float, engine_gpus: float, **rollout) -> dict:
    """Start one policy rank and one vLLM engine, sync once, return the logprob gaps and the sync time."""
    from rlhf.drivers.weight_sync import WeightSync
    from rlhf.workers.group import WorkerGroup
    from rlhf.workers.policy import PolicyTrainer
    from rlhf.workers.rollout import RolloutEngine

    cfg = gpu_config(assets, **rollout)
    policy = WorkerGroup(PolicyTrainer, "policy", 1, {"num_gpus": policy_gpus, "num_cpus": 1}, (cfg,))
    # tensor_parallel_size > 1: vLLM's Ray executor places its own workers, the engine actor holds no GPU.
    engine_opts = {"num_gpus": engine_gpus, "num_cpus": 1}
    rollout_group = WorkerGroup(RolloutEngine, "rollout", 1, engine_opts, (cfg, assets["policy"]))
    try:
        policy.setup_distributed()
        rollout_group.wait_ready()
        sync = WeightSync(cfg, policy, rollout_group)
        sync.setup()
        prompts = [[5 + i, 6, 7, 8] for i in range(8)]

        def gap(version):
            batch = rollout_group.run_all("generate", prompts, version)[0]
            trainer = policy.rank0("logprobs", {k: batch[k] for k in ("input_ids", "attention_mask", "response_mask")})
            return ((trainer - batch["rollout_logprobs"]).abs() * batch["response_mask"]).max().item()

        before = gap(0)
        if cfg.rollout.sleep_while_training:
            sync.release_engines()
        t0 = time.perf_counter()
        handle = sync.sync(1)
        seconds = time.perf_counter() - t0
        after = gap(1)
        return {"transport": sync.transport, "before": before, "after": after, "seconds": seconds, "bytes": handle.total_bytes}
    finally:
        policy.kill()
        rollout_group.kill()


def report(name: str, result: dict) -> None:
    gbps = result["bytes"] / result["seconds"] / 1e9
    print(f"[gpu] {name}: transport {result['transport']}, sync {result['seconds']:.2f} s = {gbps:.2f} GB/s, "
          f"logprob gap before {result['before']:.3g} after {result['after']:.2e}")


def check(result: dict) -> None:
    assert result["before"] > 10 * TOLERANCE, "the engine already agreed before the sync: the test proves nothing"
    assert result["after"] < TOLERANCE, result


@needs_gpus(2)  # NCCL refuses two ranks of one group on the same GPU
def test_nccl_broadcast_into_vllm_tp1(gpu_assets, ray_gpu):
    result = sync_and_measure(gpu_assets, 1, 1, sync_transport="broadcast")
    report("broadcast TP=1", result)
    assert result["transport"] == "broadcast"
    check(result)


@needs_gpus(3)
def test_nccl_broadcast_into_vllm_tp2(gpu_assets, ray_gpu):
    result = sync_and_measure(gpu_assets, 1, 0, sync_transport="broadcast", tensor_parallel_size=2)
    report("broadcast TP=2", result)
    check(result)


@needs_gpus(1)
def test_ipc_colocated_on_one_gpu(gpu_assets, ray_gpu):
    result = sync_and_measure(gpu_assets, 0.4, 0.4, sync_transport="auto")
    report("ipc colocated", result)
    assert result["transport"] == "ipc"  # auto: the engine is on the policy's GPU
    check(result)


@needs_gpus(1)
def test_sleep_wake_then_sync(gpu_assets, ray_gpu):
    result = sync_and_measure(gpu_assets, 0.4, 0.4, sync_transport="ipc", sleep_while_training=True)
    report("ipc + sleep level 1", result)
    check(result)
