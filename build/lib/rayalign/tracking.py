"""Experiment tracking: W&B when configured, a no-op otherwise, and always a
plain JSONL log of every metric.

    tracker = start_tracking(cfg.tracking, "sft", to_dict(cfg))
    tracker.log({"sft/loss": 2.31, "timing/step": 0.42}, step=1)
    tracker.finish()

Metric names are ``stage/metric`` (``sft/loss``, ``rl/reward``) and
``timing/phase`` (``timing/generate``). Every ``log`` also appends one line
``{"step": 1, "sft/loss": 2.31, ...}`` to ``<run_dir>/metrics.jsonl``, so a
run can be inspected (and tested) without W&B. A resumed run appends again:
for a step logged twice, the later line is the one that counts.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rayalign.config import TrackingConfig

METRICS_FILE = "metrics.jsonl"
TABLES_FILE = "tables.jsonl"
SUMMARY_FILE = "summary.json"


def _plain(value: Any) -> Any:
    """A JSON-safe number: tensors and numpy scalars become floats, NaN becomes None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Tracker:
    """Writes metrics to ``<run_dir>/*.jsonl`` and, when given a W&B run, to W&B too.

    With ``wandb_run=None`` it is the no-op tracker (nanochat's ``DummyWandb``)
    plus the JSONL log; with ``run_dir=None`` nothing is written to disk either.
    """

    def __init__(self, run_dir: str | Path | None, wandb_run: Any = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.wandb_run = wandb_run
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _append(self, name: str, record: dict) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / name, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``{"stage/metric": value}`` at ``step``."""
        values = {k: _plain(v) for k, v in metrics.items()}
        self._append(METRICS_FILE, {"step": step, "time": round(time.time(), 3), **values})
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def table(self, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        """Record a table, e.g. (prompt, reasoning, answer, verdict) samples."""
        plain_rows = [[_plain(v) for v in row] for row in rows]
        self._append(TABLES_FILE, {"step": step, "name": name, "columns": list(columns), "rows": plain_rows})
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Table(columns=list(columns), data=plain_rows)}, step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Final numbers of the run (merged into ``summary.json``)."""
        plain = {k: _plain(v) for k, v in values.items()}
        if self.run_dir is not None:
            path = self.run_dir / SUMMARY_FILE
            old = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps({**old, **plain}, indent=2, ensure_ascii=False))
        if self.wandb_run is not None:
            self.wandb_run.summary.update(plain)

    def finish(self) -> None:
        """Flush and close the W&B run (a no-op without one)."""
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def wandb_mode(cfg: TrackingConfig) -> str:
    """The mode W&B will run in: ``WANDB_MODE=disabled`` in the environment wins.

    >>> wandb_mode(TrackingConfig(wandb_mode="disabled"))
    'disabled'
    """
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return "disabled"
    return cfg.wandb_mode


def start_tracking(
    cfg: TrackingConfig,
    run_name: str,
    config_dict: Mapping[str, Any],
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> Tracker:
    """A tracker for one stage run, writing under ``run_dir`` (default ``cfg.run_dir``).

    W&B runs (offline or online) are written to ``<run_dir>/wandb/``; offline
    ones are uploaded later with ``wandb sync <run_dir>/wandb/offline-run-*``.
    With ``resume``, every start of ``run_name`` in ``run_dir`` continues one
    W&B run (its id is kept in ``<run_dir>/wandb/<run_name>.run-id``; offline
    pieces of one id sync as one run, in order) until :func:`forget_run`.
    W&B keeps the first value logged at a step: steps a killed run logged after
    its last checkpoint keep their first values there (metrics.jsonl has both).
    """
    run_dir = Path(run_dir if run_dir is not None else cfg.run_dir)
    mode = wandb_mode(cfg)
    if mode == "disabled":
        return Tracker(run_dir)
    import wandb  # only when used: the import costs ~1 s

    run_dir.mkdir(parents=True, exist_ok=True)
    # WANDB_DIR and dir= both point W&B at the run directory; the env var also
    # reaches W&B's helper processes.
    os.environ["WANDB_DIR"] = str(run_dir.resolve())
    same_run = {"id": _stable_run_id(run_dir, run_name), "resume": "allow"} if resume else {}
    run = wandb.init(
        project=cfg.project,
        name=run_name,
        config=dict(config_dict),
        dir=str(run_dir.resolve()),
        mode=mode,
        reinit="create_new",
        **same_run,
    )
    return Tracker(run_dir, run)


def run_id_path(run_dir: str | Path, run_name: str) -> Path:
    return Path(run_dir) / "wandb" / f"{run_name}.run-id"


def _stable_run_id(run_dir: Path, run_name: str) -> str:
    path = run_id_path(run_dir, run_name)
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    run_id = secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


def forget_run(run_dir: str | Path, run_name: str) -> None:
    """The next resumable start of ``run_name`` opens a new W&B run (a ``--restart``)."""
    run_id_path(run_dir, run_name).unlink(missing_ok=True)
