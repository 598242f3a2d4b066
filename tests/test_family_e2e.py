"""End to end on every real-model-shaped tiny family (Llama-3-, Qwen2- and Mistral-shaped; the char
family's longer runs are in test_dpo_sft_rm.py and test_ppo_e2e.py): SFT -> RM -> PPO with that RM,
SFT -> DPO, and PPO from the random policy on the rule reward, which must learn.

Kept short (total test time matters): the pipeline's stages run a few steps each, and both PPO runs
sample with the transformers rollout backend (no vLLM start, ~10 s here). vLLM generates, stops on
each family's EOS set and syncs every family in test_family_sync.py, and learns PPO on the char
family in test_ppo_e2e.py.
"""

from __future__ import annotations


import pytest
from test_dpo_sft_rm import evals, tiny_config
from test_ppo_e2e import TINY, tiny_overrides

from rlhf.drivers.metrics import read_metrics
from rlhf.run import resolve_config, run

pytestmark = pytest.mark.slow

ARCH = {"llama3": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}


@pytest.fixture
def family(family_assets):
    if family_assets["family"] == "char":
        pytest.skip("the char family's end-to-end runs are test_dpo_sft_rm.py and test_ppo_e2e.py")
    return family_assets


def test_family_sft_rm_ppo_and_sft_dpo(family, ray_session, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    root, name = family["root"], family["family"]
    picks = f"tiny_family={name}"
    sft = run(tiny_config("sft", root, tmp_path / "sft", picks, "trainer.num_epochs=6"))["history"]
    loss = evals(sft, "eval/loss")  # at step 0 and at the end
    assert loss[-1][1] < 0.5 * loss[0][1], loss
    policy = tmp_path / "sft" / "policy"
    assert type(AutoModelForCausalLM.from_pretrained(policy)).__name__ == f"{ARCH[name]}ForCausalLM"

    rm = run(tiny_config("rm", root, tmp_path / "rm", picks, f"model.policy={policy}", "trainer.num_epochs=2"))["history"]
    assert evals(rm, "eval/accuracy")[-1][1] > 0.5, evals(rm, "eval/accuracy")
    reward = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm" / "reward")
    assert type(reward).__name__ == f"{ARCH[name]}ForSequenceClassification"

    ppo_out = tmp_path / "ppo"
    run(resolve_config(TINY, tiny_overrides(
        root, ppo_out, picks, f"model.policy={policy}", f"model.reward={tmp_path / 'rm' / 'reward'}",
        "model.reward_fn=null", "model.critic=null", "rollout.backend=hf", "algorithm.ppo.num_steps=2",
        "algorithm.ppo.eval_interval=0", "checkpoint.interval=0", "algorithm.ppo.kl_coef=0.2",
    )))
    history = read_metrics(ppo_out / "metrics.jsonl")
    assert [row["step"] for row in history] == [1, 2]
    assert max(row["rollout/logprob_diff_max"] for row in history) < 1e-3

    dpo = run(tiny_config("dpo", root, tmp_path / "dpo", picks, f"model.policy={policy}", "trainer.num_epochs=1",
                          "algorithm.dpo.nll_coef=0.0", "trainer.learning_rate=3e-4"))["history"]
    accuracy = evals(dpo, "eval/rewards/accuracies")
    assert accuracy[-1][1] > 0.5, accuracy


def test_family_ppo_learns(family, ray_session, tmp_path):
    out = tmp_path / "ppo"
    run(resolve_config(TINY, tiny_overrides(
        family["root"], out, f"tiny_family={family['family']}", "rollout.backend=hf", "algorithm.ppo.num_steps=20",
        "algorithm.ppo.eval_interval=0", "checkpoint.interval=0",
    )))
    history = read_metrics(out / "metrics.jsonl")
    rewards = [round(row["reward/mean"], 3) for row in history]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    print(f"{family['family']}: reward/mean per step {rewards}; first 3 {first:.3f} -> last 3 {last:.3f}")
    assert max(row["rollout/logprob_diff_max"] for row in history) < 1e-3
    assert last > first + 0.1, (first, last)
