"""The whole config tree (`RLHFConfig`) and its cross-field rules, checked once at load."""

from __future__ import annotations

import os
import re
from typing import Literal, Optional

from pydantic import Field, model_validator

from rlhf.config.algorithms import AlgorithmConfig
from rlhf.config.base import Section, suggest
from rlhf.config.sections import (
    DRIVER_FAULT_METHODS, ROLES, CheckpointConfig, DataConfig, DebugConfig, FailAtConfig, LoggingConfig, ModelConfig,
    ResourcesConfig, RolloutConfig, TrainerConfig,
)
from rlhf.registry import get_algorithm
from rlhf.tiny import FAMILIES as TINY_FAMILIES


class RLHFConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="Models.")
    data: DataConfig = Field(default_factory=DataConfig, description="Datasets.")
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig, description="Algorithm and hyperparameters.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Generation.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Actors and placement.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Optimisation.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics and outputs.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints and resume.")
    debug: DebugConfig = Field(default_factory=DebugConfig, description="Fault injection (tests, drills).")
    tiny_assets: Optional[str] = Field(
        None, description="CPU demos/tests: build the tiny models and datasets into this dir first if missing."
    )
    tiny_family: Literal[TINY_FAMILIES] = Field(
        "char", description="Model family of the tiny_assets build (rlhf.tiny): char, llama3, qwen2 or mistral."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "RLHFConfig":
        _check_consistency(self)
        return self

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.logging.output_dir, "checkpoints")


def _check_consistency(cfg: RLHFConfig) -> None:
    """Cross-field rules; raises ValueError('key: reason') so the loader can prefix the file."""
    if not cfg.model.policy:
        raise ValueError("model.policy: required")
    if not cfg.data.train:
        raise ValueError("data.train: required")
    get_algorithm(cfg.algorithm.name).check(cfg)
    if cfg.model.reference_from_base and not cfg.model.lora.enabled:
        raise ValueError("model.reference_from_base: needs model.lora.enabled=true")
    if cfg.model.reward_fn and not re.match(r"^[\w.]+:\w+$", cfg.model.reward_fn):
        raise ValueError(f"model.reward_fn: expected 'module:function', got {cfg.model.reward_fn!r}")
    for group in cfg.resources.colocate:
        for role in group:
            if role not in ROLES:
                raise ValueError(f"resources.colocate: unknown role {role!r}{suggest(role, ROLES)}; roles are {', '.join(ROLES)}")
    if cfg.resources.share_scoring_process:
        _check_shared_scoring(cfg)
    for role in ROLES:
        res = getattr(cfg.resources, role)
        if res.cpus_per_actor == 0 and res.gpus_per_actor == 0:
            raise ValueError(f"resources.{role}.cpus_per_actor: an actor needs CPUs or GPUs, and this role has neither")
    if cfg.rollout.top_k == 0 or cfg.rollout.top_k < -1:
        raise ValueError("rollout.top_k: must be -1 (off) or >= 1")
    for index, fail in enumerate(cfg.debug.fail_at):
        key = f"debug.fail_at[{index}]"
        _check_fail_at(cfg, fail, key)
        roles = get_algorithm(cfg.algorithm.name).roles(cfg)
        if fail.role not in ("driver", *roles):
            raise ValueError(f"{key}.role: {cfg.algorithm.name} starts no {fail.role} actor here "
                             f"(its roles: {', '.join(roles)})")


def _check_shared_scoring(cfg: RLHFConfig) -> None:
    """resources.share_scoring_process: one process per actor index hosts both roles, in one pool."""
    res = cfg.resources
    if res.reference.num_actors != res.reward.num_actors:
        raise ValueError(f"resources.share_scoring_process: reference has {res.reference.num_actors} actors and reward "
                         f"{res.reward.num_actors}; one process hosts one of each, so they must be equal")
    for group in res.colocate:
        if len({"reference", "reward"} & set(group)) == 1:
            raise ValueError(f"resources.colocate: {group} holds only one of reference and reward, which "
                             "resources.share_scoring_process hosts in one process (name both or neither)")


def _check_fail_at(cfg: RLHFConfig, fail: FailAtConfig, key: str) -> None:
    if fail.role == "driver":
        if fail.mode == "hang":
            raise ValueError(f"{key}.mode: the driver cannot hang (nothing would time it out); use raise, exit or sigterm")
        if fail.actor != 0:
            raise ValueError(f"{key}.actor: the driver is one process; actor must be 0")
        if fail.method is not None and fail.method not in DRIVER_FAULT_METHODS:
            raise ValueError(
                f"{key}.method: driver points are {', '.join(DRIVER_FAULT_METHODS)}, not {fail.method!r}"
                f"{suggest(fail.method, DRIVER_FAULT_METHODS)}"
            )
        return
    if fail.mode == "sigterm":
        raise ValueError(f"{key}.mode: sigterm applies to role driver only")
    num = cfg.rollout.num_engines if fail.role == "rollout" else getattr(cfg.resources, fail.role).num_actors
    if fail.actor >= num:
        raise ValueError(f"{key}.actor: {fail.role} has {num} actor(s), so actor must be < {num}, got {fail.actor}")
