"""The CLI as a user runs it: a subprocess per command."""

import shutil
import subprocess
import sys
import time

import pytest


def rayalign(*args, cwd=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "rayalign.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def test_spec_validate_default(repo):
    result = rayalign("spec", "validate", "specs/", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: rayalign-default") and "10 categories" in result.stdout


def test_spec_validate_duplicate_id_fails_with_file_and_line(repo, fixtures, tmp_path):
    spec = tmp_path / "spec"
    shutil.copytree(fixtures / "spec_small", spec)
    beta = spec / "categories/beta.yaml"
    beta.write_text(
        beta.read_text().replace("id: beta.Y1", "id: beta.Y1\n    applies_to: comply\n    text: x\n  - id: beta.Y1")
    )
    result = rayalign("spec", "validate", str(spec), cwd=repo)
    assert result.returncode == 2
    assert f"{beta}:19: style[1].id: duplicate rule id 'beta.Y1' (first defined at {beta}:16)" in result.stderr


def test_spec_show_self_harm(repo):
    result = rayalign("spec", "show", "--category", "self_harm", cwd=repo)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "## Categories (summaries)" in out and "## Category: Self-harm (self_harm)" in out
    for category in ("violent_wrongdoing", "privacy", "cyber_abuse", "regulated_advice"):
        assert f"- {category} (" in out
    assert "[self_harm.D1]" in out and "[privacy.D1]" not in out


def test_typo_in_config_fails_before_ray_starts(repo, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (repo / "configs/quickstart.yaml").read_text().replace("  group_size: 4", "  group_size: 4\n  kl_coeff: 0.1")
    )
    start = time.perf_counter()
    result = rayalign("config", "validate", str(bad), cwd=repo)
    assert result.returncode == 2
    assert "rl.kl_coeff: unknown key; did you mean 'kl_coef'?" in result.stderr
    assert f"{bad}:" in result.stderr
    assert time.perf_counter() - start < 20  # no Ray, no model loading


def test_impossible_resources_fail_before_ray_starts(repo):
    result = rayalign("config", "validate", "configs/quickstart.yaml", "--rollout.num_workers=4", cwd=repo)
    assert result.returncode == 2
    assert "rollout.num_workers" in result.stderr and "Ray would wait forever" in result.stderr


def test_config_explain_lists_every_section(repo):
    result = rayalign("config", "explain", cwd=repo)
    assert result.returncode == 0
    for section in ("spec", "data", "model", "rollout", "judge", "filter", "sft", "rl", "eval", "cluster", "tracking"):
        assert f"[{section}]" in result.stdout


@pytest.mark.slow
def test_chat_with_the_real_small_model(repo):
    result = rayalign("chat", "Name a primary colour.", "--max-new-tokens", "16", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_cluster_check_validates_and_fits_the_gpu_config(repo):
    result = rayalign("cluster", "check", "cluster/aws.yaml", "--config", "configs/gpu-8x-h100.yaml", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "judge: 2, learner: 8, rollout: 2" in result.stdout


def test_run_refuses_unknown_stages_and_stage_override_typos_before_ray_starts(repo):
    start = time.perf_counter()
    result = rayalign("run", "configs/quickstart.yaml", "--stages", "generate,train", cwd=repo)
    assert result.returncode == 2 and "unknown stage train; stages: generate,sft,rl,eval" in result.stderr
    result = rayalign("run", "configs/quickstart.yaml", "--rl:judge.kk=1", cwd=repo)
    assert result.returncode == 2 and "judge.kk: unknown key; did you mean 'k'?" in result.stderr
    assert time.perf_counter() - start < 20  # no Ray, no model loading


def test_a_config_on_the_builtin_spec_validates_from_any_directory(repo, tmp_path):
    shutil.copy(repo / "configs/quickstart.yaml", tmp_path / "quickstart.yaml")
    result = rayalign("config", "validate", "quickstart.yaml", cwd=tmp_path)  # no specs/ next to it
    assert result.returncode == 0, result.stderr
    assert "spec rayalign-default sha256:" in result.stdout


def test_eval_offers_string_match_only_scoring(repo):
    result = rayalign("eval", "--help", cwd=repo)
    assert result.returncode == 0 and "--judge {config,none}" in result.stdout
