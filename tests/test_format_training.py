"""Every published data format through a short training run of each algorithm that uses it (issue 12):
a file of the format's published rows (`test_data_published_formats`) is loaded and tokenized for the
tiny model, and two real optimizer steps of the algorithm's trainer run on one batch of it; the first
loss must be finite and the second lower. SFT formats train SFT; preference formats train DPO and the
Bradley-Terry reward model (and KTO, as pairs split into desirable and undesirable examples);
unpaired rows train KTO; HelpSteer rows also train the regression reward model. The ``prompt``
format feeds the online algorithms, whose runs are in test_ppo_e2e.py / test_grpo_e2e.py.

The trainers are the real role classes with their DeepSpeed engines (ZeRO-2, gloo, one rank), built
once in this process (no Ray); before every case each is restored from a checkpoint of its starting
state, so a case does not depend on which cases ran before it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from rlhf.algorithms.dpo import preference_logps
from rlhf.config import DataConfig, RLHFConfig
from rlhf.data.collate import collate_preference, collate_scored, collate_sft, pairs_as_rows
from rlhf.data.datasets import load_preference_dataset, load_scored_dataset, load_sft_dataset, load_unpaired_dataset
from rlhf.data.formats import FORMATS
from rlhf.models.loading import load_tokenizer
from rlhf.workers.distributed import free_port
from rlhf.workers.policy import PolicyTrainer
from rlhf.workers.reward_trainer import RewardTrainer
from test_data_published_formats import HELPSTEER_ROWS, PUBLISHED, write_jsonl

BATCH = 2  # examples per optimizer step (one micro-batch)


def published_rows(fmt: str) -> list[dict]:
    """A small file's rows of ``fmt``, as published: its row twice (HelpSteer: one prompt's responses)."""
    return HELPSTEER_ROWS if fmt == "helpsteer" else [PUBLISHED[fmt][1]] * 2


def dpo_batch(policy: PolicyTrainer, examples: list, pad_id: int) -> dict:
    """Pairs with the reference's logprobs: the policy before this case's first step is the reference."""
    batch = collate_preference(examples, pad_id)
    rows = pairs_as_rows(batch)
    ref = preference_logps(policy.sequence_logprobs(rows), rows["loss_mask"], policy.cfg.algorithm.dpo.loss_type)
    batch["ref_chosen_logps"], batch["ref_rejected_logps"] = ref[: len(examples)], ref[len(examples):]
    return batch


def kto_batch(policy: PolicyTrainer, examples: list, pad_id: int) -> dict:
    """Unpaired examples with the reference's logprobs (the policy before this case's first step)."""
    from rlhf.data.collate import collate_unpaired  # lands with branch kto

    batch = collate_unpaired(examples, pad_id)
    batch["ref_logps"] = policy.sequence_logprobs(batch)
    return batch


@dataclass(frozen=True)
class Step:
    """One algorithm's optimizer step: the data kind it reads, its trainer and how a batch is made."""

    kind: str  # a `rlhf.data.formats.KINDS` entry
    trainer: str  # "policy" or "reward"
    loader: Callable
    batch: Callable  # (trainer, tokenized examples, pad id) -> the step's batch
    method: str  # the trainer's step
    options: dict = field(default_factory=dict)  # its keyword arguments


STEPS = {
    "sft": Step("SFT", "policy", load_sft_dataset, lambda _, examples, pad: collate_sft(examples, pad), "sft_step"),
    "dpo": Step("preference", "policy", load_preference_dataset, dpo_batch, "dpo_step"),
    "rm": Step("preference", "reward", load_preference_dataset, lambda _, ex, pad: collate_preference(ex, pad), "rm_step"),
    "rm_regression": Step("scored", "reward", load_scored_dataset, lambda _, ex, pad: collate_scored(ex, pad),
                          "regression_step"),
    # z_ref, KTO's reference point, is 0: the policy is the reference when the pairs are scored
    "kto": Step("unpaired", "policy", load_unpaired_dataset, kto_batch if hasattr(PolicyTrainer, "kto_step") else None,
                "kto_step", {"kl": 0.0}),
}
CASES = [(fmt, algorithm) for fmt, f in FORMATS.items() if fmt != "prompt"
         for algorithm, step in STEPS.items() if f.supports(step.kind)]


def test_every_format_but_prompt_trains_and_every_algorithm_is_used():
    assert {fmt for fmt, _ in CASES} == set(FORMATS) - {"prompt"}
    assert {algorithm for _, algorithm in CASES} == set(STEPS)


def trainer_config(assets: dict, algorithm: str) -> RLHFConfig:
    return RLHFConfig.model_validate({
        "model": {"policy": assets["policy"], "dtype": "float32"},
        "data": {"train": assets["pref_train"]},
        "algorithm": {"name": algorithm},
        "resources": {"device": "cpu"},
        "trainer": {"micro_batch_size": BATCH, "train_batch_size": BATCH, "learning_rate": 1e-3, "seed": 0},
    })


@pytest.fixture(scope="module")
def trainers(tiny_assets, tmp_path_factory):
    """{role: (trainer, the checkpoint of its starting state)} for the PolicyTrainer and the RewardTrainer,
    each in a one-rank DeepSpeed engine."""
    saved_env = {key: os.environ.get(key) for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    built = {"policy": PolicyTrainer(trainer_config(tiny_assets, "dpo")), "reward": RewardTrainer(trainer_config(tiny_assets, "rm"))}
    port = free_port()
    start = tmp_path_factory.mktemp("format_training")
    for role, trainer in built.items():
        trainer.setup_distributed("127.0.0.1", port, 0, 1)  # the second joins the group the first formed
        trainer.save_checkpoint(str(start / role))
    yield {role: (trainer, str(start / role)) for role, trainer in built.items()}
    torch.distributed.destroy_process_group()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def tokenizer(tiny_assets):
    return load_tokenizer(tiny_assets["policy"])


@pytest.mark.slow  # DeepSpeed engines (in this process, no Ray)
@pytest.mark.parametrize("fmt, algorithm", CASES)
def test_published_format_trains(fmt, algorithm, trainers, tokenizer, tmp_path):
    step = STEPS[algorithm]
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", published_rows(fmt))
    data = step.loader(path, tokenizer, DataConfig(max_prompt_len=128, max_response_len=32))
    assert data.format == fmt
    if step.batch is None:
        pytest.skip("KTO lands in branch kto")
    trainer, start = trainers[step.trainer]
    trainer.load_checkpoint(start)
    batch = step.batch(trainer, (list(data) * BATCH)[:BATCH], tokenizer.pad_token_id)
    first, second = (getattr(trainer, step.method)(batch, **step.options)["loss"] for _ in range(2))
    assert math.isfinite(first) and second < first, (first, second)
