"""Loading policies, reward and value models, LoRA, and saving Hugging Face-format checkpoints."""
