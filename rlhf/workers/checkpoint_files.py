"""Trainer checkpoint files read as data: nothing in a checkpoint directory can run code on load.

A pickle (`torch.load(weights_only=False)`) runs whatever callables the file names, so anyone who
can write the checkpoint volume, or pass `checkpoint.resume=<path>`, could run code in every
trainer. Every file a trainer loads therefore goes through `torch.load(weights_only=True)`, whose
unpickler builds only tensors, plain containers and numbers/strings, plus classes on an explicit
allow-list:

- RNG state (`rng_rank<N>.pt`): written as plain data (Python's Mersenne-Twister words and numpy's
  as int64 tensors, torch's and CUDA's byte tensors), so it needs no allow-listed class at all.
- DeepSpeed's files (`<tag>/mp_rank_*_model_states.pt`, `*_optim_states.pt`): DeepSpeed loads
  them with `weights_only=False` itself (`TorchCheckpointEngine.load`). `weights_only_deepspeed_loads`
  replaces that load, for one `engine.load_checkpoint` call, by a weights-only load that also
  accepts the few DeepSpeed classes its optimizer state holds (`DEEPSPEED_CHECKPOINT_CLASSES`,
  found by loading checkpoints of ZeRO 0-3, fp32/bf16 and LoRA here; the fp16 loss scaler from
  reading DeepSpeed 0.19.8's code). Unpickling one of them sets its attributes to plain data and
  calls nothing else.

`driver_state.json` (rlhf.drivers.checkpoint) is JSON, and Hugging Face exports are safetensors.
What still unpickles: DeepSpeed's own offline tools (`zero_to_fp32.py`, universal-checkpoint
conversion) call `torch.load(weights_only=False)`; rlhf never runs them, and neither should
anyone on a checkpoint they did not write.
"""

from __future__ import annotations

import contextlib
import pickle
import random
from collections.abc import Iterator

import numpy as np
import torch


class UnsafeCheckpointFile(ValueError):
    """A checkpoint file holds something other than tensors and plain data: refused, never run."""


def _weights_only_load(path: str, map_location=None, allowed: tuple[type, ...] = ()):
    """`torch.load(weights_only=True)` with `allowed` classes; a refused file names itself."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's message: a generic paragraph, then the line naming the refused global.
        reason = next((line for line in lines if "GLOBAL" in line), lines[-1] if lines else "")
        raise UnsafeCheckpointFile(
            f"{path}: refused to load: not plain tensors/data (torch.load weights_only=True: {reason}); "
            "written by an rlhf older than its data-only checkpoints, or tampered with"
        ) from None


# -- RNG state --------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states of this process, as tensors and plain numbers."""
    version, words, gauss_next = random.getstate()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng_state(path: str) -> None:
    torch.save(rng_state(), path)


def load_rng_state(path: str) -> None:
    """Restore this process's RNGs from `path`; a file that is not plain data is refused."""
    set_rng_state(_weights_only_load(path))


# -- DeepSpeed's files ------------------------------------------------------------------------------


def deepspeed_checkpoint_classes() -> tuple[type, ...]:
    """The DeepSpeed classes inside its optimizer-state files: the loss scaler, the ZeRO stage
    enum, and the fragment addresses of ZeRO-2/bf16 parameter slices."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


@contextlib.contextmanager
def weights_only_deepspeed_loads(engine) -> Iterator[None]:
    """Within the block, `engine`'s checkpoint engine loads files with weights_only=True."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    checkpoint_engine = engine.checkpoint_engine
    if type(checkpoint_engine) is not TorchCheckpointEngine:
        name = type(checkpoint_engine).__name__
        raise TypeError(f"weights-only loading covers DeepSpeed's TorchCheckpointEngine, not {name}")
    allowed = deepspeed_checkpoint_classes()
    checkpoint_engine.load = lambda path, map_location=None: _weights_only_load(path, map_location, allowed)
    try:
        yield
    finally:
        del checkpoint_engine.load  # the class's own method again
