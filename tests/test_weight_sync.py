"""Weight sync without Ray: bucket planning and packing, and the broadcast protocol over a real gloo
group whose members are threads of this process (rank 0 sends, ranks 1.. receive), including the
timeouts and version check that must name the role and the bucket."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from rlhf.models.saving import ExportUnit
from rlhf.weight_sync import BucketedWeights, SyncHandle, WeightSyncError, resolve_transport
from rlhf.weight_sync.broadcast import BroadcastTransport
from rlhf.weight_sync.buckets import ALIGN_BYTES, pack, plan_buckets, unpack
from rlhf.workers.distributed import free_port

# Test-local actor classes and helper functions travel to the actors by value.
ray_cloudpickle = pytest.importorskip("ray.cloudpickle")
ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sample_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(40, 16, generator=gen),  # 2560 bytes
        "layer.0.weight": torch.randn(16, 16, generator=gen).to(torch.bfloat16),  # 512
        "layer.0.bias": torch.randn(16, generator=gen),  # 64
        "layer.1.weight": torch.randn(16, 16, generator=gen).t(),  # 1024, non-contiguous
        "scale": torch.tensor(0.5, dtype=torch.float16),  # 2
        "head.weight": torch.randn(40, 16, generator=gen),  # 2560
    }


def test_plan_buckets_fills_in_order_and_isolates_oversized_units():
    units = [ExportUnit([], [(f"t{i}", (n,), torch.uint8)], dict) for i, n in enumerate([600, 300, 200, 1500, 100, 100])]
    plan = plan_buckets(units, bucket_bytes=1000)
    assert [[u.specs[0][0] for u in b] for b in plan] == [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5"]]


def test_pack_unpack_round_trip_keeps_dtype_shape_values_and_alignment():
    state = sample_state()
    weights = BucketedWeights.from_state_dict(state, bucket_bytes=4000)
    assert [[s.name for s in b] for b in weights.buckets] == [
        ["embed.weight", "layer.0.weight", "layer.0.bias"], ["layer.1.weight", "scale", "head.weight"]]  # 3136, 3586 bytes
    received = {}
    for specs, tensors in weights:
        assert all(s.offset % ALIGN_BYTES == 0 for s in specs)
        received.update((name, t.clone()) for name, t in unpack(specs, pack(specs, tensors, "cpu")))
    assert list(received) == list(state)
    for name, want in state.items():
        got = received[name]
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name


def test_resolve_transport_table():
    assert resolve_transport("auto", "cuda") == "broadcast"
    assert resolve_transport("auto", "cuda", engines_share_trainer_gpu=True) == "ipc"
    assert resolve_transport("auto", "cpu") == "object_store"
    assert resolve_transport("broadcast", "cpu") == "broadcast"
    with pytest.raises(ValueError, match="'ipc' transport needs CUDA"):
        resolve_transport("ipc", "cpu")


def test_lora_policy_streams_merged_weights_per_bucket(tiny_assets):
    """A LoRA layer is one unit: its bucket carries W + scale * B @ A under the plain HF name."""
    from rlhf.config import LoraConfig
    from rlhf.models.loading import load_causal_lm
    from rlhf.models.saving import export_merged_state_dict, export_units

    model = load_causal_lm(tiny_assets["policy"], "float32", LoraConfig(enabled=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a fresh adapter has B = 0, which would make merging a no-op
    want = export_merged_state_dict(model)
    weights = BucketedWeights(list(export_units(model)), bucket_bytes=2**18)
    assert len(weights.buckets) > 2
    got = {name: t for specs, tensors in weights for name, t in unpack(specs, pack(specs, tensors, "cpu"))}
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name
    base = load_causal_lm(tiny_assets["policy"], "float32").state_dict()
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])


# ---------------------------------------------------------------------------- broadcast over gloo


def run_group(world_size: int, member, timeout_s: float = 20.0) -> list:
    """Run member(rank, transport) for every rank in its own thread, after all joined one gloo group."""
    port = free_port()
    results: list = [None] * world_size

    def body(rank: int) -> None:
        try:
            transport = BroadcastTransport("cpu")
            role = "policy rank 0" if rank == 0 else f"rollout engine {rank - 1} worker 0"
            transport.init("127.0.0.1", port, rank, world_size, timeout_s, role)
            results[rank] = member(rank, transport)
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            results[rank] = err

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=4 * timeout_s)
    assert not any(t.is_alive() for t in threads), "a group member hung"
    return results


def test_broadcast_sends_every_bucket_to_every_receiver():
    state = sample_state()

    def member(rank, transport):
        if rank == 0:
            return transport.send(BucketedWeights.from_state_dict(state, bucket_bytes=1000), version=4)
        handle = SyncHandle(version=4, transport="broadcast")
        return [(name, t.clone()) for name, t in transport.receive(handle)], handle

    sent, *received = run_group(3, member)
    assert isinstance(sent, SyncHandle), sent
    assert sent.version == 4 and sent.names == list(state) and len(sent.buckets) == 5
    for got in received:
        assert not isinstance(got, BaseException), got
        pairs, handle = got
        assert handle.buckets == sent.buckets  # the metadata travelled over the group
        assert [n for n, _ in pairs] == list(state)
        for name, tensor in pairs:
            assert tensor.dtype == state[name].dtype and torch.equal(tensor, state[name]), name


def test_broadcast_group_can_be_formed_again_on_the_same_transports():
    """What WeightSync.setup relies on after an engine is replaced: init again (new port), sync again."""
    state = sample_state()
    second_port = free_port()

    def member(rank, transport):
        for version in (1, 2):
            if version == 2:
                role = transport.role
                transport.init("127.0.0.1", second_port, rank, 2, 20, role)
            if rank == 0:
                transport.send(BucketedWeights.from_state_dict(state, bucket_bytes=1000), version=version)
            else:
                got = dict(transport.receive(SyncHandle(version=version, transport="broadcast")))
                assert torch.equal(got["head.weight"], state["head.weight"])
        return "ok"

    assert run_group(2, member) == ["ok", "ok"]


def test_broadcast_refuses_an_unexpected_version():
    def member(rank, transport):
        if rank == 0:
            return transport.send(BucketedWeights.from_state_dict(sample_state(), 10**6), version=7)
        return list(transport.receive(SyncHandle(version=6, transport="broadcast")))

    _, err = run_group(2, member, timeout_s=3)
    assert isinstance(err, WeightSyncError)
    assert "rollout engine 0 worker 0: expected weight version 6 but the policy is sending version 7" in str(err)


@pytest.mark.parametrize("sender_stays, cause", [(True, "timed out"), (False, "failed")])
def test_broadcast_stalled_or_lost_sender_names_role_version_and_bucket(sender_stays, cause):
    """The sender announces three buckets but streams only the first, then either stays (the
    receiver's wait for bucket 2 times out) or leaves (its group closes: the wait fails at once)."""
    state = sample_state()
    receiver_done = threading.Event()

    def member(rank, transport):
        if rank == 0:
            full = BucketedWeights.from_state_dict(state, bucket_bytes=2600)
            assert len(full.buckets) == 3
            first_only = BucketedWeights.from_state_dict(dict(list(state.items())[:1]), bucket_bytes=2600)
            first_only.buckets = full.buckets
            handle = transport.send(first_only, version=9)
            if sender_stays:
                receiver_done.wait(30)
            return handle
        try:
            return [n for n, _ in transport.receive(SyncHandle(version=9, transport="broadcast"))]
        finally:
            receiver_done.set()

    _, err = run_group(2, member, timeout_s=2)
    assert isinstance(err, WeightSyncError), err
    assert str(err).startswith(f"rollout engine 0 worker 0: {cause} waiting for bucket 2/3 of v9 from the policy (limit 2 s)")


# ---------------------------------------------------------------------------- Ray actors (slow)


def ray_config(assets, engines: int, policy_ranks: int = 1, zero_stage: int = 2):
    """CPU, hf engines, broadcast with 256 KiB buckets; ZeRO-3 partitions every parameter (threshold 0)."""
    from rlhf.config import RLHFConfig

    return RLHFConfig.model_validate({
        "model": {"policy": assets["policy"], "reward": assets["reward"], "critic": assets["critic"], "dtype": "float32"},
        "data": {"train": assets["prompts_train"]},
        "algorithm": {"ppo": {"rollout_batch_size": 4, "mini_batch_size": 4}},
        "rollout": {"backend": "hf", "num_engines": engines, "sync_transport": "broadcast", "sync_timeout_s": 60,
                    "sync_bucket_mb": 0.25},
        "resources": {"device": "cpu", "call_timeout_s": 120, "policy": {"num_actors": policy_ranks}},
        "trainer": {"micro_batch_size": 2, "seed": 3, "zero_stage": zero_stage, "zero3_persistence_threshold": 0},
    })


def start_sync(cfg, assets, engine_cls):
    from rlhf.drivers.weight_sync import WeightSync
    from rlhf.workers.group import WorkerGroup
    from rlhf.workers.policy import PolicyTrainer

    policy = WorkerGroup(PolicyTrainer, "policy", cfg.resources.policy.num_actors, {"num_cpus": 0.1}, (cfg,),
                         call_timeout_s=cfg.resources.call_timeout_s)
    rollout = WorkerGroup(engine_cls, "rollout", cfg.rollout.num_engines, {"num_cpus": 0.1}, (cfg, assets["policy"]),
                          call_timeout_s=cfg.resources.call_timeout_s)
    policy.setup_distributed()
    rollout.wait_ready()
    sync = WeightSync(cfg, policy, rollout)
    sync.setup()
    return policy, rollout, sync


def _zero_weights(engine) -> None:
    with torch.no_grad():
        for p in engine._model.parameters():
            p.zero_()


def _engine_state(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine._model.state_dict().items()}


@pytest.mark.slow
def test_zero3_policy_gathers_one_bucket_at_a_time(ray_session, tiny_assets):
    """2-rank ZeRO-3 policy (every parameter partitioned) -> broadcast -> 2 engines, 256 KiB buckets:
    the sync overwrites the engines' (zeroed) weights with the trainer's, and no rank ever held
    more than one bucket of gathered parameters (the tiny model is 1.4 MB)."""
    import ray

    from rlhf.workers.rollout import RolloutEngine

    cfg = ray_config(tiny_assets, engines=2, policy_ranks=2, zero_stage=3)
    policy, rollout, sync = start_sync(cfg, tiny_assets, RolloutEngine)
    try:
        ray.get([a.__ray_call__.remote(_zero_weights) for a in rollout.actors])
        handle = sync.sync(1)
        bucket_bytes = 2**18
        print(f"ZeRO-3 sync: {len(handle.buckets)} buckets, {handle.total_bytes} bytes, peak gathered {handle.peak_gathered_bytes}")
        assert len(handle.buckets) >= 5
        assert 0 < handle.peak_gathered_bytes <= bucket_bytes < handle.total_bytes / 4, handle.peak_gathered_bytes
        trainer = policy.run_all("export_weights")[0]
        for state in ray.get([a.__ray_call__.remote(_engine_state) for a in rollout.actors]):
            assert state.keys() == trainer.keys()
            for name, tensor in trainer.items():
                assert torch.equal(state[name], tensor), name
            assert any(t.abs().sum() > 0 for t in state.values())
    finally:
        policy.kill()
        rollout.kill()


class DiesMidSync:
    """Mixed into RolloutEngine: engine 1 ends its process when the first tensor of bucket 2 arrives."""

    def init_weight_sync(self, transport, engine_index, **init_kwargs):
        super().init_weight_sync(transport, engine_index, **init_kwargs)
        if engine_index != 1:
            return
        sync = self._transports[transport]
        receive = sync.receive

        def receive_then_die(handle):
            for name, tensor in receive(handle):
                if name == handle.buckets[1][0].name:  # the metadata has arrived: buckets are known
                    os._exit(1)
                yield name, tensor

        sync.receive = receive_then_die


@pytest.mark.slow
def test_engine_dying_mid_sync_is_named_not_a_hang(ray_session, tiny_assets):
    from rlhf.workers.group import RoleDiedError
    from rlhf.workers.rollout import RolloutEngine

    engine_cls = type("DyingRolloutEngine", (DiesMidSync, RolloutEngine), {})
    cfg = ray_config(tiny_assets, engines=2)
    policy, rollout, sync = start_sync(cfg, tiny_assets, engine_cls)
    try:
        with pytest.raises(RoleDiedError, match=r"rollout actor 1 died during load_weights"):
            sync.sync(1)
    finally:
        policy.kill()
        rollout.kill()


def test_gpu_placement_and_refusals():
    from rlhf.drivers.weight_sync import REFUSED_PLACEMENTS, gpu_placement

    assert gpu_placement("A", ["A", "A"]) == "all"
    assert gpu_placement("A", ["A", "B"]) == "some"
    assert gpu_placement("A", ["B", "C"]) == "none"
    # auto never picks a refused pair: all -> ipc, none -> broadcast.
    assert ("ipc", "all") not in REFUSED_PLACEMENTS and ("broadcast", "none") not in REFUSED_PLACEMENTS
    assert resolve_transport("auto", "cuda", engines_share_trainer_gpu=True) == "ipc"
    assert all(transport != "object_store" for transport, _ in REFUSED_PLACEMENTS)
