"""Weight sync by broadcast over a process group made just for it: gloo on the CPU, NCCL on CUDA.

The group is the policy's rank 0 (group rank 0, the source) plus every rollout-engine worker,
tensor-parallel ranks included (engine e's worker w is rank 1 + e * tp + w). It is built from its
own TCPStore, apart from torch.distributed's default group, so it coexists with the trainer's
DeepSpeed group and vLLM's own groups. The same code runs both backends: the CPU tests run the
protocol that GPU clusters run.

Set-up, once, driven by the driver before the first step: every member calls ``init`` at once
(the trainer's rank 0 hosts the store); a one-number broadcast confirms that all have joined.
Each sync, in order:

    header   int64 [version, metadata bytes]
    metadata JSON: the bucket layout (names, shapes, dtypes, byte offsets per bucket)
    bucket 1 .. n   one flat uint8 buffer each, of about rollout.sync_bucket_mb

The sender packs bucket i+1 (gathering it under ZeRO-3) while bucket i is on the wire; a receiver
posts bucket i+1 before it loads bucket i. Every wait is bounded by ``timeout_s`` and its error
names the waiting role, the version and the bucket; after an error the group is unusable (the
run stops, the last checkpoint is intact).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator

import torch
import torch.distributed as dist

from rlhf.weight_sync.base import SyncHandle, WeightSyncError, WeightTransport
from rlhf.weight_sync.buckets import BucketedWeights, TensorSpec, bucket_nbytes, pack, unpack

_STORE_PREFIX = "rlhf-weight-sync"


def _gloo_group(store, rank: int, world_size: int, timeout: datetime.timedelta):
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def _nccl_group(store, rank: int, world_size: int, timeout: datetime.timedelta):
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world_size, options)


# device type -> (backend name, group constructor)
BACKENDS = {"cpu": ("gloo", _gloo_group), "cuda": ("nccl", _nccl_group)}


class BroadcastTransport(WeightTransport):
    name = "broadcast"
    streaming = True

    def __init__(self, device: str = "cpu"):
        super().__init__(device)
        if self.device.type not in BACKENDS:
            raise ValueError(f"broadcast weight sync: no backend for device {device!r}")
        self.backend = BACKENDS[self.device.type][0]
        self.role = "weight sync"
        self.rank = -1
        self.timeout_s = 0.0
        self._group = None
        self._store = None

    # -- set-up ---------------------------------------------------------------------------------
    def init(self, master_address: str, master_port: int, rank: int, world_size: int, timeout_s: float, role: str) -> None:
        """Join the sync group (all members at once): rank 0 is the trainer, ranks 1.. the engine workers."""
        self.role, self.rank, self.timeout_s = role, rank, float(timeout_s)
        timeout = datetime.timedelta(seconds=timeout_s)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        where = f"{master_address}:{master_port} as rank {rank} of {world_size} ({self.backend})"
        try:
            self._store = dist.TCPStore(master_address, int(master_port), world_size, rank == 0, timeout=timeout)
            self._group = BACKENDS[self.device.type][1](dist.PrefixStore(_STORE_PREFIX, self._store), rank, world_size, timeout)
        except Exception as err:  # noqa: BLE001 - any rendezvous failure becomes one message naming the role
            raise WeightSyncError(f"{role}: could not join the weight-sync group at {where} within {timeout_s:g} s: {err}") from err
        joined = torch.tensor([world_size], dtype=torch.int64, device=self.device)
        self._broadcast(joined, f"joining the weight-sync group at {where}")
        if int(joined.item()) != world_size:
            raise WeightSyncError(f"{role}: the weight-sync group has {int(joined.item())} members, this side expected {world_size}")

    # -- sender ---------------------------------------------------------------------------------
    def send(self, weights: BucketedWeights, version: int, rank: int = 0) -> SyncHandle | None:
        """Rank 0: header, metadata, then every bucket in order. Other ZeRO-3 ranks only join the gathers."""
        if rank != 0:
            for _ in weights:
                pass
            return None
        meta = json.dumps({"version": int(version), "buckets": [[s.to_json() for s in b] for b in weights.buckets]})
        payload = torch.frombuffer(bytearray(meta.encode()), dtype=torch.uint8).to(self.device)
        self._broadcast(torch.tensor([version, payload.numel()], dtype=torch.int64, device=self.device), f"sending the v{version} header")
        self._broadcast(payload, f"sending the v{version} metadata")
        n = len(weights.buckets)
        in_flight = None  # (work, buffer, what): bucket i travels while bucket i+1 is gathered and packed
        for i, (specs, tensors) in enumerate(weights):
            flat = pack(specs, tensors, self.device)
            if in_flight is not None:
                self._finish(*in_flight)
            what = f"sending bucket {i + 1}/{n} of v{version} ({flat.numel() / 2**20:.1f} MiB)"
            in_flight = (self._start(flat, what), flat, what)
        self._finish(*in_flight)
        handle = SyncHandle(version=int(version), transport=self.name, buckets=[list(b) for b in weights.buckets])
        handle.peak_gathered_bytes = weights.peak_gathered_bytes
        return handle

    # -- receiver -------------------------------------------------------------------------------
    def receive(self, handle: SyncHandle) -> Iterator[tuple[str, torch.Tensor]]:
        """A generator over the incoming ``(name, tensor)`` pairs; it must be consumed to the end.

        The tensors are views of the bucket's buffer, valid until the next bucket is requested.
        """
        self._check(handle)
        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        self._broadcast(header, f"waiting for the v{handle.version} header from the policy")
        version, meta_bytes = (int(v) for v in header.tolist())
        if version != handle.version:
            self._fail(f"expected weight version {handle.version} but the policy is sending version {version}")
        payload = torch.empty(meta_bytes, dtype=torch.uint8, device=self.device)
        self._broadcast(payload, f"waiting for the v{version} metadata")
        meta = json.loads(bytes(payload.cpu().numpy()).decode())
        buckets = [[TensorSpec.from_json(item) for item in bucket] for bucket in meta["buckets"]]
        handle.buckets = buckets
        n = len(buckets)

        def post(i: int):
            flat = torch.empty(bucket_nbytes(buckets[i]), dtype=torch.uint8, device=self.device)
            what = f"waiting for bucket {i + 1}/{n} of v{version} from the policy"
            return self._start(flat, what), flat, what

        upcoming = post(0)
        for i in range(n):
            work, flat, what = upcoming
            self._finish(work, flat, what)
            upcoming = post(i + 1) if i + 1 < n else None
            yield from unpack(buckets[i], flat)

    # -- one collective, bounded ------------------------------------------------------------------
    def _start(self, tensor: torch.Tensor, what: str):
        group = self._require_group(what)
        options = dist.BroadcastOptions()
        options.rootRank = 0
        try:
            return group.broadcast([tensor], options)
        except Exception as err:  # noqa: BLE001
            self._fail(f"failed {what}: {err}", err)

    def _finish(self, work, tensor: torch.Tensor, what: str) -> None:
        try:
            work.wait(datetime.timedelta(seconds=self.timeout_s))
        except Exception as err:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses for timeouts and lost peers
            cause = "timed out" if "timed out" in str(err).lower() else "failed"
            self._fail(f"{cause} {what} (limit {self.timeout_s:g} s): {err}", err)

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        self._finish(self._start(tensor, what), tensor, what)

    def _require_group(self, what: str):
        if self._group is None:
            raise WeightSyncError(f"{self.role}: no weight-sync group while {what}: call init(...) on every side first "
                                  "(or an earlier sync failed and broke the group)")
        return self._group

    def _fail(self, message: str, cause: BaseException | None = None):
        """Drop the group (a failed collective leaves it unusable; peers see the connection close) and raise."""
        group, self._group = self._group, None
        if group is not None and hasattr(group, "abort"):
            try:
                group.abort()
            except Exception:  # noqa: BLE001 - best effort: the error below is what matters
                pass
        raise WeightSyncError(f"{self.role}: {message}") from cause

    def close(self) -> None:
        self._group = None
        self._store = None
