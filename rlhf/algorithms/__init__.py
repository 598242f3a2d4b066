"""Pure tensor math for RLHF: PPO, GAE, KL, DPO, reward-model and SFT losses. No Ray, no I/O, no models."""
