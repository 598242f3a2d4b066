"""Loading a config: YAML file, `key.sub=value` overrides, validation, paths; every problem one line.

`load_config` turns every problem (unknown key, wrong type, value out of range, missing path,
inconsistent batch sizes) into one `ConfigError` line naming the key and the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rlhf.config.base import ConfigError, suggest
from rlhf.config.sections import CHAT_TEMPLATE_NAMES
from rlhf.config.tree import RLHFConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would ('3' -> 3, 'true' -> True, '[a, b]' -> list)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return raw


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"] if not isinstance(p, int)]
    key = _key_name(first["loc"])
    if first["type"] == "extra_forbidden":
        section = _model_at(RLHFConfig, loc[:-1])
        known = list(section.model_fields) if section else []
        return f"{source}: unknown key '{key}'{suggest(loc[-1], known)}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        return f"{source}: {msg[len('Value error, '):]}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{source}: {key}: {msg}{shown}"


def _key_name(loc: tuple) -> str:
    """A validation error's location as the user's key: list positions in brackets (`debug.fail_at[1].step`)."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def _model_at(model: type[BaseModel], path: list[str]):
    """The section model at a key path (list-valued fields: their item model), or None."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if getattr(annotation, "__origin__", None) is list:
            annotation = annotation.__args__[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def check_paths(cfg: RLHFConfig, source: str) -> None:
    """Model and data paths must exist unless they look like hub ids ('org/name'); data.chat_template
    must name a template or an existing file."""
    candidates = {
        "model.policy": cfg.model.policy,
        "model.reference": cfg.model.reference,
        "model.reward": cfg.model.reward,
        "model.critic": cfg.model.critic,
        "data.train": cfg.data.train,
        "data.eval": cfg.data.eval,
    }
    for key, value in candidates.items():
        if value and not os.path.exists(value) and not _HUB_ID.match(value):
            raise ConfigError(f"{source}: {key}: path does not exist: {value}")
    template = cfg.data.chat_template
    if template not in CHAT_TEMPLATE_NAMES and not os.path.isfile(template):
        raise ConfigError(f"{source}: data.chat_template: {template!r} is neither one of {', '.join(CHAT_TEMPLATE_NAMES)} "
                          "nor an existing Jinja file")


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None, validate_paths: bool = True) -> RLHFConfig:
    """Load YAML at `path` (or defaults when None), apply overrides, validate; raise ConfigError on any problem."""
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    try:
        cfg = RLHFConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None
    if validate_paths and not cfg.tiny_assets:
        check_paths(cfg, source)
    return cfg


def to_yaml(cfg: RLHFConfig) -> str:
    """The resolved config as YAML (for --print-config and for saving beside checkpoints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
