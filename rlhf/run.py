"""Command-line entry point: `python -m rlhf.run CONFIG [key.sub=value ...] [--print-config] [--dry-run]`.

Exit codes: 0 success, 2 config, data or checkpoint error (one line, no traceback), 3 the cluster lacks
the resources the plan needs, 1 a role failed or timed out during the run, 143 stopped by SIGTERM
after a step and its checkpoint (resume with checkpoint.resume=auto).
"""

from __future__ import annotations

import argparse
import logging
import sys

from rlhf.config import ConfigError, RLHFConfig, check_paths, load_config, to_yaml
from rlhf.registry import get_algorithm

log = logging.getLogger("rlhf")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rlhf.run", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, values parsed as YAML")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="read and tokenize all data without Ray, print what the model will see, and exit (rlhf.dry_run)")
    return parser.parse_intermixed_args(argv)  # flags may follow the overrides


def resolve_config(path: str, overrides: list[str]) -> RLHFConfig:
    """Load and validate; build the tiny assets first when the config asks for them."""
    cfg = load_config(path, overrides, validate_paths=False)
    if cfg.tiny_assets:
        from rlhf.tiny import build_tiny_assets

        build_tiny_assets(cfg.tiny_assets, family=cfg.tiny_family)
    check_paths(cfg, path)
    return cfg


def run(cfg: RLHFConfig, started_at: float | None = None) -> dict:
    """Connect to (or start) Ray and run the configured algorithm's driver (its `rlhf.registry` entry).

    ``started_at``: where the start-up clock begins (`drivers.startup`; default: now).
    """
    from rlhf.drivers.console import quiet_console
    from rlhf.drivers.startup import StartupClock

    clock = StartupClock(started_at)
    with quiet_console(cfg):
        return _run(cfg, clock)


def _run(cfg: RLHFConfig, clock) -> dict:
    from rlhf.drivers.cluster import connect_ray

    driver = get_algorithm(cfg.algorithm.name).driver_class()(cfg)  # reads no data yet: `Driver.run` does
    clock.mark("python")  # the driver's modules (torch, Ray)
    connect_ray(cfg)
    clock.mark("ray")
    return driver.run(clock)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        cfg = resolve_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0

    from rlhf.data.errors import DataError
    from rlhf.drivers.checkpoint import CheckpointError
    from rlhf.drivers.cluster import ResourceError
    from rlhf.drivers.preemption import EXIT_CODE as PREEMPTED, Preempted
    from rlhf.workers.faults import InjectedFault
    from rlhf.workers.group import WorkerError

    try:
        if args.dry_run:
            from rlhf.dry_run import dry_run

            dry_run(cfg)
        else:
            from rlhf.drivers.startup import process_start_time

            run(cfg, started_at=process_start_time())
    except ConfigError as err:  # found once the roles exist, e.g. a debug.fail_at method no role has
        print(f"config error: {args.config}: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"data error: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"checkpoint error: {err}", file=sys.stderr)
        return 2
    except ResourceError as err:
        print(f"resource error: {err}", file=sys.stderr)
        return 3
    except (WorkerError, InjectedFault) as err:
        print(f"run failed: {err}", file=sys.stderr)
        return 1
    except Preempted as err:
        print(str(err), file=sys.stderr)
        return PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
