"""Forming a torch.distributed / DeepSpeed process group out of Ray actors (one actor = one rank).

Ray starts no launcher, so each actor sets the environment a launcher would (MASTER_ADDR,
MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK) and then calls `deepspeed.init_distributed`: gloo on
the CPU, NCCL on GPUs. The rank-0 actor picks the address and a free port (`node_ip`,
`free_port`) and the worker group hands them to every rank.

LOCAL_RANK is 0: Ray gives each actor its own GPU(s) through CUDA_VISIBLE_DEVICES, so every
rank's device is cuda:0 inside its own process. LOCAL_SIZE is deliberately left unset: with it,
DeepSpeed's CPU backend would switch to a shared-memory allreduce that assumes launcher-managed
processes.

On the CPU, `deepspeed.init_distributed` JIT-builds DeepSpeed's shared-memory op (cached in
~/.cache/torch_extensions) with the first `ninja` on PATH. A machine can have two (the system's and
the one this environment installs); they record build commands differently, so alternating between
them (a shell without the venv on PATH, a Ray job with it) rebuilt the op each time: 40-70 CPU-seconds
per trainer start here. `use_environment_ninja` makes every process build with this environment's.
`import_deepspeed_muon_uncompiled` spares each trainer process an import of inductor (~2 CPU-seconds).
"""

from __future__ import annotations

import datetime
import importlib
import os
import socket
import sys

import torch


def node_ip() -> str:
    """This node's IP as Ray sees it (reachable by other nodes); 127.0.0.1 outside Ray."""
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"


def free_port() -> int:
    """A TCP port that is free on this node right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def use_environment_ninja() -> None:
    """Put this interpreter's bin directory (its `ninja`) first on PATH, if it has a `ninja`."""
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.exists(os.path.join(bin_dir, "ninja")) and path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + path


DEEPSPEED_MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def import_deepspeed_muon_uncompiled() -> None:
    """Import DeepSpeed's Muon optimizer module with `torch.compile` as a no-op (our optimizer is AdamW).

    Under ZeRO, DeepSpeed imports that module whatever the optimizer (`is_zero_supported_optimizer`, the
    gradient reduction) and its kernels are decorated with `torch.compile` at import, which loads
    inductor: about 2 CPU-seconds in every trainer process, for functions we never call. Imported first
    here, the module keeps plain functions (they would run eagerly, only slower).
    """
    if DEEPSPEED_MUON_MODULE in sys.modules:
        return
    compile_fn = torch.compile
    torch.compile = lambda model=None, **_: model if model is not None else (lambda fn: fn)
    try:
        importlib.import_module(DEEPSPEED_MUON_MODULE)
    finally:
        torch.compile = compile_fn


def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(
    master_addr: str,
    master_port: int,
    rank: int,
    world_size: int,
    device: torch.device | str = "cpu",
    timeout_s: float = 1800.0,
) -> None:
    """Set the launcher environment for this rank and join the process group (all ranks at once)."""
    import deepspeed

    os.environ["MASTER_ADDR"] = str(master_addr)
    os.environ["MASTER_PORT"] = str(master_port)
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = "0"
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(0)
    use_environment_ninja()
    deepspeed.init_distributed(
        dist_backend=backend_for(device),
        auto_mpi_discovery=False,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
