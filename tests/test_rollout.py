"""Rollout engines and weight sync: batch layout, stale-version refusal, and the key property that
after a sync the engine's sampling logprobs equal the trainer's recomputation on the new weights.

The vLLM tests are slow (an engine start is ~20 s on 2 cores); the transformers backend runs the
same agreement check quickly.
"""

from __future__ import annotations

import pickle

import pytest
import ray
import torch

from rlhf.config import RLHFConfig
from rlhf.models.forward import response_logprobs
from rlhf.weight_sync import BucketedWeights, SyncHandle, make_transport
from rlhf.workers.rollout import RolloutEngine, StaleWeightsError

TEMPERATURE = 0.7  # != 1, so a logprob that ignores the temperature cannot agree
MAX_NEW = 16
TOLERANCE = 1e-3


def rollout_config(assets, backend: str, **rollout) -> RLHFConfig:
    return RLHFConfig.model_validate({
        "model": {"policy": assets["policy"], "reward": assets["reward"], "critic": assets["critic"], "dtype": "float32"},
        "data": {"train": assets["prompts_train"]},
        "algorithm": {"ppo": {"rollout_batch_size": 4, "mini_batch_size": 4}},
        "trainer": {"micro_batch_size": 1, "seed": 7},
        "rollout": {"backend": backend, "temperature": TEMPERATURE, "max_new_tokens": MAX_NEW,
                    "gpu_memory_utilization": 0.1, "kv_cache_gib": 1, **rollout},
        "resources": {"device": "cpu"},
    })


def tiny_prompts(tokenizer) -> list[list[int]]:
    """Three prompts of different lengths (13, 4 and 1 tokens), so left padding is exercised."""
    return [tokenizer(text)["input_ids"] for text in ("12+7=? please", "3+4=", "9")]


def load_policy(assets, noise_seed: int | None = None):
    """The tiny policy in fp32; with a seed, every parameter gets N(0, 0.02^2) noise added."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(assets["policy"], dtype=torch.float32).eval()
    if noise_seed is not None:
        gen = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def state_of(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def max_logprob_diff(model, batch) -> float:
    """max |rollout logprob - trainer recomputation| over response tokens."""
    with torch.no_grad():
        recomputed = response_logprobs(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"].shape[1], TEMPERATURE
        )
    return ((recomputed - batch["rollout_logprobs"]).abs() * batch["response_mask"]).max().item()


def check_batch(batch, prompts, samples, eos_ids, pad_id, stop: tuple[str, ...] = (), tokenizer=None):
    """The shared layout, masks and EOS flags are mutually consistent."""
    n_rows = len(prompts) * samples
    P = max(len(p) for p in prompts)
    R = batch["response_mask"].shape[1]
    assert 1 <= R <= MAX_NEW
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (n_rows, P + R)
    assert batch["input_ids"].dtype == torch.long
    assert batch["rollout_logprobs"].shape == (n_rows, R) and batch["rollout_logprobs"].dtype == torch.float32
    assert batch["finished_with_eos"].shape == (n_rows,) and batch["finished_with_eos"].dtype == torch.bool
    assert batch["prompt_index"].tolist() == [i for i in range(len(prompts)) for _ in range(samples)]
    for row in range(n_rows):
        prompt = prompts[batch["prompt_index"][row]]
        attn, ids = batch["attention_mask"][row].tolist(), batch["input_ids"][row].tolist()
        assert attn[:P] == [0] * (P - len(prompt)) + [1] * len(prompt)
        assert ids[P - len(prompt) : P] == prompt
        mask = batch["response_mask"][row]
        n = int(mask.sum())
        assert n >= 1
        assert mask.tolist() == [1.0] * n + [0.0] * (R - n)
        assert attn[P:] == mask.long().tolist()
        response = ids[P : P + n]
        assert ids[P + n :] == [pad_id] * (R - n)
        lp = batch["rollout_logprobs"][row]
        assert torch.isfinite(lp).all() and (lp[:n] <= 1e-6).all() and (lp[n:] == 0).all()
        assert not any(t in eos_ids for t in response[:-1]), "EOS inside a response"
        ended_on_eos = response[-1] in eos_ids
        ended_on_stop = False
        if stop:
            assert not any(s in tokenizer.decode(response[:-1], skip_special_tokens=True) for s in stop)
            ended_on_stop = any(tokenizer.decode(response, skip_special_tokens=True).endswith(s) for s in stop)
        if batch["finished_with_eos"][row]:
            assert ended_on_eos or ended_on_stop
        else:
            assert n == MAX_NEW and not ended_on_eos


@ray.remote(num_cpus=0)
class Publisher:
    """Stands in for the policy trainer's rank 0: owns the object-store payload it publishes."""

    def __init__(self):
        self.transport = make_transport("object_store", "cpu")

    def publish(self, state: dict, version: int, bucket_bytes: int = 2**20) -> SyncHandle:
        return self.transport.send(BucketedWeights.from_state_dict(state, bucket_bytes), version)


def sync_and_check_agreement(engine_call, assets, tokenizer):
    """Sync the initial weights, then perturbed ones, through the object store; after each sync
    the engine's logprobs must match the trainer's recomputation on exactly those weights, and
    after the perturbed sync they must no longer match the initial weights."""
    publisher = Publisher.remote()
    prompts = tiny_prompts(tokenizer)
    start = engine_call("version")
    diffs = {}
    for step, model in enumerate([load_policy(assets), load_policy(assets, noise_seed=1)], start=1):
        handle = ray.get(publisher.publish.remote(state_of(model), start + step))
        assert handle.transport == "object_store" and handle.total_bytes > 0
        assert engine_call("load_weights", handle) == start + step == engine_call("version")
        batch = engine_call("generate", prompts, start + step, samples_per_prompt=2)
        diffs[step] = max_logprob_diff(model, batch)
        assert diffs[step] < TOLERANCE, f"sync {step}: rollout vs trainer logprobs differ by {diffs[step]:.2e}"
    stale_diff = max_logprob_diff(load_policy(assets), batch)
    assert stale_diff > 10 * TOLERANCE, "the perturbed weights did not change the engine's logprobs: a no-op sync"
    print(f"logprob max diff after sync: {diffs}, vs the unsynced weights: {stale_diff:.3f}")
    return diffs


# ---------------------------------------------------------------------------- weight_sync unit tests


def test_make_transport_picks_and_refuses():
    assert make_transport("auto", "cpu").name == "object_store"
    assert make_transport("object_store", "cpu").name == "object_store"
    assert make_transport("broadcast", "cpu").name == "broadcast"
    with pytest.raises(ValueError, match="the 'ipc' transport needs CUDA devices"):
        make_transport("ipc", "cpu")
    with pytest.raises(ValueError, match="unknown transport 'shm'"):
        make_transport("shm", "cpu")


def test_object_store_round_trip_keeps_dtypes_shapes_and_order(ray_session):
    tensors = {
        "b.weight": torch.randn(3, 5).to(torch.bfloat16),
        "a.bias": torch.randn(7),
        "scalar": torch.tensor(2.5, dtype=torch.float16),
        "t.weight": torch.randn(4, 6).t(),  # non-contiguous
    }
    # 64-byte buckets: 30 + 28 + 2 bytes fill the first; the 96-byte tensor stands alone (larger than a bucket).
    handle = ray.get(Publisher.remote().publish.remote(tensors, 3, 64))
    handle = pickle.loads(pickle.dumps(handle))  # what the driver forwards is plain picklable data
    assert handle.version == 3 and handle.names == list(tensors)
    assert handle.dtypes == ["bfloat16", "float32", "float16", "float32"]
    assert handle.total_bytes == 3 * 5 * 2 + 7 * 4 + 2 + 24 * 4
    assert [[s.name for s in b] for b in handle.buckets] == [["b.weight", "a.bias", "scalar"], ["t.weight"]]
    received = make_transport("object_store", "cpu").receive(handle)
    assert [name for name, _ in received] == list(tensors)
    for (name, got), want in zip(received, tensors.values()):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name


# ---------------------------------------------------------------------------- transformers backend


@pytest.fixture(scope="module")
def hf_engine(tiny_assets, ray_session):
    return RolloutEngine(rollout_config(tiny_assets, "hf"), tiny_assets["policy"])


def test_hf_generate_layout(hf_engine):
    prompts = tiny_prompts(hf_engine.tokenizer)
    batch = hf_engine.generate(prompts, hf_engine.version(), samples_per_prompt=2)
    check_batch(batch, prompts, 2, hf_engine.eos_ids, hf_engine.pad_id)
    greedy = hf_engine.generate(prompts, hf_engine.version(), samples_per_prompt=2, greedy=True)
    check_batch(greedy, prompts, 2, hf_engine.eos_ids, hf_engine.pad_id)
    assert torch.equal(greedy["input_ids"][0::2], greedy["input_ids"][1::2])


def test_hf_weight_sync_logprob_agreement(hf_engine, tiny_assets):
    def call(method, *args, **kwargs):
        return getattr(hf_engine, method)(*args, **kwargs)

    sync_and_check_agreement(call, tiny_assets, hf_engine.tokenizer)


def test_hf_refuses_stale_version(hf_engine):
    current = hf_engine.version()
    with pytest.raises(StaleWeightsError, match=f"holds weight version {current}.*expects version {current + 5}"):
        hf_engine.generate([[5, 6]], current + 5)


def test_hf_stop_strings(tiny_assets, ray_session):
    engine = RolloutEngine(rollout_config(tiny_assets, "hf", stop=["5"]), tiny_assets["policy"])
    prompts = [[10 + i] * 4 for i in range(16)]
    batch = engine.generate(prompts, 0, samples_per_prompt=2)
    check_batch(batch, prompts, 2, engine.eos_ids, engine.pad_id, stop=("5",), tokenizer=engine.tokenizer)
    five = engine.tokenizer.convert_tokens_to_ids("5")
    last = batch["input_ids"][torch.arange(32), 4 - 1 + batch["response_mask"].sum(1).long()]  # prompts are 4 long
    assert (last == five).any(), "no response stopped on the stop string, so the check above proved nothing"


# ---------------------------------------------------------------------------- vLLM backend


@pytest.fixture(scope="module")
def vllm_engine(tiny_assets, ray_session):
    engine = ray.remote(num_cpus=1)(RolloutEngine).remote(rollout_config(tiny_assets, "vllm"), tiny_assets["policy"])
    assert ray.get(engine.ready.remote())
    yield engine
    ray.kill(engine)


def vllm_call(engine):
    return lambda method, *args, **kwargs: ray.get(getattr(engine, method).remote(*args, **kwargs))


@pytest.mark.slow
def test_vllm_generate_layout(vllm_engine, tiny_tokenizer):
    call = vllm_call(vllm_engine)
    prompts = tiny_prompts(tiny_tokenizer)
    eos_ids, pad_id = [tiny_tokenizer.eos_token_id], tiny_tokenizer.pad_token_id
    batch = call("generate", prompts, call("version"), samples_per_prompt=2)
    check_batch(batch, prompts, 2, eos_ids, pad_id)
    greedy = call("generate", prompts, call("version"), samples_per_prompt=2, greedy=True)
    check_batch(greedy, prompts, 2, eos_ids, pad_id)
    assert torch.equal(greedy["input_ids"][0::2], greedy["input_ids"][1::2])


@pytest.mark.slow
def test_vllm_weight_sync_logprob_agreement(vllm_engine, tiny_assets, tiny_tokenizer):
    sync_and_check_agreement(vllm_call(vllm_engine), tiny_assets, tiny_tokenizer)


@pytest.mark.slow
def test_vllm_refuses_stale_version(vllm_engine):
    current = ray.get(vllm_engine.version.remote())
    with pytest.raises(StaleWeightsError, match=f"holds weight version {current}.*expects version {current - 1}"):
        ray.get(vllm_engine.generate.remote([[5, 6]], current - 1))


@pytest.mark.slow
def test_vllm_seeded_sampling_is_reproducible(vllm_engine, tiny_tokenizer):
    """The driver passes a seed per step so that a resumed run samples what the uninterrupted one did."""
    call = vllm_call(vllm_engine)
    prompts = tiny_prompts(tiny_tokenizer)
    first = call("generate", prompts, call("version"), samples_per_prompt=4, seed=123)
    again = call("generate", prompts, call("version"), samples_per_prompt=4, seed=123)
    other = call("generate", prompts, call("version"), samples_per_prompt=4, seed=124)
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert torch.equal(first["rollout_logprobs"], again["rollout_logprobs"])
    assert not torch.equal(first["input_ids"], other["input_ids"])


@pytest.mark.slow
def test_vllm_seeded_sampling_of_prompts_longer_than_one_scheduler_step(vllm_engine, tiny_tokenizer):
    """More prompt tokens than vLLM schedules in one step (its token budget is 4,096 here): with chunked
    prefill a prompt split across steps discards a sampled token and rewinds its seeded generator,
    which vLLM's CPU generator cannot do (it failed the step). Each prompt's prefill stays whole."""
    call = vllm_call(vllm_engine)
    rng = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, len(tiny_tokenizer), (200,), generator=rng).tolist() for _ in range(24)]
    batch = call("generate", prompts, call("version"), samples_per_prompt=2, seed=7)
    assert batch["input_ids"].shape[0] == 48 and batch["response_mask"].sum() > 0
    again = call("generate", prompts, call("version"), samples_per_prompt=2, seed=7)
    assert torch.equal(batch["input_ids"], again["input_ids"])


@pytest.mark.slow
def test_vllm_weight_reload_loads_every_layer(vllm_engine, tiny_assets):
    """vLLM's layer-wise reload once warned "RotaryEmbedding: Failed to load weights" on every sync: it
    counted the rotary's computed cos_sin_cache buffer as a weight (`skip_computed_buffers`)."""

    def watch_reload_warnings(engine):
        import logging

        records = engine.__dict__.setdefault("_reload_warnings", [])

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())

        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addHandler(Keep(logging.WARNING))

    ray.get(vllm_engine.__ray_call__.remote(watch_reload_warnings))
    publisher = Publisher.remote()
    version = ray.get(vllm_engine.version.remote())
    for v in (version + 1, version + 2):  # the second reload is the one that warned
        handle = ray.get(publisher.publish.remote(state_of(load_policy(tiny_assets, noise_seed=v)), v))
        assert ray.get(vllm_engine.load_weights.remote(handle)) == v
    assert ray.get(vllm_engine.__ray_call__.remote(lambda engine: engine._reload_warnings)) == []
