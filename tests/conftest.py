"""Shared pytest fixtures."""

from __future__ import annotations

import pytest

from rlhf.tiny import FAMILIES


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory) -> dict[str, str]:
    """Tiny tokenizer, policy, reward, critic and data (rlhf.tiny), built once per session."""
    from rlhf.tiny import build_tiny_assets

    return build_tiny_assets(tmp_path_factory.mktemp("tiny_assets") / "assets", seed=0)


@pytest.fixture(scope="session", params=FAMILIES)
def family_assets(request, tmp_path_factory) -> dict[str, str]:
    """The tiny assets of each model family in rlhf.tiny.FAMILIES (a test using it runs once per family),
    each built once per session; the dict is build_tiny_assets' plus "family" (its name)."""
    from rlhf.tiny import build_tiny_assets

    family = request.param
    if family == "char":
        paths = request.getfixturevalue("tiny_assets")
    else:
        paths = build_tiny_assets(tmp_path_factory.mktemp(f"tiny_{family}") / "assets", seed=0, family=family)
    return {**paths, "family": family}


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """The tiny character-level tokenizer, saved and reloaded with AutoTokenizer."""
    from transformers import AutoTokenizer

    from rlhf.tiny import build_tokenizer

    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tokenizer(out_dir)
    return AutoTokenizer.from_pretrained(str(out_dir))


@pytest.fixture(scope="session")
def tiny_assets_dir(tiny_assets) -> str:
    """The directory holding the tiny assets (what configs name as `tiny_assets`)."""
    return tiny_assets["root"]


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole session (starting Ray costs ~10 s here); yields its address
    so child processes can join it with RAY_ADDRESS. 8 logical CPUs: actors ask for fractions anyway."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=8, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def uninterrupted_tiny_ppo(ray_session, tiny_assets_dir, tmp_path_factory) -> dict[int, dict]:
    """step -> metrics of the tiny PPO run with test_ppo_e2e.RESUME_SETTINGS, uninterrupted (run once per
    session): what every interrupted-and-resumed run must reproduce."""
    from test_ppo_e2e import RESUME_SETTINGS, TINY, tiny_overrides

    from rlhf.drivers.metrics import read_metrics
    from rlhf.run import resolve_config, run

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(resolve_config(TINY, tiny_overrides(tiny_assets_dir, out, *RESUME_SETTINGS)))
    return {row["step"]: row for row in read_metrics(out / "metrics.jsonl")}
