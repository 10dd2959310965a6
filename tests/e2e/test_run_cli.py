"""`rayalign run` through the CLI: the whole pipeline on the tiny model, killed with SIGKILL
during SFT, with Ray Train's record of its checkpoints then cut short (as a kill in its rewrite
leaves it), and run again. Stage 1 is skipped (finished with the same settings), SFT goes on from
its last complete checkpoint, then RL (from the SFT model) and eval run to the end."""

import json
import subprocess
import sys
import time

import pytest

from rayalign.recovery import SNAPSHOT
from tests.e2e.killing import checkpoint_folder, kill_run, latest, recorded, saved

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


def test_run_killed_during_sft_resumes_and_finishes_every_stage(repo, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(run_dir), cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 900
    # Kill once a checkpoint is recorded both by Ray Train and by rayalign (latest.json).
    while not (recorded(run_dir, "sft") and latest(run_dir, "sft")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint recorded in time"
        time.sleep(0.2)
    kill_run(proc.pid)  # the driver, Ray and every actor of the run
    proc.wait(timeout=60)
    first = proc.stdout.read()
    if proc.returncode == 0:
        pytest.fail("the run finished before it could be killed")
    resume_at = latest(run_dir, "sft")
    assert resume_at in saved(run_dir, "sft") and resume_at < SFT_STEPS, first[-3000:]
    records = json.loads((run_dir / "pipeline.json").read_text())
    assert list(records) == ["generate"]  # stage 1 finished and was recorded; SFT was not
    assert "[generate] shard" in first and "stage 1 done in" in first  # a progress line, then the summary block
    # As a kill during Ray Train's in-place rewrite of its snapshot leaves it: cut short.
    snapshot = checkpoint_folder(run_dir, "sft") / SNAPSHOT
    snapshot.write_text(snapshot.read_text()[:40])

    again = subprocess.run(_cmd(run_dir), cwd=repo, capture_output=True, text=True, timeout=1800)
    out = again.stdout
    assert again.returncode == 0, out[-3000:] + again.stderr[-3000:]
    assert "[run] generate: finished" in out and "skipped" in out.split("[run] sft")[0]
    assert f"{SNAPSHOT} is unreadable" in out and f"resuming from step-{resume_at:06d} (latest.json)" in out
    resumed_from = int(out.split("SFT done in")[1].split("steps")[1].split("->")[0])
    assert resumed_from == resume_at and f"->{SFT_STEPS}, final loss" in out
    assert saved(run_dir, "sft")[-1] == SFT_STEPS and recorded(run_dir, "sft")[-1] == SFT_STEPS
    assert min(saved(run_dir, "sft")) > resume_at  # the folders Ray Train's new record does not list are gone
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
