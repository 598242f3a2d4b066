"""Toy verifiable tasks with rule-based scores."""
