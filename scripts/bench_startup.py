"""Time to the first optimizer step of each tiny config, as a user starts it: `python -m rlhf.run CONFIG`.

    .venv/bin/python scripts/bench_startup.py [--configs ppo grpo dpo ...] [--repeat N]

Each config runs as its own process, one step, on a fresh local Ray (so Ray's start is counted), with
its tiny assets already built. The figure is the run's own ``time/to_first_step`` (`rlhf.drivers.startup`:
from the process's start to the end of step 1) and its phases, from the summary's start-up line. Also printed: the CPU seconds the whole machine spent during the
run (every process: the driver, Ray, every actor) and that as a share of all cores over the run's wall
time; near 100% the start-up is bound by the number of cores, not by waiting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
# Stop every algorithm after its first step, with no eval or checkpoint in between (each key is harmless
# to the algorithms that do not read it).
ONE_STEP = ["algorithm.ppo.num_steps=1", "algorithm.ppo.eval_interval=0", "trainer.max_steps=1", "trainer.eval_interval=0"]


def one_run(config: Path, out: Path) -> dict:
    overrides = [*ONE_STEP, "checkpoint.interval=0", "checkpoint.resume=never", f"logging.output_dir={out}",
                 "logging.wandb.mode=disabled", "logging.progress_bar=false"]
    busy_before, started = _busy_cpu_seconds(), time.time()
    proc = subprocess.run([sys.executable, "-m", "rlhf.run", str(config), *overrides], cwd=REPO,
                          capture_output=True, text=True)
    busy, wall = _busy_cpu_seconds() - busy_before, time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"{config}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    first = next(row for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if row["step"] == 1)
    line = next(x for x in (out / "summary.txt").read_text().splitlines() if x.startswith("start-up:"))
    # The whole run's CPU work over the machine's capacity in that time: near 1, the cores were the limit.
    return {"to_first_step": first["time/to_first_step"], "phases": line.split("(", 1)[1].rstrip(")"),
            "cpu_s": busy, "busy": busy / (wall * psutil.cpu_count())}


def _busy_cpu_seconds() -> float:
    """CPU seconds this machine's cores have spent not idle since boot (every process, not only ours)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", help="names under configs/tiny (default: all)")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    names = args.configs or sorted(p.stem for p in (REPO / "configs" / "tiny").glob("*.yaml"))
    print(f"machine: {psutil.cpu_count()} cores")
    print(f"{'config':<16} {'first step s':>12} {'run CPU-s':>9} {'cores busy':>10}  phases (s)")
    for name in names:
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory(prefix=f"startup_{name}_") as tmp:
                result = one_run(REPO / "configs" / "tiny" / f"{name}.yaml", Path(tmp) / "out")
            print(f"{name:<16} {result['to_first_step']:>12.1f} {result['cpu_s']:>9.1f} {result['busy']:>10.0%}  "
                  f"{result['phases']}", flush=True)


if __name__ == "__main__":
    main()
