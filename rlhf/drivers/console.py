"""A quiet console: the driver shows its own lines, the progress bar, a line every logging.log_interval steps and
the summary; everything else goes to <output_dir>/logs/.

Third-party loggers in the driver (Ray, transformers, wandb) show warnings only; the actors' output
(vLLM, DeepSpeed, Ray's worker lines) goes to <output_dir>/logs/<role>-<i>.log (`rlhf.workers.actor_logs`)
because Ray runs with log_to_driver off; <output_dir>/logs/driver.log keeps the driver's full log.
`logging.verbose: true` puts everything back on the console.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from rlhf.config import RLHFConfig

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def log_dir(cfg: RLHFConfig) -> str | None:
    """Where actors write their output; None (the console, through Ray) with logging.verbose."""
    return None if cfg.logging.verbose else str(Path(cfg.logging.output_dir) / "logs")


class _OwnLinesOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("rlhf")


@contextmanager
def quiet_console(cfg: RLHFConfig):
    """Route the driver's logging as the module docstring says while the run is inside this block."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if cfg.logging.verbose:
        yield
        return
    own_lines = _OwnLinesOnly()
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler]
    for handler in consoles:
        handler.addFilter(own_lines)
    logs = Path(cfg.logging.output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(logs / "driver.log")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        yield
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        for handler in consoles:
            handler.removeFilter(own_lines)
