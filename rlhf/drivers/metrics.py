"""Per-step metrics: one JSON line per step in <output_dir>/metrics.jsonl, wandb when enabled, a console progress bar
and a console line every logging.log_interval steps.

On resume the lines of steps after the checkpoint are dropped first, so the file always reads as
one uninterrupted run. wandb runs offline when mode is 'offline' or when 'online' is asked for
without a WANDB_API_KEY.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rlhf.config import LoggingConfig, RLHFConfig

log = logging.getLogger(__name__)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    def __init__(self, cfg: RLHFConfig, total_steps: int, start_step: int = 0):
        self.logging: LoggingConfig = cfg.logging
        self.total_steps = total_steps
        self.dir = Path(cfg.logging.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.history = [row for row in read_metrics(self.path) if row.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(row) + "\n" for row in self.history))
        self._file = self.path.open("a")
        self._wandb = self._start_wandb(cfg)
        self._bar = None
        if cfg.logging.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=cfg.algorithm.name, unit="step", dynamic_ncols=True)

    def _start_wandb(self, cfg: RLHFConfig):
        mode = cfg.logging.wandb.mode
        if mode == "disabled":
            return None
        if mode == "online" and not os.environ.get("WANDB_API_KEY"):
            log.warning("logging.wandb.mode=online but WANDB_API_KEY is not set: logging offline")
            mode = "offline"
        import wandb

        return wandb.init(
            project=cfg.logging.wandb.project,
            name=cfg.logging.wandb.run_name,
            mode=mode,
            dir=str(self.dir),
            config=cfg.model_dump(mode="json"),
            resume="allow",
            id=_stable_run_id(self.dir),
        )

    def log(self, step: int, metrics: dict[str, float], postfix_keys: tuple[str, ...] = (), advance: bool = True) -> None:
        """Append one row; ``advance=False`` for a row that is not a training step (an eval before step 1)."""
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        shown = {k: f"{row[k]:.3g}" for k in postfix_keys if k in row}
        if self._bar is not None:
            self._bar.update(1 if advance else 0)
            self._bar.set_postfix(shown, refresh=False)
        if advance and step % self.logging.log_interval == 0:
            line = f"step {step}/{self.total_steps}  " + "  ".join(f"{k} {v}" for k, v in shown.items())
            if self._bar is not None:
                self._bar.write(line)
            else:
                print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _stable_run_id(output_dir: Path) -> str:
    """One wandb run id per output dir, so a resumed run continues the same wandb run."""
    id_file = output_dir / "wandb_run_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    id_file.write_text(run_id)
    return run_id
