"""Trainer checkpoint files load as data only (`torch.load(weights_only=True)`): the RNG state
round-trips, a resume works, and a pickle planted in a checkpoint file is refused without running."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import ray.cloudpickle
import torch

from rlhf.workers.checkpoint_files import UnsafeCheckpointFile, load_rng_state, save_rng_state

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PlantedPayload:
    """Unpickling this creates `marker`: the stand-in for an attacker's code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant_pickle(path, marker) -> None:
    torch.save({"torch": torch.zeros(3), "payload": PlantedPayload(str(marker))}, path)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(2)


def test_rng_state_round_trips_as_plain_data(tmp_path):
    path = str(tmp_path / "rng_rank0.pt")
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian is part of Python's state
    save_rng_state(path)
    expected = draws()
    draws()
    load_rng_state(path)
    again = draws()
    assert again[:2] == expected[:2]
    torch.testing.assert_close(again[2], expected[2], rtol=0, atol=0)
    # No class is needed to read it back: tensors, ints, floats, strings, None.
    raw = torch.load(path, weights_only=True)
    assert raw["numpy"]["kind"] == "MT19937" and raw["python"]["words"].dtype == torch.int64


def test_pickle_in_rng_file_is_refused(tmp_path):
    path, marker = tmp_path / "rng_rank0.pt", tmp_path / "payload_ran"
    plant_pickle(path, marker)
    with pytest.raises(UnsafeCheckpointFile, match=r"rng_rank0\.pt: refused to load: .*GLOBAL posix.mkdir"):
        load_rng_state(str(path))
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what the old loader did: the payload runs
    assert marker.is_dir()


@pytest.mark.slow
def test_resume_loads_weights_only_and_refuses_planted_pickles(ray_session, tiny_assets, tmp_path):
    """A ZeRO-2 critic (its optimizer file holds DeepSpeed's loss scaler, stage enum and fragment
    addresses) resumes with the same next step and RNG stream; planted pickles are refused."""
    from test_workers import make_batch, make_config

    from rlhf.models.loading import load_tokenizer
    from rlhf.workers.critic import CriticTrainer
    from rlhf.workers.group import RoleFailedError, WorkerGroup

    cfg = make_config(tiny_assets, **{"resources.policy.num_actors": 1, "algorithm.ppo.mini_batch_size": 4, "trainer.zero_stage": 2})
    batch = make_batch(load_tokenizer(tiny_assets["reward"]))
    ckpt = tmp_path / "ckpt"

    def start() -> WorkerGroup:
        group = WorkerGroup(CriticTrainer, "critic", 1, {"num_cpus": 1}, init_args=(cfg, tiny_assets["reward"]), call_timeout_s=300)
        group.setup_distributed()
        return group

    def torch_draw(trainer):
        return torch.rand(4)

    group = start()
    try:
        values = group.rank0("values", batch)
        minibatch = {**batch, "old_values": values, "returns": torch.ones_like(values) * batch["response_mask"]}
        group.rank0("value_step", minibatch)
        group.run_all("save_checkpoint", str(ckpt))
        expected_draw = ray.get(group.actors[0].__ray_call__.remote(torch_draw))
        expected_step = group.rank0("value_step", minibatch)
    finally:
        group.kill()

    optim_files = sorted((ckpt / "ds").glob("*optim_states.pt"))
    assert optim_files, sorted(os.listdir(ckpt / "ds"))
    group = start()
    try:
        group.run_all("load_checkpoint", str(ckpt))
        assert ray.get(group.actors[0].__ray_call__.remote(torch_draw)).tolist() == expected_draw.tolist()
        assert group.rank0("value_step", minibatch) == pytest.approx(expected_step, rel=1e-5, abs=1e-6)

        for planted in (ckpt / "rng_rank0.pt", optim_files[0]):
            marker = tmp_path / f"payload_ran_{planted.name}"
            original = planted.read_bytes()
            plant_pickle(planted, marker)
            with pytest.raises(RoleFailedError, match=rf"UnsafeCheckpointFile: .*{planted.name}: refused to load"):
                group.rank0("load_checkpoint", str(ckpt))
            assert not marker.exists()
            planted.write_bytes(original)
    finally:
        group.kill()
