"""Sampling seeds: distinct per (step, engine, sample), reproducible from trainer.seed, used by the engines."""

from __future__ import annotations

import hashlib
import itertools

import pytest
import torch

from rlhf.algorithms.seeds import sampling_seed, sampling_seeds


def test_seed_is_the_hash_of_its_key():
    by_hand = int.from_bytes(hashlib.blake2b(b"7/3/1/5", digest_size=8).digest(), "big") >> 1
    assert sampling_seed(7, 3, 1, 5) == by_hand
    assert 0 <= by_hand < 2**63


def test_seeds_are_distinct_across_steps_engines_and_samples():
    keys = list(itertools.product(range(40), range(4), range(64)))  # steps x engines x samples
    seeds = [sampling_seed(1, *key) for key in keys]
    assert len(set(seeds)) == len(keys)
    # The old scheme base + step + i made step s+1's sample i equal step s's sample i+1, and every engine equal.
    assert sampling_seed(1, 1, 0, 0) != sampling_seed(1, 0, 0, 1) and sampling_seed(1, 0, 0, 0) != sampling_seed(1, 0, 1, 0)


def test_seeds_reproduce_from_the_trainer_seed():
    assert sampling_seeds(3, 10, 2, 8) == sampling_seeds(3, 10, 2, 8) == [sampling_seed(3, 10, 2, s) for s in range(8)]
    assert not set(sampling_seeds(3, 10, 2, 8)) & set(sampling_seeds(4, 10, 2, 8))


def test_engines_sample_by_their_key(tiny_assets):
    """The transformers backend: the same (seed, step, engine) gives the same samples; another step or
    another engine index gives others."""
    from test_rollout import rollout_config, tiny_prompts

    from rlhf.workers.rollout import RolloutEngine

    cfg = rollout_config(tiny_assets, "hf")
    engines = [RolloutEngine(cfg, tiny_assets["policy"], engine_index=i) for i in (0, 1)]
    prompts = tiny_prompts(engines[0].tokenizer)

    def sample(engine, step):
        return engine.generate(prompts, 0, samples_per_prompt=4, seed=5, step=step)["input_ids"]

    first = sample(engines[0], 3)
    assert torch.equal(first, sample(engines[0], 3))
    assert not torch.equal(first, sample(engines[0], 4))
    assert not torch.equal(first, sample(engines[1], 3))


@pytest.mark.slow
def test_worker_group_passes_each_actor_its_index(ray_session):
    from rlhf.workers.group import WorkerGroup

    class Indexed:
        def __init__(self, name, engine_index=-1):
            self.value = f"{name}{engine_index}"

        def get(self):
            return self.value

    group = WorkerGroup(Indexed, role="indexed", num_actors=3, actor_options={"num_cpus": 0},
                        init_args=("e",), index_kwarg="engine_index")
    try:
        assert group.run_all("get") == ["e0", "e1", "e2"]
    finally:
        group.kill()
