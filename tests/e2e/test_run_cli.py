"""`rayalign run` through the CLI: the whole pipeline on the tiny model, killed with SIGKILL
during SFT and run again. Stage 1 is skipped (finished with the same settings), SFT goes on
from its last checkpoint, then RL (from the SFT model) and eval run to the end."""

import contextlib
import json
import subprocess
import sys
import time

import psutil
import pytest

SFT_STEPS = 40  # tiny-model steps take ~0.4 s: room to kill the run between its checkpoints
OVERRIDES = [
    # stage 1 as tests/e2e/test_stage1.py runs it
    "--model.policy=builtin:tiny",
    "--model.max_model_len=16384",
    "--data.max_prompts=12",  # 10 refuse-labelled (one per category) and 2 comply-labelled: SFT gets data
    "--data.shard_size=4",
    "--rollout.n=2",
    "--rollout.max_new_tokens=64",
    "--rollout.enforce_format=true",
    "--judge.backend=function",
    "--judge.function=rayalign.testing:length_judge",
    "--judge.k=2",
    "--judge.cascade=false",  # the e2e stage-1 test covers the cascade
    "--filter.min_score=1.0",
    # SFT: enough steps to be killed between checkpoints
    f"--sft.max_steps={SFT_STEPS}",
    "--sft.micro_batch_size=2",
    "--sft.max_seq_len=256",
    "--sft.learner.checkpoint_every=4",
    # RL and eval, small
    "--rl.steps=2",
    "--rl.group_size=2",
    "--rl.max_new_tokens=48",
    "--rl.micro_batch_size=2",
    "--eval.limit=2",
    "--eval.max_new_tokens=24",
    "--eval.bootstrap_samples=200",
    # a stage-scoped override: eval judges once per answer
    "--eval:judge.k=1",
    "--tracking.wandb_mode=disabled",
]


def _cmd(run_dir):
    return [
        sys.executable,
        "-m",
        "rayalign.cli",
        "run",
        "configs/quickstart.yaml",
        *OVERRIDES,
        f"--tracking.run_dir={run_dir}",
    ]


def _registered(run_dir) -> bool:
    """Ray Train has recorded a checkpoint of this run (what a re-run resumes from)."""
    snapshot = run_dir / "sft" / "checkpoints" / "sft" / "checkpoint_manager_snapshot.json"
    return snapshot.exists() and "step-" in snapshot.read_text()


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


def _sft_checkpoints(run_dir) -> list[int]:
    folder = run_dir / "sft" / "checkpoints" / "sft"
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / "state.json").exists())


def test_run_killed_during_sft_resumes_and_finishes_every_stage(repo, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(run_dir), cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 900
    # Kill once Ray Train has registered a checkpoint (one written an instant before a SIGKILL may never
    # be registered, and is then not resumed).
    while not _registered(run_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_run(proc.pid)  # the driver, Ray and every actor of the run
    proc.wait(timeout=60)
    first = proc.stdout.read()
    if proc.returncode == 0:
        pytest.fail("the run finished before it could be killed")
    saved = _sft_checkpoints(run_dir)
    assert saved and max(saved) < SFT_STEPS, first[-3000:]
    records = json.loads((run_dir / "pipeline.json").read_text())
    assert list(records) == ["generate"]  # stage 1 finished and was recorded; SFT was not
    assert "[generate] shard" in first and "stage 1 done in" in first  # a progress line, then the summary block

    again = subprocess.run(_cmd(run_dir), cwd=repo, capture_output=True, text=True, timeout=1800)
    out = again.stdout
    assert again.returncode == 0, out[-3000:] + again.stderr[-3000:]
    assert "[run] generate: finished" in out and "skipped" in out.split("[run] sft")[0]
    resumed_from = int(out.split("SFT done in")[1].split("steps")[1].split("->")[0])
    assert resumed_from > 0 and resumed_from in saved and f"->{SFT_STEPS}, final loss" in out
    assert "RL done in" in out and "eval done in" in out
    assert (run_dir / "rl" / "model" / "config.json").exists() and (run_dir / "eval" / "report.md").exists()
    assert list(json.loads((run_dir / "pipeline.json").read_text())) == ["generate", "sft", "rl", "eval"]
    # Quiet console: no worker chatter forwarded; Ray's own logs are linked from <run_dir>/logs.
    assert "(RayTrainWorker pid=" not in out and "(ServeReplica" not in out
    assert any(p.is_symlink() for p in (run_dir / "logs").iterdir())
    # RL started from this run's SFT model.
    assert str(run_dir / "sft" / "model") in out

    # A third run finds every stage finished.
    third = subprocess.run(_cmd(run_dir), cwd=repo, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert third.stdout.count("with these settings, skipped") == 4 and "Ray Train" not in third.stdout
