"""Resource pools from config, and the fail-fast check against the cluster."""

import re

import pytest
import ray

from rlhf.config import RLHFConfig
from rlhf.drivers.cluster import ResourceError, actor_options, check_resources, create_placement_groups, plan_pools


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


def test_shared_scoring_process_gets_both_roles_resources_in_one_pool():
    cfg = ppo_config(
        reference={"num_actors": 2, "cpus_per_actor": 0.5, "gpus_per_actor": 0.25},
        reward={"num_actors": 2, "cpus_per_actor": 0.2, "gpus_per_actor": 0.25},
        share_scoring_process=True,
    )
    pools = plan_pools(cfg)
    assert pools["reference"] is pools["reward"]
    assert pools["reference"].bundles == [{"CPU": 0.7, "GPU": 0.5}, {"CPU": 0.7, "GPU": 0.5}]
    options = actor_options(pools, ["reference", "reward"], 1)
    assert (options["num_cpus"], options["num_gpus"]) == (0.7, 0.5)
    assert options["scheduling_strategy"].placement_group_bundle_index == 1
    assert actor_options(pools, ["reward"], 0)["num_cpus"] == 0.2
    # Already colocated together (here with the policy): the same pool, nothing added.
    cfg = ppo_config(colocate=[["policy", "reference", "reward"]], share_scoring_process=True)
    pools = plan_pools(cfg)
    assert pools["policy"] is pools["reference"] is pools["reward"]
    assert len(pools["policy"].bundles) == 1


@pytest.mark.parametrize("resources, message", [
    ({"reference": {"num_actors": 2}}, "resources.share_scoring_process: reference has 2 actors and reward 1"),
    ({"colocate": [["policy", "reward"]]}, "resources.colocate: ['policy', 'reward'] holds only one of reference and reward"),
])
def test_shared_scoring_process_refuses_what_one_process_cannot_host(resources, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ppo_config(share_scoring_process=True, **resources)


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


def test_bundles_add_up_in_rays_units():
    # 1.2 + 4 x 0.2 is 1.9999999999999998 in floats; Ray would cut that bundle to 1.9999 CPUs, too small for the
    # five actors (2.0 CPUs together) it is for, and the last one to be scheduled would never start.
    cfg = ppo_config(rollout={"cpus_per_actor": 1.2}, **{r: {"cpus_per_actor": 0.2} for r in ("policy", "critic", "reference", "reward")},
                     colocate=[["rollout", "policy", "critic", "reference", "reward"]])
    pools = plan_pools(cfg)
    assert pools["rollout"].bundles == [{"CPU": 2.0}]
    assert actor_options(pools, ["reference", "reward"], 0)["num_cpus"] == 0.4

