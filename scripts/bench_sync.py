"""Weight-sync throughput on this machine: broadcast (gloo) vs the Ray object store, as MB/s and as a
fraction of this machine's memcpy bandwidth.

    python scripts/bench_sync.py [--model-mb 64] [--bucket-mb 16 64] [--repeats 3]

A "trainer" actor holds a Llama-shaped state dict (fp32, at least --model-mb MiB: whole layers) and sends it through the
real transport; an "engine" actor receives it and copies every tensor into its own preallocated
weights (what loading costs at least), exactly as `rlhf.drivers.weight_sync` drives a sync. The
time is the driver's wall time for one sync, best of --repeats. memcpy: torch copy_ of a buffer of
the model's size in one process, best of 5. Run it under the heavy lock (it starts Ray).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def llama_shaped_state(total_mb: float, hidden: int = 1024) -> dict[str, torch.Tensor]:
    """Embedding, then layers of q/k/v/o + MLP (4x) + norms, until about total_mb MiB of fp32."""
    gen = torch.Generator().manual_seed(0)
    state = {"model.embed_tokens.weight": torch.randn(8192, hidden, generator=gen)}
    layer = 0
    while sum(t.numel() * 4 for t in state.values()) < total_mb * 2**20:
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{name}.weight"] = torch.randn(hidden, hidden, generator=gen)
        state[p + "mlp.gate_proj.weight"] = torch.randn(4 * hidden, hidden, generator=gen)
        state[p + "mlp.up_proj.weight"] = torch.randn(4 * hidden, hidden, generator=gen)
        state[p + "mlp.down_proj.weight"] = torch.randn(hidden, 4 * hidden, generator=gen)
        state[p + "input_layernorm.weight"] = torch.ones(hidden)
        layer += 1
    return state


def memcpy_gbps(nbytes: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


class Trainer:
    def __init__(self, model_mb: float, transport: str):
        from rlhf.weight_sync import make_transport

        self.state = llama_shaped_state(model_mb)
        self.transport = make_transport(transport, "cpu")

    def address(self):
        from rlhf.workers.distributed import free_port, node_ip

        return node_ip(), free_port()

    def init(self, **kwargs):
        self.transport.init(rank=0, role="policy rank 0", **kwargs)

    def send(self, version: int, bucket_bytes: int):
        from rlhf.weight_sync import BucketedWeights

        return self.transport.send(BucketedWeights.from_state_dict(self.state, bucket_bytes), version)


class Engine:
    def __init__(self, model_mb: float, transport: str):
        from rlhf.weight_sync import make_transport

        self.weights = {k: torch.zeros_like(v) for k, v in llama_shaped_state(model_mb).items()}
        self.transport = make_transport(transport, "cpu")

    def init(self, **kwargs):
        self.transport.init(rank=1, role="rollout engine 0 worker 0", **kwargs)

    def load(self, handle) -> int:
        for name, tensor in self.transport.receive(handle):
            self.weights[name].copy_(tensor)
        return handle.version


def bench(transport: str, model_mb: float, bucket_mb: float, repeats: int) -> dict:
    import ray

    from rlhf.weight_sync import TRANSPORTS, SyncHandle

    trainer = ray.remote(num_cpus=0)(Trainer).remote(model_mb, transport)
    engine = ray.remote(num_cpus=0)(Engine).remote(model_mb, transport)
    streaming = TRANSPORTS[transport].streaming
    if streaming:
        addr, port = ray.get(trainer.address.remote())
        kwargs = {"master_address": addr, "master_port": port, "world_size": 2, "timeout_s": 120}
        ray.get([trainer.init.remote(**kwargs), engine.init.remote(**kwargs)])
    bucket_bytes = int(bucket_mb * 2**20)
    best, total = float("inf"), 0
    for version in range(1, repeats + 1):
        t0 = time.perf_counter()
        if streaming:
            sending = trainer.send.remote(version, bucket_bytes)
            ray.get(engine.load.remote(SyncHandle(version=version, transport=transport)))
            handle = ray.get(sending)
        else:
            handle = ray.get(trainer.send.remote(version, bucket_bytes))
            ray.get(engine.load.remote(handle))
        best = min(best, time.perf_counter() - t0)
        total = handle.total_bytes
    ray.kill(trainer)
    ray.kill(engine)
    return {"transport": transport, "bucket_mb": bucket_mb, "model_mb": total / 2**20, "seconds": best,
            "mb_per_s": total / 2**20 / best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-mb", type=float, default=64.0)
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[16.0, 64.0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    model_bytes = sum(t.numel() * 4 for t in llama_shaped_state(args.model_mb).values())
    copy = memcpy_gbps(model_bytes)
    print(f"memcpy (torch copy_, {model_bytes / 2**20:.0f} MiB): {copy * 1e3 / 1.048576:.0f} MiB/s")
    rows = []
    for transport in ("broadcast", "object_store"):
        for bucket_mb in args.bucket_mb:
            row = bench(transport, args.model_mb, bucket_mb, args.repeats)
            row["fraction_of_memcpy"] = row["mb_per_s"] / (copy * 1e9 / 2**20)
            rows.append(row)
            print(f"{transport:13s} bucket {bucket_mb:6.1f} MiB: {row['model_mb']:.0f} MiB in {row['seconds']:.3f} s = "
                  f"{row['mb_per_s']:.0f} MiB/s ({100 * row['fraction_of_memcpy']:.1f}% of memcpy)")
    print(json.dumps(rows))
    ray.shutdown()


if __name__ == "__main__":
    main()
