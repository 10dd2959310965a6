"""Stage 1 end to end through the CLI: real Ray, vLLM samplers, the Serve judge."""

import json
import subprocess
import sys

from rayalign.stage1.filter import complies_with_refusal
from rayalign.types import SFTExample, from_json

OVERRIDES = [
    "--model.policy=builtin:tiny",
    "--model.max_model_len=16384",
    "--data.max_prompts=12",
    "--data.shard_size=4",
    "--rollout.n=2",
    "--rollout.max_new_tokens=96",
    "--rollout.enforce_format=true",
    "--judge.backend=function",
    "--judge.function=rayalign.testing:length_judge",
    "--judge.k=2",
    "--filter.min_score=1.0",
    # The generator continues the steered reasoning and writes every answer (the quickstart closes the
    # reasoning and renders refusals from the spec): the path a capable teacher takes.
    "--generate.close_reasoning=false",
    "--generate.answer_context=spec",
    "--generate.refusals=model",
    "--generate.trim_cut_answers=false",
]


def _generate(repo, run_dir, *extra, timeout=600):
    cmd = [
        sys.executable,
        "-m",
        "rayalign.cli",
        "generate",
        "configs/quickstart.yaml",
        *OVERRIDES,
        f"--tracking.run_dir={run_dir}",
        *extra,
    ]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout)


def test_generate_writes_filtered_sft_data_without_the_spec(repo, tiny_model, tmp_path):
    run_dir = tmp_path / "run"
    result = _generate(repo, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    stage = run_dir / "stage1"
    examples = [from_json(SFTExample, line) for line in (stage / "sft.jsonl").read_text().splitlines()]
    assert examples, result.stdout
    for e in examples:
        text = json.dumps([m.content for m in e.prompt.messages])
        assert "## Categories (summaries)" not in text and "[style.R1]" not in text  # no spec in training prompts
        assert all(m.role != "system" for m in e.prompt.messages)
        assert e.spec_hash.startswith("sha256:") and e.template_hash.startswith("sha256:")
        assert e.generation_template_hash and e.score >= 1.0 and e.reasoning and e.answer
    shards = sorted((stage / "shards").glob("shard-*.jsonl"))
    assert len(shards) == 3
    decisions = [json.loads(line) for s in shards for line in s.read_text().splitlines()]
    assert len(decisions) == 12 == len({d["prompt_id"] for d in decisions})  # each prompt exactly once
    assert "| all |" in (stage / "filter_report.md").read_text()
    assert "filter summary" in result.stdout

    # The quickstart steers stage 1 and runs the judge cascade: the tiny model's babble on a
    # refuse-labelled prompt is a compliance, decided without the judge and never kept.
    assert not [e.prompt.id for e in examples if complies_with_refusal(e.prompt, e.answer)]
    assert sum(d["cascade"] for d in decisions) > 0
    labelled = [e for e in examples if e.prompt.expected is not None and e.prompt.category is not None]
    assert labelled and all(e.reasoning.startswith("This request") for e in labelled)  # the steered opening
    assert "[generate] judge:" in result.stdout and "sampling with builtin:tiny (steering: both)" in result.stdout

    # Resume: a lost shard is redone alone; nothing is lost or repeated.
    shards[1].unlink()
    again = _generate(repo, run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 already done" in again.stdout
    redone = [
        json.loads(line)
        for s in sorted((stage / "shards").glob("shard-*.jsonl"))
        for line in s.read_text().splitlines()
    ]
    assert sorted(d["prompt_id"] for d in redone) == sorted(d["prompt_id"] for d in decisions)

    # Then SFT on that data, as the README's main command runs it.
    sft = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayalign.cli",
            "sft",
            "configs/quickstart.yaml",
            *OVERRIDES,
            f"--tracking.run_dir={run_dir}",
            "--sft.max_steps=3",
            "--sft.micro_batch_size=2",
            "--sft.max_seq_len=256",
            "--sft.learner.checkpoint_every=3",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert "SFT done" in sft.stdout and (run_dir / "sft" / "model" / "config.json").exists()


def test_the_recipe_keeps_no_compliance_with_a_refuse_labelled_prompt(repo, tiny_model, tmp_path):
    """configs/recipe-cpu.yaml's own stage 1 (steering, spec-rendered refusals and safe completions,
    the cascade), on the tiny model with a judge that passes anything long enough: the written
    sft.jsonl holds a refusal for every refuse-labelled prompt and no compliance with one."""
    run_dir = tmp_path / "recipe"
    cmd = [
        sys.executable,
        "-m",
        "rayalign.cli",
        "generate",
        "configs/recipe-cpu.yaml",
        "--model.policy=builtin:tiny",
        "--data.max_prompts=50",  # the recipe's weights: 3 comply, 1 safe-complete, 1 refuse per category
        "--data.shard_size=25",
        "--rollout.max_new_tokens=64",
        "--judge.backend=function",
        "--judge.function=rayalign.testing:length_judge",
        "--filter.min_score=1.0",
        f"--tracking.run_dir={run_dir}",
    ]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    examples = [from_json(SFTExample, line) for line in (run_dir / "stage1" / "sft.jsonl").read_text().splitlines()]
    refuse = [e for e in examples if e.prompt.expected == "refuse"]
    assert len(refuse) == 10, result.stdout  # rendered from the spec, one per category
    assert not [e.prompt.id for e in examples if complies_with_refusal(e.prompt, e.answer)]
