"""Placement across nodes: the tiny PPO run on a simulated two-node cluster, roles spread over both."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.drivers.metrics import read_metrics
from test_ppo_e2e import TINY, tiny_overrides

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_roles_land_on_two_nodes_and_the_run_completes(tiny_assets_dir, tmp_path):
    out = tmp_path / "run"
    # 3.3 CPUs of roles on two 2-CPU nodes: no single node can hold them all. Each role in its own process (the
    # default; configs/tiny/ppo.yaml hosts the reference and the reward in one).
    overrides = tiny_overrides(
        tiny_assets_dir, out, "algorithm.ppo.num_steps=2", "checkpoint.interval=0", "algorithm.ppo.eval_interval=0",
        "resources.policy.cpus_per_actor=0.9", "resources.critic.cpus_per_actor=0.9",
        "resources.reference.cpus_per_actor=0.5", "resources.reward.cpus_per_actor=0.5",
        "resources.rollout.cpus_per_actor=0.5", "resources.share_scoring_process=false",
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "two_node_run.py"), TINY, *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    placement = json.loads((out / "placement.json").read_text())
    nodes = {node for ids in placement.values() for node in ids}
    assert len(nodes) == 2, placement
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")] == [1, 2]
