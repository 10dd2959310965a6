"""`rayalign spec coverage`: rule citations counted over a hand-made run directory."""

import json

import pytest
from PIL import Image

from rayalign.cli import main
from rayalign.coverage import Cited, count, read_run, write_coverage
from rayalign.datafiles import write_records
from rayalign.eval.answers import EvalAnswer
from rayalign.runs import RunLayout
from rayalign.spec import load_spec
from rayalign.stage1.filter import Decision
from rayalign.tracking import TABLES_FILE
from rayalign.types import Message, Prompt, SFTExample, Verdict


@pytest.fixture(scope="module")
def spec(repo):
    return load_spec(repo / "specs")


def _prompt(pid, category, expected):
    return Prompt(pid, (Message("user", f"question {pid}"),), category, expected)


def _example(prompt, reasoning, rules):
    return SFTExample(prompt, reasoning, "answer", score=8.0, rules=rules)


def _answer(prompt, refusal, verdict, cited=()):
    return EvalAnswer("sft", prompt.id, "bench", prompt.category, prompt.expected, "", "answer", None, "stop", 10,
                      refusal, cited, verdict)  # fmt: skip


@pytest.fixture
def run(tmp_path):
    """Three training prompts, their SFT examples and decisions, an RL table, and eval answers."""
    layout = RunLayout(tmp_path / "run")
    p1, p2, p3 = _prompt("p1", "privacy", "refuse"), _prompt("p2", "privacy", "comply"), _prompt("p3", None, "comply")
    write_records(layout.prompts_train, [p1, p2, p3])
    e1 = _example(p1, "privacy.D1 applies, so refuse per style.R1.", ("privacy.D1",))
    e2 = _example(p2, "Public role: privacy.A1. Not cyber_abuse.D1.", ("privacy.A1",))
    e3 = _example(p3, "Nothing restricts this (general.P2).", ())
    write_records(layout.sft_data, [e1, e2, e3])
    decisions = [Decision(e.prompt.id, e.prompt.category, (e,), "kept", 2, 0, 0, 8.0) for e in (e1, e2, e3)]
    write_records(layout.shard(0), decisions[:2])
    write_records(layout.shard(1), decisions[2:])
    table = {"step": 1, "name": "rl/samples", "columns": ["prompt", "category", "reasoning", "answer", "reward",
             "score", "verdict"], "rows": [["q", "privacy", "see privacy.D2", "no", 1.0, 9.0, "fine per style.R2"]]}  # fmt: skip
    (layout.root / TABLES_FILE).write_text(json.dumps(table) + "\n")
    q1, q2, q3 = (
        _prompt("q1", "privacy", "refuse"),
        _prompt("q2", "self_harm", "comply"),
        _prompt("q3", "self_harm", "refuse"),
    )
    write_records(layout.eval_answers / "sft.jsonl", [
        _answer(q1, False, Verdict("ok", 1.0, rules=("privacy.D1", "privacy.D9"), compliant=False)),  # unsafe
        _answer(q2, True, Verdict("ok", 3.0, rules=("privacy.D2",), compliant=True)),  # over-refusal, cited elsewhere
        _answer(q3, True, Verdict("ok", 9.0, rules=("self_harm.D1",), compliant=True)),  # a good refusal
    ])  # fmt: skip
    return layout


def test_counts_per_source_on_a_hand_made_run(run, spec):
    cov = read_run(run.root, spec)
    assert cov.by_source("privacy.D1") == {"sft": 1, "stage-1 judge": 1, "rl samples": 0, "eval judge": 1,
                                           "eval failures": 1}  # fmt: skip
    assert cov.by_source("privacy.A1") == {"sft": 1, "stage-1 judge": 1, "rl samples": 0, "eval judge": 0,
                                           "eval failures": 0}  # fmt: skip
    assert cov.by_source("general.P2")["sft"] == 1 and cov.total("style.R1") == 1
    assert cov.by_source("privacy.D2") == {"sft": 0, "stage-1 judge": 0, "rl samples": 1, "eval judge": 1,
                                           "eval failures": 1}  # fmt: skip
    assert cov.by_source("style.R2")["rl samples"] == 1
    assert cov.by_source("self_harm.D1") == {"sft": 0, "stage-1 judge": 0, "rl samples": 0, "eval judge": 1,
                                             "eval failures": 0}  # fmt: skip
    assert dict(cov.unknown) == {"privacy.D9": 2}  # judge rules of the unsafe answer: eval judge + eval failures


def test_never_exercised_and_wrong_category(run, spec):
    cov = read_run(run.root, spec)
    never = cov.never_exercised()
    assert len(never) == len(spec.rule_ids()) - 8
    assert "privacy.D3" in never and "privacy.D1" not in never and "general.P1" in never
    # cyber_abuse.D1 named in a privacy example's reasoning; privacy.D2 judged for a self_harm eval prompt.
    assert cov.wrong_category() == [
        ("privacy.D2", "self_harm", "eval judge", 1),
        ("privacy.D2", "self_harm", "eval failures", 1),
        ("cyber_abuse.D1", "privacy", "sft", 1),
    ]


def test_prompts_by_expected_behaviour(run, spec):
    cov = read_run(run.root, spec)
    assert cov.labels["stage-1 prompts", "privacy", "refuse"] == 1
    assert cov.labels["stage-1 prompts", "none", "comply"] == 1
    assert (
        cov.labels["eval prompts", "self_harm", "comply"] == 1
        and cov.labels["eval prompts", "self_harm", "refuse"] == 1
    )


def test_report_goes_next_to_the_eval_report_with_a_heat_map(run, spec, capsys):
    assert main(["spec", "coverage", str(run.root)]) == 0
    assert f"8 of {len(spec.rule_ids())} spec ids exercised" in capsys.readouterr().out
    text = (run.eval / "coverage.md").read_text()
    assert "| privacy.D1 | privacy | 1 | 1 | 0 | 1 | 1 | 4 |" in text
    assert "| privacy | 1 / 1 / 0 / 0 | 1 / 1 / 0 / 0 | 0 / 1 / 0 / 0 |" in text  # comply / refuse / safe / unlabelled
    assert "| cyber_abuse.D1 | privacy | sft | 1 |" in text
    assert "- privacy: privacy.A2, privacy.A3, privacy.D3" in text  # never exercised, by category
    assert "privacy.D9 (2)" in text and "![rule citations by prompt category](coverage.png)" in text
    with Image.open(run.eval / "coverage.png") as image:
        assert image.format == "PNG" and image.size[0] > 1500
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(100)) > 20


def test_without_an_eval_dir_the_report_goes_to_the_run_dir(tmp_path, spec):
    layout = RunLayout(tmp_path / "run")
    write_records(layout.sft_data, [_example(_prompt("p", "privacy", "refuse"), "privacy.D1", ())])
    written = write_coverage(layout.root, spec)
    assert written.markdown == layout.root / "coverage.md" and written.heatmap == layout.root / "coverage.png"
    empty = write_coverage(tmp_path / "empty", spec)
    assert empty.heatmap is None and f"0 of {len(spec.rule_ids())} spec ids exercised" in empty.summary


def test_an_id_counts_once_per_record(spec):
    cov = count(spec, [Cited("sft", "privacy", ("privacy.D1", "privacy.D1")), Cited("sft", "privacy", ("privacy.D1",))])
    assert (
        cov.total("privacy.D1") == 2
        and cov.matrix()[spec.category_ids.index("privacy")][cov.rule_ids.index("privacy.D1")] == 2
    )


def test_layout_tables_path_is_the_trackers(tmp_path):
    assert RunLayout(tmp_path).tables.name == TABLES_FILE
