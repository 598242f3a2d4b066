"""The typed config tree: loaded from YAML, overridden by `key.sub=value`, validated once at load.

Every field has a default and a one-line description (pydantic `Field(description=...)`).
`base` holds what all sections share, `sections` and `algorithms` the sections, `tree` the whole
tree and its cross-field rules, `loading` the YAML file, overrides and one-line errors. Import
from here: `from rlhf.config import RLHFConfig, load_config`.
"""

from rlhf.config.algorithms import AlgorithmConfig, DPOConfig, IterativeDPOConfig, KTOConfig, PPOConfig, RMConfig
from rlhf.config.base import ConfigError, Section, suggest
from rlhf.config.loading import apply_overrides, check_paths, load_config, to_yaml
from rlhf.config.sections import (
    CHAT_TEMPLATE_NAMES, DRIVER_FAULT_METHODS, ROLES, CheckpointConfig, DataConfig, DebugConfig, FailAtConfig, LoggingConfig,
    LoraConfig, ModelConfig, ResourcesConfig, RoleResources, RolloutConfig, TrainerConfig, WandbConfig,
)
from rlhf.config.tree import RLHFConfig

__all__ = [
    "AlgorithmConfig", "CHAT_TEMPLATE_NAMES", "CheckpointConfig", "ConfigError", "DPOConfig", "DRIVER_FAULT_METHODS",
    "DataConfig", "DebugConfig", "FailAtConfig", "IterativeDPOConfig", "KTOConfig", "LoggingConfig", "LoraConfig",
    "ModelConfig", "PPOConfig", "RLHFConfig", "RMConfig", "ROLES", "ResourcesConfig", "RoleResources", "RolloutConfig",
    "Section", "TrainerConfig", "WandbConfig", "apply_overrides", "check_paths", "load_config", "suggest", "to_yaml",
]
