"""`python -m rlhf.report RUN_DIR`: <RUN_DIR>/report.png, a run at a glance drawn from its metrics.jsonl.

One panel per row of PANELS (reward, KL, losses, logprob gap between rollout and trainer, time per
phase), each plotting over steps every metric of the run that it names; panels with no such metric
are left out, so SFT, RM and DPO runs get their loss and eval panels. It reads whatever steps the file
holds, so it also draws a run that crashed. The PPO driver redraws it at every checkpoint and at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rlhf.drivers.metrics import read_metrics

log = logging.getLogger(__name__)

REPORT = "report.png"

# title -> the metrics it plots (those the run has).
PANELS: dict[str, tuple[str, ...]] = {
    "reward": ("reward/mean", "eval/reward/mean", "eval/accuracy", "eval/reward_accuracy"),
    "KL": ("kl/mean", "kl/coef"),
    "losses": ("policy/loss", "value/loss", "loss", "eval/loss"),
    "logprob gap (rollout vs trainer)": ("rollout/logprob_diff_max", "rollout/logprob_diff_mean"),
    "time per phase (s)": ("time/generate", "time/score", "time/train", "sync/seconds", "time/step"),
}


def draw_report(run_dir: str | os.PathLike) -> Path | None:
    """Write <run_dir>/report.png; None when the run has no metrics yet."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    history = [row for row in read_metrics(run_dir / "metrics.jsonl") if row.get("step", 0) > 0]
    panels = {title: [k for k in keys if any(k in row for row in history)] for title, keys in PANELS.items()}
    panels = {title: keys for title, keys in panels.items() if keys}
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys) in zip(axes[:, 0], panels.items()):
        for key in keys:
            points = [(row["step"], row[key]) for row in history if key in row]
            ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 50 else None, label=key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{run_dir.name}: {len(history)} steps", fontsize=11)
    fig.tight_layout()
    path = run_dir / REPORT
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def update_report(run_dir: str | os.PathLike) -> None:
    """Redraw report.png during a run; a run never fails over its picture (e.g. matplotlib not installed)."""
    try:
        draw_report(run_dir)
    except ImportError as err:
        log.warning("no %s: %s", REPORT, err)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run's logging.output_dir (holds metrics.jsonl)")
    args = parser.parse_args(argv)
    if not (Path(args.run_dir) / "metrics.jsonl").is_file():
        print(f"report error: {args.run_dir}: no metrics.jsonl", file=sys.stderr)
        return 2
    path = draw_report(args.run_dir)
    if path is None:
        print(f"report error: {args.run_dir}: metrics.jsonl has no steps", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
