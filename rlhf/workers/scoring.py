"""The reference and the reward role hosted by one actor process (resources.share_scoring_process).

Both roles are frozen scorers, and a process per role costs its start-up (mostly imports: ~5
CPU-seconds each on this machine's cores), which dominates short runs such as the tiny configs. A
`ScoringWorker` builds both workers in one process and answers both roles' methods; Ray runs its
calls one after the other, in the order they were submitted (so with a large model the two passes
no longer overlap: scripts/bench_ppo_scale.py keeps them apart). The driver still addresses each
role by name (`WorkerGroup.view`), so errors, timeouts and debug.fail_at name the role whose call
it was.
"""

from __future__ import annotations

import torch

from rlhf.config import RLHFConfig
from rlhf.workers.reference import ReferenceWorker
from rlhf.workers.reward import RewardWorker
from rlhf.workers.trainer_base import Batch, RoleWorker


class ScoringWorker(RoleWorker):
    """A `ReferenceWorker` and a `RewardWorker` in one process; each method forwards to its role's worker."""

    ROLE_CLASSES = {"reference": ReferenceWorker, "reward": RewardWorker}

    def __init__(self, cfg: RLHFConfig):
        self.reference = ReferenceWorker(cfg)
        self.reward = RewardWorker(cfg)

    def logprobs(self, batch: Batch) -> torch.Tensor:
        return self.reference.logprobs(batch)

    def sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        return self.reference.sequence_logprobs(batch)

    def scores(self, batch: Batch, prompts: list[str] | None = None) -> torch.Tensor:
        return self.reward.scores(batch, prompts)
