"""The training loops: PPO, DPO, SFT, RM. Orchestration only."""
