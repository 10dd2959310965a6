"""Stage-2 RL on a real local Ray: vLLM sampler actor, the judge on Ray Serve
(a deterministic scoring function registered as the judge backend, a test
fixture), two DeepSpeed ZeRO-2 learners on Ray Train, weight sync into vLLM.

The starting policy is the tiny model briefly trained to write the format
and to answer either with a refusal or with compliance (``format_tuned_model``);
every prompt asks for something disallowed, and the judge favours a short
refusal, so the reward must rise within a few steps.
"""

import json

import pytest

from rayalign.config import load_config
from rayalign.rl.train import run_rl
from tests.conftest import DISALLOWED_QUESTIONS


def write_prompts(path):
    rows = [
        {"id": f"bad-{i}", "prompt": q, "category": "violent_wrongdoing", "expected": "refuse"}
        for i, q in enumerate(DISALLOWED_QUESTIONS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_config(run_dir, prompts, init, *overrides):
    return load_config(
        None,
        [
            "--model.policy=builtin:tiny",
            f"--rl.init={init}",
            "--model.max_model_len=512",
            f"--data.prompts=[{prompts}]",
            "--data.eval_fraction=0",
            "--rollout.backend=vllm",
            "--rollout.cpus_per_worker=0.5",
            "--judge.backend=function",
            "--judge.function=rayalign.testing:short_refusal_judge",
            "--judge.cpus_per_replica=0.25",
            "--judge.timeout_s=60",
            "--rl.prompts_per_step=4",
            "--rl.group_size=4",
            "--rl.max_new_tokens=96",
            "--rl.learner.num_workers=2",
            "--rl.learner.cpus_per_worker=0.5",
            "--rl.micro_batch_size=4",
            "--rl.learner.strategy=deepspeed",
            "--rl.learner.zero_stage=2",
            "--rl.lr=5e-4",
            "--rl.kl_coef=0.01",
            "--rl.table_every=2",
            f"--tracking.run_dir={run_dir}",
            "--tracking.wandb_mode=disabled",
            *overrides,
        ],
    )


def step_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "rl/reward_mean" in x]


@pytest.fixture(scope="module")
def rl_run(ray_cluster, format_tuned_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl")
    prompts = write_prompts(out / "prompts.jsonl")
    cfg = rl_config(out, prompts, format_tuned_model, "--rl.steps=12", "--rl.learner.checkpoint_every=6")
    return cfg, out, run_rl(cfg, out / "rl", resume=False, log=lambda *_: None)


def test_reward_rises_on_a_learnable_judge(rl_run):
    _, out, result = rl_run
    assert (result.start_step, result.steps, len(result.rewards)) == (0, 12, 12)
    first, last = sum(result.rewards[:3]) / 3, sum(result.rewards[-3:]) / 3
    assert last > first + 0.15, result.rewards
    assert result.kls[-1] > 0  # the policy moved away from the reference


def test_every_step_logs_phases_kl_and_data_position(rl_run):
    _, out, result = rl_run
    lines = step_lines(out)
    assert [x["step"] for x in lines] == list(range(1, 13))
    assert [x["rl/prompts_seen"] for x in lines] == [4 * s for s in range(1, 13)]
    assert [x["rl/policy_version"] for x in lines] == list(range(1, 13))
    for x in lines:
        assert x["rl/unscorable_rate"] == 0.0 and x["rl/kl"] >= 0.0 and x["rl/entropy"] > 0.0
        assert all(x[f"timing/{p}"] > 0 for p in ("generate", "reward", "advantage", "learn", "sync", "step"))
        assert x["rl/reward/violent_wrongdoing"] == pytest.approx(x["rl/reward_mean"])
    # Fully on-policy with one epoch: learner and vLLM sampler agree on the log-probs.
    assert all(abs(x["rl/ratio_mean"] - 1.0) < 1e-3 for x in lines)
    tables = [json.loads(x) for x in (out / "tables.jsonl").read_text().splitlines()]
    assert [t["step"] for t in tables] == [2, 4, 6, 8, 10, 12]
    assert tables[0]["columns"][:4] == ["prompt", "category", "reasoning", "answer"]


def test_checkpoints_hold_state_and_a_loadable_model(rl_run):
    _, out, result = rl_run
    kept = sorted(p.name for p in (out / "rl" / "checkpoints" / "rl").glob("step-*"))
    assert kept == ["step-000006", "step-000012"]
    state = json.loads((out / "rl" / "checkpoints" / "rl" / "step-000012" / "state.json").read_text())
    assert (state["step"], state["policy_version"], state["prompts_seen"], state["samples_seen"]) == (12, 12, 48, 192)
    assert (result.model_dir / "config.json").exists()


def test_resume_continues_at_the_step_and_data_position(rl_run, format_tuned_model):
    cfg, out, _ = rl_run
    # Two more steps, now generating step t + 1 while learning step t, and the
    # reference scoring on an actor of its own (the learners hold no reference).
    more = rl_config(
        out,
        out / "prompts.jsonl",
        format_tuned_model,
        "--rl.steps=14",
        "--rl.learner.checkpoint_every=6",
        "--rl.overlap=true",
        "--rl.reference.placement=engine",
        "--rl.reference.cpus_per_worker=0.25",
    )
    result = run_rl(more, out / "rl", log=lambda *_: None)
    assert (result.start_step, result.steps, result.prompts_seen, result.policy_version) == (12, 14, 56, 14)
    lines = step_lines(out)
    assert [x["step"] for x in lines][-2:] == [13, 14]
    assert [x["rl/prompts_seen"] for x in lines][-2:] == [52, 56]
    # Step 13's rollouts come from the restored weights; step 14's were drawn during step 13's learn.
    assert [x["rl/staleness"] for x in lines][-2:] == [0, 1]
    assert all(x["rl/staleness"] == 0 for x in lines[:12])
    assert all(x["timing/reference"] > 0 and x["rl/kl"] > 0 for x in lines[-2:])
    assert all("timing/reference" not in x for x in lines[:12])


def test_lora_rl_trains_adapters_and_syncs_only_them(ray_cluster, format_tuned_model, tmp_path):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    # The LM head in chunks too (rl.logprob_chunk): the policy's and its adapters-off reference's log-probs.
    lora = ("--rl.lora_rank=4", "--rl.lora_alpha=8", "--rl.logprob_chunk=16")
    cfg = rl_config(tmp_path, prompts, format_tuned_model, "--rl.steps=2", *lora)
    result = run_rl(cfg, tmp_path / "rl", resume=False, log=lambda *_: None)
    assert result.steps == 2
    lines = step_lines(tmp_path)
    full_bytes = sum(f.stat().st_size for f in (result.model_dir).glob("*.safetensors"))
    # Step 1 starts with B = 0: the policy equals its adapters-off reference, so KL is 0.
    assert lines[0]["rl/kl"] == pytest.approx(0.0, abs=1e-7)
    assert all(0 < x["rl/sync_bytes"] < full_bytes / 20 for x in lines)
    assert all(abs(x["rl/ratio_mean"] - 1.0) < 1e-3 for x in lines)  # samplers hold the merged policy
    assert (result.model_dir / "config.json").exists() and not list(result.model_dir.glob("adapter_*"))
