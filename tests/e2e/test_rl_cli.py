"""`rayalign rl` through the CLI, killed mid-run and resumed: the step count,
the data position and the metrics go on from the last checkpoint."""

import json
import subprocess
import sys
import time

import pytest

from tests.e2e.killing import kill_run, recorded, saved
from tests.ray.test_rl import write_prompts

STEPS, PER_STEP = 16, 2


def _cmd(run_dir, prompts, init):
    return [
        sys.executable,
        "-m",
        "rayalign.cli",
        "rl",
        "configs/quickstart.yaml",
        "--model.policy=builtin:tiny",
        f"--rl.init={init}",
        "--model.max_model_len=512",
        f"--data.prompts=[{prompts}]",
        "--data.eval_fraction=0",
        "--data.max_prompts=0",
        "--rollout.cpus_per_worker=0.5",
        "--judge.backend=function",
        "--judge.function=rayalign.testing:short_refusal_judge",
        "--judge.cpus_per_replica=0.25",
        f"--rl.steps={STEPS}",
        f"--rl.prompts_per_step={PER_STEP}",
        "--rl.group_size=2",
        "--rl.max_new_tokens=96",
        "--rl.micro_batch_size=2",
        "--rl.lr=1e-4",
        "--rl.learner.checkpoint_every=2",
        "--rl.learner.cpus_per_worker=0.5",
        f"--tracking.run_dir={run_dir}",
        "--tracking.wandb_mode=disabled",
    ]


def test_rl_killed_mid_run_resumes_at_the_same_step_and_data_position(repo, format_tuned_model, tmp_path):
    run_dir = tmp_path / "run"
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cmd = _cmd(run_dir, prompts, format_tuned_model)
    proc = subprocess.Popen(
        cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not [s for s in recorded(run_dir, "rl") if s >= 4] and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    kill_run(proc.pid)  # the driver, Ray and every actor of the run, learners outside its process group too
    proc.wait(timeout=60)
    if proc.returncode == 0:
        pytest.fail("the run finished before it could be killed")
    assert recorded(run_dir, "rl"), proc.stdout.read()[-3000:]
    listed = max(recorded(run_dir, "rl"))
    assert listed < STEPS and listed in saved(run_dir, "rl")

    again = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    # The resumed run may find a checkpoint the killed one finished writing as it died.
    resumed_from = int(again.stdout.split("steps ")[1].split("->")[0])
    assert resumed_from >= listed and f"->{STEPS}," in again.stdout
    assert f"prompts seen {STEPS * PER_STEP}, policy version {STEPS}" in again.stdout
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "rl/reward_mean" in x]
    resumed = [x for x in steps if x["step"] > resumed_from][-(STEPS - resumed_from) :]
    assert [x["step"] for x in resumed] == list(range(resumed_from + 1, STEPS + 1))
    assert [x["rl/prompts_seen"] for x in resumed] == [s * PER_STEP for s in range(resumed_from + 1, STEPS + 1)]
    assert [x["rl/policy_version"] for x in resumed] == list(range(resumed_from + 1, STEPS + 1))
