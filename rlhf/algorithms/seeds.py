"""Sampling seeds keyed by (seed, step, engine, sample), so runs reproduce and resume exactly.

A seed of the form ``base + step + i`` collides: every engine gets the same seeds in a step,
and step s+1's prompt i reuses step s's prompt i+1 (correlated sampling noise). Hashing the
key instead gives distinct, uncorrelated seeds for every (step, engine, sample), and the same
ones whenever the same key comes again (a resumed run samples what the uninterrupted one did).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63  # torch and vLLM take any non-negative int64


def sampling_seed(seed: int, step: int, engine: int, sample: int, round_index: int = 0) -> int:
    """seed_(seed, step, engine, sample) = first 63 bits of blake2b-64("seed/step/engine/sample"); a
    dynamic-sampling round r > 0 of the same step appends "/r" to the key (round 0 is the plain key)."""
    key = f"{seed}/{step}/{engine}/{sample}{f'/{round_index}' if round_index else ''}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> (64 - SEED_BITS)


def sampling_seeds(seed: int, step: int, engine: int, num_samples: int, round_index: int = 0) -> list[int]:
    """`sampling_seed` of samples 0 .. num_samples-1 of one engine's call in one step (and sampling round)."""
    return [sampling_seed(seed, step, engine, sample, round_index) for sample in range(num_samples)]
