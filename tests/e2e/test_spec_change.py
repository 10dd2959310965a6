"""The spec as a living document: a spec edit regenerates only the stage-1 prompts it touched.

Stage 1 through the CLI on the tiny model (real Ray, vLLM sampler, Serve judge),
on a private copy of specs/: generate; reword one rule of one category and
generate again (only that category's prompts are sampled and judged again,
every other shard row and SFT row is kept byte for byte); then edit a category
summary, which is part of every spec(category), and generate again (every
prompt is redone). ``rayalign spec diff`` explains both.
"""

import collections
import json
import shutil
import subprocess
import sys
from pathlib import Path

from rayalign.spec import Rule, load_spec
from tests.e2e.test_stage1 import OVERRIDES  # stage 1 on the tiny model, as its own e2e test runs it


def _cli(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "rayalign.cli", *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout)


def _generate(repo: Path, run_dir: Path, spec_dir: Path) -> subprocess.CompletedProcess:
    done = _cli(
        repo,
        "generate",
        "configs/quickstart.yaml",
        *OVERRIDES,
        f"--tracking.run_dir={run_dir}",
        f"--spec.path={spec_dir}",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n") if line.strip()]


def _decisions(stage: Path) -> dict[str, str]:
    """Every shard row as written, by prompt id."""
    return {json.loads(line)["prompt_id"]: line for p in sorted(stage.glob("shards/*.jsonl")) for line in _lines(p)}


def _sft(stage: Path) -> dict[str, list[str]]:
    """sft.jsonl rows as written, by prompt id."""
    out = collections.defaultdict(list)
    for line in _lines(stage / "sft.jsonl"):
        out[json.loads(line)["prompt"]["id"]].append(line)
    return dict(out)


def _regeneration(stage: Path) -> dict:
    return json.loads((stage / "regeneration.json").read_text())


def _reword(spec_dir: Path, rule: Rule) -> None:
    path = spec_dir / rule.file
    head = f"  - id: {rule.id}\n    behavior: {rule.behavior}\n    text: >\n      "
    text = path.read_text()
    assert head in text, f"{rule.id} is not laid out as expected in {path}"
    path.write_text(text.replace(head, head + "In every case, ", 1))


def test_a_rule_edit_regenerates_one_category_and_a_summary_edit_all(repo, tiny_model, tmp_path):
    spec_dir = Path(shutil.copytree(repo / "specs", tmp_path / "specs"))
    run_dir, stage = tmp_path / "run", tmp_path / "run" / "stage1"
    _generate(repo, run_dir, spec_dir)
    first = _regeneration(stage)
    assert {p["reason"] for p in first["prompts"]} == {"new"} and len(first["prompts"]) == 12
    prompts = [json.loads(line) for line in _lines(stage / "prompts_train.jsonl")]
    target = prompts[0]["category"]  # shares shard 0 with prompts of other categories
    touched = {p["id"] for p in prompts if p["category"] == target}
    assert 0 < len(touched) < 4
    shards = {p: p.read_text() for p in sorted(stage.glob("shards/*.jsonl"))}
    decisions, sft = _decisions(stage), _sft(stage)
    assert all(json.loads(line)["spec_category_hash"].startswith("sha256:") for line in decisions.values())
    assert sft, "the tiny model kept no SFT example"

    # 1. Reword one rule of one category: only that category's prompts are redone.
    before_rule = Path(shutil.copytree(spec_dir, tmp_path / "specs-before-rule"))
    rule = load_spec(spec_dir).category(target).rules[0]
    _reword(spec_dir, rule)
    second = _generate(repo, run_dir, spec_dir)
    report = _regeneration(stage)
    assert report["by_category"][target] == {"spec(category) changed": len(touched)}
    assert all(set(counts) == {"reused"} for c, counts in report["by_category"].items() if c != target)
    assert {p["prompt_id"] for p in report["prompts"] if p["reason"] != "reused"} == touched
    n = len(touched)
    assert f"| {target} | {n} | 0 | {n} | spec(category) changed: {n} |" in second.stdout
    assert f"12 prompts: {12 - n} reused as they were, {n} generated and judged again" in second.stdout
    assert f"| {target} | {n} | 0 | {n} |" in (stage / "regeneration.md").read_text()

    after = _decisions(stage)
    assert sorted(after) == sorted(decisions)
    for prompt_id, line in decisions.items():
        if prompt_id in touched:
            assert json.loads(after[prompt_id])["spec_category_hash"] != json.loads(line)["spec_category_hash"]
        else:
            assert after[prompt_id] == line, f"{prompt_id} was not reused byte for byte"
    sft_after = _sft(stage)
    assert {k: v for k, v in sft_after.items() if k not in touched} == {
        k: v for k, v in sft.items() if k not in touched
    }
    untouched = [p for p, text in shards.items() if not any(f'"prompt_id": "{t}"' in text for t in touched)]
    assert untouched and all(p.read_text() == shards[p] for p in untouched)  # files without the category: as they were
    assert f"{len(shards)} shards of <= 4 prompts; {len(untouched)} already done" in second.stdout

    diff = _cli(repo, "spec", "diff", str(before_rule), str(spec_dir))
    assert diff.returncode == 1, diff.stderr
    assert f"changed  {rule.id}" in diff.stdout and f"{spec_dir}/{rule.file}:{rule.line}" in diff.stdout
    assert "{+In every case,+}" in diff.stdout and f"changed (1): {target} ({rule.id})" in diff.stdout

    # 2. Edit another category's summary: it is in every spec(category), so every prompt is redone.
    before_summary = Path(shutil.copytree(spec_dir, tmp_path / "specs-before-summary"))
    other = next(c for c in load_spec(spec_dir).category_ids if c != target)
    summary = spec_dir / "categories" / f"{other}.yaml"
    summary.write_text(summary.read_text().replace("summary: >\n", "summary: >\n  Reviewed every quarter.\n", 1))
    third = _generate(repo, run_dir, spec_dir)
    report = _regeneration(stage)
    assert [p["reason"] for p in report["prompts"]] == ["spec(category) changed"] * 12
    assert f"{len(shards)} shards of <= 4 prompts; 0 already done" in third.stdout
    diff = _cli(repo, "spec", "diff", str(before_summary), str(spec_dir))
    assert diff.returncode == 1, diff.stderr
    assert "EVERY spec(category) changed" in diff.stdout and f"the summary of category {other}" in diff.stdout
    assert "changed (11):" in diff.stdout and "rayalign generate regenerates every prompt" in diff.stdout

    # The run's rule coverage: the steered reasoning of the kept examples cites the spec's ids.
    coverage = _cli(repo, "spec", "coverage", str(run_dir), "--path", str(spec_dir))
    assert coverage.returncode == 0, coverage.stderr[-3000:]
    exercised = int(coverage.stdout.split(" of ", 1)[0])
    assert exercised > 0 and (run_dir / "coverage.md").exists() and (run_dir / "coverage.png").exists()
