"""Resuming a stage whose Ray Train record of its checkpoints a kill left unreadable.

Ray Train resumes a stage from its snapshot (:data:`SNAPSHOT`), which it rewrites
in place after every checkpoint; a run killed during that write, or restarted
while a killed run's workers still write it, leaves it unreadable. So rank 0
also names each complete checkpoint (every rank's part stored) in its own
record, :data:`LATEST`, replaced atomically (:func:`record_latest`). Before a
stage starts, the driver asks :func:`recover` which checkpoint to resume from
when Ray Train cannot say, and after it finishes :func:`forget_recovered`
removes the step folders Ray Train's new record never lists.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rayalign.learners import ResumeError

SNAPSHOT = "checkpoint_manager_snapshot.json"
"""Ray Train's record of a run's checkpoints, in the stage's checkpoint folder: what it resumes from."""
LATEST = "latest.json"
"""rayalign's own record of the newest complete checkpoint, beside Ray's: ``{"checkpoint": "step-NNNNNN",
"summary": {...}}``, replaced atomically. Ray Train rewrites its snapshot in place, so a run killed in
that write (or restarted while a killed run's workers still write it) leaves it unreadable."""


def record_latest(folder: Path, name: str, summary: dict) -> None:
    """Write :data:`LATEST` for checkpoint ``name`` atomically (a temporary file, then a rename)."""
    tmp = folder / f".{LATEST}.tmp"
    tmp.write_text(json.dumps({"checkpoint": name, "summary": summary}, indent=2))
    os.replace(tmp, folder / LATEST)


@dataclass(frozen=True)
class Recovered:
    """A checkpoint to resume from that Ray Train cannot name."""

    checkpoint: Path
    summary: dict
    """What was reported with it."""
    reason: str


def recover(folder: Path, *, settle_s: float = 5.0, poll_s: float = 0.5) -> Recovered | None:
    """None when Ray Train resumes this stage itself: its snapshot reads (waiting up to ``settle_s``
    for a writer to finish) and lists a checkpoint, or there is no checkpoint at all (a fresh start).
    Otherwise the checkpoint :data:`LATEST` names: an unreadable snapshot is set aside (``.unreadable``)
    so that Ray Train starts a new record, and step folders newer than that checkpoint (not known to be
    complete) are removed. Raises :class:`ResumeError`, naming the file, when the snapshot is unreadable
    and nothing else says which checkpoint is complete."""
    snapshot, latest = folder / SNAPSHOT, folder / LATEST
    problem = _snapshot_problem(snapshot, settle_s, poll_s)
    if problem is None or (not latest.exists() and not snapshot.exists()):
        return None
    if not latest.exists():
        if problem == "lists no checkpoint":
            return None
        raise ResumeError(
            f"{snapshot}: Ray Train's checkpoint record {problem} and {latest} is missing, so nothing says "
            f"which checkpoint is complete; start the stage over (rayalign {folder.name} CONFIG --restart)"
        )
    record = json.loads(latest.read_text())
    if snapshot.exists():
        snapshot.replace(snapshot.with_name(SNAPSHOT + ".unreadable"))
    for newer in folder.glob("step-*"):
        if newer.name > record["checkpoint"]:
            shutil.rmtree(newer)
    return Recovered(folder / record["checkpoint"], record["summary"], f"{snapshot} {problem}")


def _snapshot_problem(path: Path, settle_s: float, poll_s: float) -> str | None:
    """What keeps Ray Train from resuming from its snapshot at ``path``, or None. An unparsable one is
    read again until ``settle_s`` has passed (a killed run's workers may still be writing it)."""
    if not path.exists():
        return "is missing"
    deadline = time.monotonic() + settle_s
    while True:
        try:
            record = json.loads(path.read_text())
            listed = record.get("checkpoint_results", [None]) if isinstance(record, dict) else [None]
            return None if listed else "lists no checkpoint"
        except (OSError, ValueError) as e:
            if time.monotonic() >= deadline:
                return f"is unreadable ({e})"
        time.sleep(poll_s)


def forget_recovered(folder: Path, recovered: Path, keep: Path) -> None:
    """Remove the step folders up to ``recovered`` but ``keep``: Ray Train's new record never lists them."""
    for old in folder.glob("step-*"):
        if old.name <= recovered.name and old != keep:
            shutil.rmtree(old)
