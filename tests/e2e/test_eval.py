"""The evaluation driver end to end: real local Ray, vLLM samplers, the Serve judge.

Two targets (the tiny model as it is, and with the spec in its prompt) on a few
JailbreakBench prompts; a deterministic function judge. Greedy, the random
tiny model writes only newlines: every answer is empty, which the driver counts
as a refusal (the user got nothing), so the metrics can be worked out by hand.
"""

import json
from pathlib import Path

import pytest
import ray
from ray import serve

from rayalign.config import load_config
from rayalign.eval.run import run_eval
from rayalign.eval.targets import parse_checkpoints

BENCHMARKS = ["builtin:jbb-harmful", "builtin:jbb-benign"]  # shipped with the package
OVERRIDES = [
    "--model.max_model_len=16384",  # spec(category) in the prompt is a few thousand tokens
    "--eval.max_new_tokens=24",
    "--eval.bootstrap_samples=200",
    "--judge.backend=function",
    "--judge.function=rayalign.testing:short_refusal_judge",
    "--judge.cascade=false",  # the hand-worked numbers below are the judge's; the cascade has its own tests
]
LIMIT = 6


@pytest.fixture(scope="module")
def eval_run(repo, tiny_model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        return _run_twice(repo, tiny_model, tmp_path_factory.mktemp("eval"))


def _run_twice(repo, tiny_model, tmp_path):
    cfg = load_config(repo / "configs/quickstart.yaml", OVERRIDES)
    targets = parse_checkpoints(f"base={tiny_model},base+spec")
    logs: list[str] = []
    rerun_logs: list[str] = []
    try:
        result = run_eval(
            cfg, targets, BENCHMARKS, tmp_path / "eval", limit=LIMIT, log=lambda line: (logs.append(line), print(line))
        )
        # Run again on the same directory, as after a kill while judging: the saved answers are reused.
        rerun = run_eval(cfg, targets, BENCHMARKS, tmp_path / "eval", limit=LIMIT, log=rerun_logs.append)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    return result, tmp_path / "eval", logs, rerun, rerun_logs


def _answers(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_eval_writes_answers_metrics_and_a_report_per_target(eval_run):
    result, out, logs, _, _ = eval_run
    assert [t.target.name for t in result.targets] == ["base", "base+spec"]
    assert result.benchmarks == ("jbb_harmful", "jbb_benign") and result.prompts == 2 * LIMIT
    answers = {t.target.name: _answers(t.answers_path) for t in result.targets}
    for t in result.targets:
        rows = answers[t.target.name]
        assert len({r["prompt_id"] for r in rows}) == 2 * LIMIT == t.answers  # every prompt answered once
        assert all(r["verdict"]["status"] == "ok" for r in rows) and t.unscorable == 0
        assert t.times.start > 0 and t.times.generate > 0 and result.judge_seconds > 0
        assert all(r["answer"] == "" and r["malformed"] == "truncated" for r in rows) and t.malformed == 2 * LIMIT
        assert all(r["refusal"] and r["verdict"]["compliant"] == (r["expected"] == "comply") for r in rows)
        assert all(r["decided"] is None for r in rows)  # no reasoning cites a style rule: no decision
        metrics = {m.name: m for m in t.metrics}
        for m in t.metrics:
            assert 0.0 <= m.low <= m.value <= m.high <= 1.0
        assert any(name.startswith("not_unsafe/") for name in metrics)  # per-category rows
        # By hand: an empty answer is a refusal (not_overrefuse 0); short_refusal_judge scores it
        # 2 on harmful prompts (not compliant: not_unsafe 0, style off) and 10 on benign ones
        # (style ok): style 6/12. No reasoning cites no rule, on all 12 categorised prompts.
        values = {name: (m.value, m.n) for name, m in metrics.items()}
        assert values["not_unsafe"] == (0.0, 6) and values["not_overrefuse"] == (0.0, 6)
        assert values["style_adherence"] == (0.5, 12) and values["citation_accuracy"] == (0.0, 12)
        assert metrics["style_adherence"].low < 0.5 < metrics["style_adherence"].high
    # The spec-in-context target saw spec(category) before each prompt.
    base = {r["prompt_id"]: r["prompt_tokens"] for r in answers["base"]}
    assert all(r["prompt_tokens"] > base[r["prompt_id"]] + 1000 for r in answers["base+spec"])

    report = (out / "report.md").read_text()
    assert "| base+spec |" in report and "## not_unsafe" in report and "95% CI" in report
    # Per benchmark: every (empty) answer counts as a refusal and none is in the reasoning format.
    assert "## Behaviour per benchmark" in report
    rows = {(r.benchmark, r.expected): r for r in result.targets[0].behaviour}
    assert set(rows) == {("jbb_harmful", "refuse"), ("jbb_benign", "comply")}
    assert (rows["jbb_harmful", "refuse"].wanted.value, rows["jbb_harmful", "refuse"].n) == (1.0, LIMIT)
    assert rows["jbb_benign", "comply"].wanted.value == 0.0 and rows["jbb_benign", "comply"].in_format.value == 0.0
    assert (
        rows["jbb_benign", "comply"].decided_wanted is None and rows["jbb_benign", "comply"].follows_reasoning is None
    )
    for png in ("pareto.png", "not_unsafe_by_category.png"):
        assert (out / png).stat().st_size > 10_000
    saved = json.loads((out / "metrics.json").read_text())
    assert [t["target"]["name"] for t in saved["targets"]] == ["base", "base+spec"]
    assert {"value", "low", "high", "n"} <= set(saved["targets"][0]["metrics"][0])
    assert saved["enforce_format"] is False
    assert any(line.startswith("[eval] judged 24 answers of 2 targets in") for line in logs)


def test_a_second_run_reuses_the_saved_answers_and_judges_them_again(eval_run):
    result, out, _, rerun, rerun_logs = eval_run
    for first, again in zip(result.targets, rerun.targets):
        assert again.times.start == again.times.generate == 0.0  # no sampler started
        assert f"[eval] {again.target.name}: {2 * LIMIT} answers reused from" in "\n".join(rerun_logs)
        assert again.metrics == first.metrics and _answers(again.answers_path) == _answers(first.answers_path)
    assert (out / "answers" / "base+spec.rollouts.json").exists() and rerun.judge_seconds > 0
