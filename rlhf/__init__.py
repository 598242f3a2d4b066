"""rlhf: a Ray-distributed RLHF system (PPO with a KL penalty, DPO, SFT, reward modelling)."""
