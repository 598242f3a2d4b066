"""Run the tiny PPO job on a simulated two-node Ray cluster (ray.cluster_utils.Cluster).

Used by test_two_node.py in a child process, because the test process already holds a Ray session.
    python tests/two_node_run.py CONFIG [overrides...]
"""

import sys

import ray
from ray.cluster_utils import Cluster

from rlhf.run import resolve_config, run

if __name__ == "__main__":
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address)
        run(resolve_config(sys.argv[1], sys.argv[2:]))
    finally:
        ray.shutdown()
        cluster.shutdown()
