"""Generation and tied embeddings through weight sync, on every tiny model family: what the trainer exports (a tied
parameter once), what both rollout backends load (rollout logprobs = the trainer's recomputation
within 1e-3 after a sync), and the merged model rebuilt from an export."""

from __future__ import annotations

import pytest
import ray
import torch
from test_rollout import TOLERANCE, Publisher, check_batch, load_policy, max_logprob_diff, rollout_config, tiny_prompts

from rlhf.models.saving import export_merged_state_dict, merged_model
from rlhf.workers.rollout import RolloutEngine


def sync_exported_and_check(engine_call, assets, tokenizer) -> float:
    """Publish the trainer's export of perturbed weights; the engine must then sample with exactly them."""
    model = load_policy(assets, noise_seed=1)
    publisher = Publisher.remote()
    version = engine_call("version") + 1
    assert engine_call("load_weights", ray.get(publisher.publish.remote(export_merged_state_dict(model), version))) == version
    prompts = tiny_prompts(tokenizer)
    batch = engine_call("generate", prompts, version, samples_per_prompt=2, seed=0, step=version)
    diff = max_logprob_diff(model, batch)
    assert diff < TOLERANCE, f"rollout vs trainer logprobs differ by {diff:.2e} after a sync"
    assert max_logprob_diff(load_policy(assets), batch) > 10 * TOLERANCE, "the sync changed nothing"
    return diff


def test_export_sends_a_tied_parameter_once(family_assets):
    model = load_policy(family_assets, noise_seed=2)
    weights = export_merged_state_dict(model)
    tied = model.config.tie_word_embeddings
    assert ("lm_head.weight" in weights) == (not tied)
    assert set(weights) == {name for name, _ in model.named_parameters()}  # every parameter, each once
    rebuilt = merged_model(model)
    assert (rebuilt.lm_head.weight is rebuilt.model.embed_tokens.weight) == tied
    rebuilt_params = dict(rebuilt.named_parameters(remove_duplicate=False))
    for name, param in model.named_parameters(remove_duplicate=False):  # lm_head.weight included
        assert torch.equal(rebuilt_params[name], param), name


def test_hf_backend_syncs_every_family(family_assets, ray_session):
    engine = RolloutEngine(rollout_config(family_assets, "hf"), family_assets["policy"])

    def call(method, *args, **kwargs):
        return getattr(engine, method)(*args, **kwargs)

    diff = sync_exported_and_check(call, family_assets, engine.tokenizer)
    print(f"{family_assets['family']}: hf rollout vs trainer after sync {diff:.2e}")
    # A plain state_dict (a tied model lists lm_head.weight too) loads as well.
    state = {n: t.clone() for n, t in load_policy(family_assets, noise_seed=1).state_dict().items()}
    handle = ray.get(Publisher.remote().publish.remote(state, call("version") + 1))
    assert call("load_weights", handle) == handle.version


@pytest.mark.slow
def test_vllm_generates_and_syncs_every_family(family_assets, ray_session):
    """One vLLM engine per family (each start costs ~10 s here): chat-template prompts sample well-formed
    batches that stop on the family's EOS set, then a sync makes it sample with the trainer's weights."""
    from test_tiny_families import TRAITS
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_assets["policy"])
    engine = ray.remote(num_cpus=1)(RolloutEngine).remote(rollout_config(family_assets, "vllm"), family_assets["policy"])
    try:
        def call(method, *args, **kwargs):
            return ray.get(getattr(engine, method).remote(*args, **kwargs))

        chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"] for p in ("3+4=", "12+7=? please", "9")]
        eos_ids, pad_id = ray.get(engine.__ray_call__.remote(lambda self: (self.eos_ids, self.pad_id)))
        assert len(eos_ids) == TRAITS[family_assets["family"]]["n_eos"]
        check_batch(call("generate", chats, 0, samples_per_prompt=2), chats, 2, eos_ids, pad_id)

        diff = sync_exported_and_check(call, family_assets, tokenizer)
        print(f"{family_assets['family']}: vLLM rollout vs trainer after sync {diff:.2e}")
    finally:
        ray.kill(engine)
