"""Killing a training run as a crash would, and reading what it left: shared by the kill-and-resume tests."""

import contextlib
import json

import psutil

from rayalign.recovery import LATEST, SNAPSHOT


def kill_run(pid: int) -> None:
    """SIGKILL the driver and every process it started. The driver's process group holds it, GCS and the
    raylet, but the workers the raylet starts (the Ray Train learners among them) may not be in it: a
    group kill leaves them to train on, and register checkpoints, until they notice their raylet is gone.
    Stop the whole tree first (so no process starts or reports another), then kill it. The caller reaps
    ``pid`` itself (reaping it here would leave its Popen an exit status of 0)."""
    stopped: dict[int, psutil.Process] = {}
    while True:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)] if psutil.pid_exists(pid) else []
        new = [p for p in tree if p.pid not in stopped]
        if not new:
            break
        for p in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()
            stopped[p.pid] = p
    for p in stopped.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs([p for p in stopped.values() if p.pid != pid], timeout=30)


def checkpoint_folder(run_dir, stage: str):
    return run_dir / stage / "checkpoints" / stage


def recorded(run_dir, stage: str) -> list[int]:
    """The steps whose checkpoints Ray Train's snapshot lists (what a re-run resumes from); one written an
    instant before a kill may never be listed."""
    try:
        snapshot = json.loads((checkpoint_folder(run_dir, stage) / SNAPSHOT).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [int(r["checkpoint_dir_name"].split("-")[1]) for r in snapshot.get("checkpoint_results", [])]


def latest(run_dir, stage: str) -> int | None:
    """The step of rayalign's own record of the newest complete checkpoint, if written."""
    path = checkpoint_folder(run_dir, stage) / LATEST
    return int(json.loads(path.read_text())["checkpoint"].split("-")[1]) if path.exists() else None


def saved(run_dir, stage: str) -> list[int]:
    """The steps of the checkpoint folders on disk that hold a state record."""
    folder = checkpoint_folder(run_dir, stage)
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "state.json").exists())
