"""An actor's own output (vLLM, DeepSpeed, transformers, print) in a file of its own: <output_dir>/logs/<role>-<i>.log.

`with_log_file(cls)` is ``cls`` with one more constructor keyword, ``rlhf_log_file``: before the
role's constructor runs (and imports vLLM or DeepSpeed), the process's stdout and stderr, file
descriptors 1 and 2, so C and C++ output too, are pointed at that file (appending, so a restarted
actor continues it). The driver then runs Ray with log_to_driver off and the console stays quiet;
`logging.verbose: true` keeps everything on the console instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def redirect_output(path: str) -> None:
    """Point this process's stdout and stderr at ``path`` (appended to, created with its directory)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def with_log_file(cls: type) -> type:
    """``cls`` whose constructor first sends the process's output to its ``rlhf_log_file`` keyword."""

    class Logged(cls):
        def __init__(self, *args, rlhf_log_file: str, **kwargs):
            redirect_output(rlhf_log_file)
            super().__init__(*args, **kwargs)

    Logged.__name__, Logged.__qualname__ = cls.__name__, cls.__qualname__  # Ray names the actor process by it
    return Logged


def actor_log_file(log_dir: str | os.PathLike, role: str, index: int) -> str:
    return str(Path(log_dir) / f"{role}-{index}.log")
