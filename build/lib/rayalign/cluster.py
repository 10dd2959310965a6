"""Starting or joining Ray, and what of it reaches the console.

The resource plan each stage asks of Ray is checked on config load, in
:mod:`rayalign.resource_plan`.

Quiet by default (the CLI calls :func:`configure_console` once per command):
every Ray worker's output (vLLM samplers, Serve judge replicas, Ray Train
learners with DeepSpeed and W&B, Ray Data tasks) stays in the Ray session's
log files, linked from ``<run_dir>/logs/``, instead of being forwarded to the
driver (``ray.init(log_to_driver=False)``); the driver's own Ray, Ray Data,
Serve and Train loggers write INFO to ``<run_dir>/logs/driver.log`` and only
warnings to the console; Python warnings go to that file; W&B is silent
(``WANDB_SILENT``). What rayalign prints (progress lines, the judge's losses,
each stage's summary) is untouched. ``--verbose`` (or ``RAYALIGN_VERBOSE=1``)
keeps Ray's defaults: every worker's output on the console, as before.
Library callers that never call :func:`configure_console` get Ray's defaults too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rayalign.config import load_config
from rayalign.config_tree import ClusterConfig
from rayalign.progress import PROGRESS_ENV
from rayalign.runs import RunLayout

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
VERBOSE_ENV = "RAYALIGN_VERBOSE"
"""``1``: Ray's default console (every worker's output); the CLI's ``-v/--verbose`` sets it."""
DRIVER_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "deepspeed", "DeepSpeed", "wandb")
"""Third-party loggers of the driver process whose INFO goes to ``driver.log`` instead of the console."""
CONSOLE_FLOOR = {"ray.serve": logging.ERROR, "ray.data": logging.ERROR}
"""Quiet mode's console threshold per logger (default WARNING). Serve's driver-side warnings are about
itself (a later stage's HTTP options ignored by the running Serve); the judge client counts lost verdicts.
Ray Data's are about its own progress bars and execution plans, which the stage's progress line replaces."""
DRIVER_LOG = "driver.log"


@dataclass(frozen=True)
class Console:
    """What reaches the console in this process."""

    verbose: bool
    log_dir: Path | None
    """``<run_dir>/logs``: the driver's log file and links to the Ray sessions' logs."""

    def failure_hint(self) -> str:
        """Where to look when a command failed with the workers' output off the console."""
        if self.verbose or self.log_dir is None:
            return ""
        return f"[rayalign] failed: Ray, vLLM, Serve and DeepSpeed logs are under {self.log_dir}/ (-v shows them here)"


_console: Console | None = None


def env_verbose() -> bool:
    """``RAYALIGN_VERBOSE`` set to 1/true/yes."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def configure_console(log_dir: str | Path | None = None, *, verbose: bool | None = None) -> Console:
    """Quiet (the default) or verbose console for this process; applied now to the
    environment (inherited by a local Ray's workers), and to Ray by :func:`init_ray`.
    Nothing is written until Ray starts."""
    global _console
    verbose = env_verbose() if verbose is None else verbose
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if verbose:
        os.environ.setdefault(PROGRESS_ENV, "plain")  # forwarded worker lines would tear a live bar
    else:
        os.environ.setdefault("WANDB_SILENT", "true")
    _console = Console(verbose, Path(log_dir) if log_dir else None)
    return _console


def console_for(config: str | None, overrides: Sequence[str] | None, verbose: bool = False) -> Console:
    """:func:`configure_console` for a CLI command on ``config`` with ``overrides`` (its run's
    ``logs/``; none without a config); verbose with ``-v`` or ``RAYALIGN_VERBOSE=1``."""
    log_dir = None
    if config and overrides is not None:
        common = [o for o in overrides if ":" not in o.split("=", 1)[0]]  # --STAGE:key=v are rayalign run's
        log_dir = RunLayout.of(load_config(config, common)).logs
    return configure_console(log_dir, verbose=verbose or env_verbose())


def init_ray(cluster: ClusterConfig, *, runtime_env: dict | None = None):
    """Start a private local Ray (``address: local``) or join an existing one.

    ``address: local`` never attaches to a ``ray start`` cluster that happens
    to run on the machine.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray
    quiet = _console is not None and not _console.verbose
    console = {"log_to_driver": not quiet, "logging_level": logging.INFO}
    if cluster.address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        context = ray.init(
            address="local",
            num_cpus=cluster.num_cpus,
            num_gpus=cluster.num_gpus,
            resources=dict(cluster.resources) or None,
            object_store_memory=cluster.object_store_mib << 20,
            include_dashboard=False,
            runtime_env=runtime_env,
            **console,
        )
    else:
        context = ray.init(address=cluster.address, runtime_env=runtime_env, **console)
    if quiet:
        session_dir = getattr(context, "address_info", {}).get("session_dir")  # a ray:// client has none
        where = _quiet_driver(_console.log_dir, session_dir)
        print(f"[ray] up ({cluster.address}); Ray, vLLM, Serve and DeepSpeed logs: {where} (-v shows them here)")
    return ray


def _quiet_driver(log_dir: Path | None, session_dir: str | None) -> str:
    """Driver loggers' INFO to ``<log_dir>/driver.log``, warnings still on the console; a link
    ``<log_dir>/<session>`` to the Ray session's logs (workers' output). Returns where logs are."""
    logs = Path(session_dir) / "logs" if session_dir else None
    if log_dir is None:
        return str(logs) if logs else "the Ray session's logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if logs is not None and logs.is_dir():
        link = log_dir / Path(session_dir).name
        if not link.exists():
            link.symlink_to(logs.resolve(), target_is_directory=True)
    import ray.data  # noqa: F401  (Ray Data sets its console handler up on import: filter that one too)

    file = logging.FileHandler(log_dir / DRIVER_LOG, delay=True)
    file.setLevel(logging.INFO)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    for name in (*DRIVER_LOGGERS, "py.warnings"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _on_console(handler) and not any(isinstance(f, _ConsoleFloor) for f in handler.filters):
                handler.addFilter(_ConsoleFloor(CONSOLE_FLOOR.get(name, logging.WARNING)))
        if logger.handlers or not logger.propagate or "." not in name:  # ray.train reaches ray's handlers
            logger.handlers = [h for h in logger.handlers if not isinstance(h, _DriverLog)] + [_DriverLog(file)]
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").propagate = False  # Python warnings: the file only
    return str(log_dir)


def _on_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


class _ConsoleFloor(logging.Filter):
    """A console handler's filter in quiet mode: records below ``level`` go to driver.log only."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _DriverLog(logging.Handler):
    """Forwards to the run's driver.log (one class, so a second stage in the process replaces it)."""

    def __init__(self, file: logging.FileHandler):
        super().__init__(logging.INFO)
        self.file = file

    def emit(self, record: logging.LogRecord) -> None:
        self.file.handle(record)
