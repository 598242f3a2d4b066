"""Resource pools from config, and the fail-fast check against the cluster."""

import pytest
import ray

from rlhf.config import RLHFConfig
from rlhf.drivers.cluster import ResourceError, check_resources, create_placement_groups, plan_pools


def ppo_config(**resources):
    return RLHFConfig.model_validate(
        {
            "model": {"policy": "p", "reward": "r"},
            "data": {"train": "t"},
            "algorithm": {"name": "ppo", "ppo": {"rollout_batch_size": 8, "mini_batch_size": 8}},
            "trainer": {"micro_batch_size": 1},
            "resources": resources,
        }
    )


def test_colocated_roles_share_bundles():
    cfg = ppo_config(
        policy={"num_actors": 2, "gpus_per_actor": 0.5, "cpus_per_actor": 1},
        reference={"num_actors": 2, "gpus_per_actor": 0.5, "cpus_per_actor": 1},
        reward={"num_actors": 1, "gpus_per_actor": 0.5},
        critic={"num_actors": 1, "gpus_per_actor": 0.5},
        rollout={"gpus_per_actor": 1},
        colocate=[["policy", "reference"], ["reward", "critic"]],
    )
    pools = plan_pools(cfg)
    assert pools["policy"] is pools["reference"]
    assert pools["policy"].bundles == [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    assert pools["reward"].bundles == [{"CPU": 2.0, "GPU": 1.0}]
    assert pools["rollout"].bundles == [{"CPU": 1.0, "GPU": 1.0}]
    assert pools["rollout"] is not pools["policy"]


def test_reference_from_base_has_no_reference_pool():
    cfg = ppo_config()
    cfg.model.lora.enabled = True
    cfg.model.reference_from_base = True
    assert "reference" not in plan_pools(cfg)


def test_too_big_fails_fast_with_a_table(ray_session):
    cfg = ppo_config(policy={"num_actors": 4, "gpus_per_actor": 1, "cpus_per_actor": 4})
    with pytest.raises(ResourceError) as err:
        check_resources(plan_pools(cfg))
    message = str(err.value)
    assert "needs 4 GPU, the cluster has 0" in message
    assert f"needs 20 CPU, the cluster has {ray.cluster_resources()['CPU']:g}" in message
    assert "policy           4          4          1" in message  # the role table
    assert "cluster nodes:" in message


def test_bundle_that_fits_no_node_is_reported(ray_session):
    cfg = ppo_config(policy={"cpus_per_actor": 64}, reference={"cpus_per_actor": 0.01}, reward={"cpus_per_actor": 0.01},
                     critic={"cpus_per_actor": 0.01}, rollout={"cpus_per_actor": 0.01})
    with pytest.raises(ResourceError, match=r"pool policy: no node can hold a bundle of \{'CPU': 64.0\}"):
        check_resources(plan_pools(cfg))


def test_placement_wait_is_bounded(ray_session):
    # Passes the totals check but a custom resource nobody has keeps the group pending.
    cfg = ppo_config(policy={"cpus_per_actor": 0.1}, reference={"cpus_per_actor": 0.1}, reward={"cpus_per_actor": 0.1},
                     critic={"cpus_per_actor": 0.1}, rollout={"cpus_per_actor": 0.1})
    pools = plan_pools(cfg)
    pools["policy"].bundles[0]["unobtainium"] = 1.0
    with pytest.raises(ResourceError, match="placement groups for policy not ready after 2s"):
        create_placement_groups(pools, timeout_s=2)
    assert all(pool.pg is None for pool in pools.values())
