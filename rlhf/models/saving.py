"""Saving Hugging Face-format checkpoints, and exporting full weights with plain HF names.

`save_hf(model, tokenizer, out_dir)` writes safetensors that plain `transformers` (and, for a
causal LM, vLLM) load the normal way:

    out_dir/                     a full model: config.json, model.safetensors, tokenizer files
or, for a peft (LoRA) model:
    out_dir/                     the adapter: adapter_config.json, adapter_model.safetensors, tokenizer
                                 (PeftModel.from_pretrained(base_model, out_dir))
    out_dir/merged/              the full model with the adapter merged in, plus the tokenizer
                                 (AutoModelForCausalLM.from_pretrained(out_dir / "merged"), or vLLM)

`export_units(model)` is what weight sync sends to the rollout engines, one module at a time:
every entry of the HF model's state_dict, LoRA merged in (W + scale * B @ A, computed on the
side: the training weights are never modified), peft prefixes stripped. A parameter shared by
several modules (tied input/output embeddings: Llama-3, Qwen2) is sent once, under its first
name (``model.embed_tokens.weight``; ``lm_head.weight`` is left out), as ``save_pretrained``
writes it; receivers tie it back (vLLM and transformers do for ``tie_word_embeddings``).
`export_merged_state_dict(model)` collects those entries as CPU copies.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# gather(params) -> context in which those parameters are complete (ZeRO-3); the default does nothing.
GatherFn = Callable[[list[nn.Parameter]], contextlib.AbstractContextManager]


def is_peft_model(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def hf_model(model) -> nn.Module:
    """The transformers model inside ``model``: the peft base model (LoRA layers injected) or ``model`` itself."""
    return model.get_base_model() if is_peft_model(model) else model


def _no_gather(params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class ExportUnit:
    """One module's share of the exported state: what to gather, what it yields, and how to read it.

    ``specs`` (name, full shape, dtype) are known without gathering (ZeRO-3 keeps the full shape
    in ``ds_shape``); ``read()`` may only be called while ``params`` are gathered and returns
    detached tensors that can alias the live parameters (copy them before the gather ends).
    """

    params: list[nn.Parameter]
    specs: list[tuple[str, tuple[int, ...], torch.dtype]]
    read: Callable[[], dict[str, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) * _itemsize(dtype) for _, shape, dtype in self.specs)


def export_units(model) -> Iterator[ExportUnit]:
    """The plain HF model's state_dict, LoRA merged in, as units of one module each, in module order.

    Names are those of ``hf_model(model).state_dict()``, e.g. ``model.layers.0.self_attn.q_proj.weight``;
    a LoRA layer is one unit under its own name whose weight is W + scale * B @ A (computed on
    the side: the training weights are never modified). Every rank walks the same units. A tied
    parameter is in the unit of the first module that holds it only.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    skip: str | None = None  # prefix of a subtree already exported as a whole
    seen: set[int] = set()  # ids of the parameters exported so far: a tied one is sent once
    for name, module in hf_model(model).named_modules():
        if skip is not None and name.startswith(skip):
            continue
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLayer):
            skip = prefix
            base = module.get_base_layer()
            specs = [s for sub_name, sub in base.named_modules() for s in _own_specs(sub, f"{prefix}{sub_name}." if sub_name else prefix)]
            yield ExportUnit(list(module.parameters()), specs, functools.partial(_merged_lora_layer, module, prefix))
        elif isinstance(module, ModulesToSaveWrapper):
            skip = prefix
            active = module.original_module if module.disable_adapters else module.modules_to_save[module.active_adapter]
            for sub_name, sub in active.named_modules():
                sub_prefix = f"{prefix}{sub_name}." if sub_name else prefix
                yield ExportUnit(_own_parameters(sub), _own_specs(sub, sub_prefix), functools.partial(_own_state, sub, sub_prefix))
        else:
            exported = frozenset(seen)
            specs = _own_specs(module, prefix, exported)
            if specs:
                yield ExportUnit(_own_parameters(module, exported), specs, functools.partial(_own_state, module, prefix, exported))
            seen.update(id(p) for p in _own_parameters(module))


def export_merged_state_dict(model, gather: GatherFn | None = None, collect: bool = True) -> dict[str, torch.Tensor]:
    """{HF name: CPU copy} for every state_dict entry of the plain HF model, LoRA merged in (`export_units`).

    ``gather`` (for ZeRO-3: DeepSpeed's GatheredParameters) is entered around each unit's
    parameters, so at most one module is complete in memory at once; every rank must make the
    same walk, and ranks that do not need the result pass ``collect=False`` (they take part in
    the gathers and copy nothing).
    """
    gather = gather or _no_gather
    out: dict[str, torch.Tensor] = {}
    for unit in export_units(model):
        with gather(unit.params):
            if collect:
                out.update({k: _cpu_copy(v) for k, v in unit.read().items()})
    return out


def _own_parameters(module: nn.Module, exported: frozenset[int] = frozenset()) -> list[nn.Parameter]:
    return [p for p in module._parameters.values() if p is not None and id(p) not in exported]


def _own_entries(module: nn.Module, exported: frozenset[int] = frozenset()) -> dict[str, torch.Tensor]:
    """The module's own (non-recursive) state_dict entries: parameters (less the ``exported`` ones,
    by id) and persistent buffers."""
    entries = {n: p for n, p in module._parameters.items() if p is not None and id(p) not in exported}
    entries.update(
        {n: b for n, b in module._buffers.items() if b is not None and n not in module._non_persistent_buffers_set}
    )
    return entries


def _own_specs(module: nn.Module, prefix: str, exported: frozenset[int] = frozenset()) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    # ds_shape: a ZeRO-3 parameter's full shape while its data is partitioned away.
    return [(prefix + n, tuple(getattr(t, "ds_shape", t.shape)), t.dtype) for n, t in _own_entries(module, exported).items()]


def _own_state(module: nn.Module, prefix: str, exported: frozenset[int] = frozenset()) -> dict[str, torch.Tensor]:
    return {prefix + n: t.detach() for n, t in _own_entries(module, exported).items()}


def _merged_lora_layer(layer, prefix: str) -> dict[str, torch.Tensor]:
    """The base layer's state under the LoRA layer's own name, its weight plus each active adapter's delta."""
    base = layer.get_base_layer()
    state = {}
    for sub_name, sub in base.named_modules():
        state.update(_own_state(sub, f"{prefix}{sub_name}." if sub_name else prefix))
    if layer.merged or layer.disable_adapters:
        return state  # merged: the base weight already holds the delta; disabled: the base model is what runs
    weight = base.weight.detach()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A and adapter not in getattr(layer, "lora_embedding_A", {}):
            continue
        if layer.use_dora.get(adapter, False):
            raise NotImplementedError("exporting merged DoRA weights is not supported; use plain LoRA")
        # get_delta_weight reads lora_B @ lora_A * scaling without touching any parameter.
        weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    state[prefix + "weight"] = weight
    return state


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def merged_model(model) -> nn.Module:
    """A plain transformers model (same class and config as the base) holding the merged weights; CPU.

    Built on the meta device and filled by assignment, so no second random initialisation is paid.
    """
    base = hf_model(model)
    state = export_merged_state_dict(model)
    with torch.device("meta"):
        fresh = type(base)(copy.deepcopy(base.config))
    missing, unexpected = fresh.load_state_dict(state, strict=False, assign=True)
    if getattr(fresh.config, "tie_word_embeddings", False):
        fresh.tie_weights()  # the output embedding was exported once, as the input embedding
    untied = [n for n, p in fresh.named_parameters() if p.is_meta]
    if unexpected or untied:
        raise RuntimeError(f"merged model: unexpected weights {unexpected[:3]}, weights not exported {untied[:3]} (missing {missing[:3]})")
    if getattr(base, "generation_config", None) is not None:
        fresh.generation_config = copy.deepcopy(base.generation_config)
    return fresh.eval()


def save_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Save ``model`` (and ``tokenizer`` when given) in Hugging Face format (safetensors); see the module doc.

    A peft model writes its adapter to ``out_dir`` and the merged full model to ``out_dir/merged``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if is_peft_model(model):
        model.save_pretrained(str(out), safe_serialization=True)
        _save_full(merged_model(model), tokenizer, out / "merged")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))
    else:
        _save_full(model, tokenizer, out)
    return out


def _save_full(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # Loaders turn the KV cache off for training; a saved model should generate with it on.
    with _config_value(model.config, "use_cache", True):
        model.save_pretrained(str(out), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


@contextlib.contextmanager
def _config_value(config, key: str, value) -> Iterable[None]:
    had, old = hasattr(config, key), getattr(config, key, None)
    setattr(config, key, value)
    try:
        yield
    finally:
        if had:
            setattr(config, key, old)
