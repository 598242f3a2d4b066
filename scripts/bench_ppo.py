"""Benchmark a fixed tiny PPO configuration: time per phase, response tokens per second, weight-sync MB/s.

    .venv/bin/python scripts/bench_ppo.py [--steps 6] [key=value overrides...]

Runs configs/tiny/ppo.yaml on local Ray with the real vLLM CPU engine, drops the first step
(warm-up) and prints the mean of the rest. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from rlhf.run import resolve_config, run

PHASES = ("time/generate", "time/score", "time/train", "sync/seconds", "time/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--config", default="configs/tiny/ppo.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="bench_ppo_")
    cfg = resolve_config(
        args.config,
        [
            f"algorithm.ppo.num_steps={args.steps}",
            f"logging.output_dir={out}",
            "checkpoint.resume=never",
            "checkpoint.interval=0",
            "logging.wandb.mode=disabled",
            "logging.progress_bar=false",
            "algorithm.ppo.eval_interval=0",
            *args.overrides,
        ],
    )
    rows = run(cfg)["history"][1:]
    mean = {k: statistics.mean(r[k] for r in rows) for k in (*PHASES, "throughput/tokens_per_s", "sync/megabytes")}
    ppo = cfg.algorithm.ppo
    print(f"\nbench_ppo: {len(rows)} measured steps (first dropped), "
          f"{ppo.rollout_batch_size * ppo.samples_per_prompt} responses/step, max {cfg.rollout.max_new_tokens} tokens")
    for key in PHASES:
        print(f"  {key:<24} {mean[key]:8.3f} s")
    print(f"  {'throughput/tokens_per_s':<24} {mean['throughput/tokens_per_s']:8.1f}")
    print(f"  {'weight sync':<24} {mean['sync/megabytes']:8.2f} MB in {mean['sync/seconds']:.3f} s "
          f"= {mean['sync/megabytes'] / mean['sync/seconds']:.1f} MB/s")


if __name__ == "__main__":
    main()
