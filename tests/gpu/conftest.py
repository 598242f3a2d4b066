"""tests/gpu: what only CUDA can run (NCCL broadcast into vLLM, CUDA IPC, vLLM sleep mode, PPO on a
~100M-parameter model). Collected everywhere, skipped with a reason where torch sees no CUDA device;
`scripts/gpu_check.sh` runs them and prints the benchmark figures."""

from __future__ import annotations

import pytest
import torch

NO_CUDA = "needs a CUDA GPU (tests/gpu runs where torch.cuda.is_available(); scripts/gpu_check.sh)"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


def needs_gpus(n: int):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return pytest.mark.skipif(count < n, reason=f"needs {n} GPUs, this machine has {count}")


# ~100M parameters with the tiny tokenizer (vocab < 100): 12 layers of 16 * 768^2 weights each.
SHAPE_100M = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  num_key_value_heads=12, max_position_embeddings=256)


@pytest.fixture(scope="session")
def gpu_assets(tmp_path_factory) -> dict[str, str]:
    """The tiny assets (tokenizer, data, reward) plus a ~100M policy, critic and a perturbed policy copy,
    built locally (no hub) on the tiny assets' configs with SHAPE_100M."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer, GenerationConfig

    from rlhf.tiny import build_tiny_assets

    assets = dict(build_tiny_assets(tmp_path_factory.mktemp("tiny") / "assets", seed=0))
    root = tmp_path_factory.mktemp("m100")
    tokenizer = AutoTokenizer.from_pretrained(assets["policy"])
    torch.manual_seed(0)
    for name, auto_cls in (("policy", AutoModelForCausalLM), ("critic", AutoModelForTokenClassification)):
        config = AutoConfig.from_pretrained(assets[name])
        config.update(SHAPE_100M)
        model = auto_cls.from_config(config).to(torch.float32)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        if name == "policy":
            GenerationConfig.from_pretrained(assets["policy"]).save_pretrained(root / name)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * torch.randn_like(p))
            model.save_pretrained(root / "policy_perturbed")
            tokenizer.save_pretrained(root / "policy_perturbed")
            GenerationConfig.from_pretrained(assets["policy"]).save_pretrained(root / "policy_perturbed")
        assets[name] = str(root / name)
    assets["policy_perturbed"] = str(root / "policy_perturbed")
    return assets


@pytest.fixture(scope="session")
def ray_gpu():
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    yield
    ray.shutdown()
