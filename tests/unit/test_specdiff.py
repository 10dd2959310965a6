"""`rayalign spec diff`: rules added, removed and changed, and which spec(category) changed."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from rayalign.cli import main
from rayalign.datafiles import write_records
from rayalign.runs import RunLayout
from rayalign.spec import load_spec
from rayalign.specdiff import (
    PromptReuse,
    Regeneration,
    category_hash,
    diff_specs,
    format_diff,
    format_regeneration,
    regeneration_reason,
    word_diff,
)
from rayalign.stage1.filter import Decision
from rayalign.types import Message, Prompt


@pytest.fixture
def copy(repo, tmp_path) -> Path:
    """A writable copy of the shipped spec."""
    return Path(shutil.copytree(repo / "specs", tmp_path / "specs"))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def _remove_item(path: Path, rule_id: str) -> None:
    """Delete the ``- id: <rule_id>`` item up to the next item."""
    text = path.read_text()
    start = text.index(f"  - id: {rule_id}\n")
    end = text.index("  - id:", start + 1)
    path.write_text(text[:start] + text[end:])


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().split("\n"), 1) if needle in line)


def _three_edits(copy: Path) -> None:
    """self_harm.D1 reworded, self_harm.D9 added before D2, privacy.D3 removed."""
    self_harm = copy / "categories/self_harm.yaml"
    _edit(self_harm, "painful or effective different means", "painful, quick or effective different means")
    added = "  - id: self_harm.D9\n    behavior: refuse\n    text: >\n      Telling someone where to buy a means of self-harm.\n"
    _edit(self_harm, "  - id: self_harm.D2\n", added + "  - id: self_harm.D2\n")
    _remove_item(copy / "categories/privacy.yaml", "privacy.D3")


def test_a_changed_an_added_and_a_removed_rule_are_named_with_file_and_line(repo, copy, capsys):
    _three_edits(copy)
    old_line = _line_of(repo / "specs/categories/privacy.yaml", "- id: privacy.D3")
    new_line = _line_of(copy / "categories/self_harm.yaml", "- id: self_harm.D9")
    d1_line = _line_of(copy / "categories/self_harm.yaml", "- id: self_harm.D1")

    assert main(["spec", "diff", str(repo / "specs"), str(copy)]) == 1
    out = capsys.readouterr().out
    rules = {
        line.split()[1]: line for line in out.split("\n") if line.startswith(("  changed ", "  added ", "  removed "))
    }
    assert (
        rules["self_harm.D1"].startswith("  changed")
        and f"categories/self_harm.yaml:{d1_line}" in rules["self_harm.D1"]
    )
    assert rules["self_harm.D9"].startswith("  added") and rules["self_harm.D9"].endswith(
        f"{copy}/categories/self_harm.yaml:{new_line}"
    )
    assert rules["privacy.D3"].startswith("  removed") and rules["privacy.D3"].endswith(
        f"{repo / 'specs'}/categories/privacy.yaml:{old_line}"
    )
    assert (
        "text: Providing methods, instructions, lethal doses, or comparisons of how [-painful-] {+painful, quick+}"
        in out
    )
    assert "(refuse) Telling someone where to buy a means of self-harm." in out
    # What matters for training: exactly the two edited categories' spec(category) changed.
    assert "  changed (2): self_harm (self_harm.D1, self_harm.D9), privacy (privacy.D3)" in out
    assert "unchanged (9):" in out and "EVERY" not in out


def test_diff_records_positions_and_category_status(repo, copy):
    _three_edits(copy)
    diff = diff_specs(load_spec(repo / "specs"), load_spec(copy))
    kinds = {c.id: (c.kind, c.what, c.category) for c in diff.changes}
    assert kinds == {
        "self_harm.D1": ("changed", "rule", "self_harm"),
        "self_harm.D9": ("added", "rule", "self_harm"),
        "privacy.D3": ("removed", "rule", "privacy"),
    }
    assert diff.categories("changed") == ("self_harm", "privacy")
    assert "none" in diff.categories("unchanged") and not diff.everywhere


def test_exit_status_is_zero_without_change_and_two_on_error(repo, copy, tmp_path, capsys):
    _edit(copy / "categories/privacy.yaml", "id: privacy.A1", "id:    privacy.A1")  # layout only
    assert main(["spec", "diff", str(repo / "specs"), str(copy)]) == 0
    assert "no change" in capsys.readouterr().out
    assert main(["spec", "diff", str(tmp_path / "nowhere"), str(copy)]) == 2
    assert "no spec.yaml here" in capsys.readouterr().err
    _edit(copy / "categories/privacy.yaml", "behavior: comply", "behavior: sometimes")
    assert main(["spec", "diff", str(repo / "specs"), str(copy)]) == 2
    err = capsys.readouterr().err
    assert "privacy.yaml:" in err and "behavior" in err


def test_a_git_revision_is_read_and_labelled(repo, monkeypatch, capsys):
    if not (repo / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    monkeypatch.chdir(repo)
    assert main(["spec", "diff", "HEAD:specs", "HEAD:specs"]) == 0
    assert "spec diff HEAD:specs -> HEAD:specs" in capsys.readouterr().out
    assert main(["spec", "diff", "no-such-revision:specs", "specs"]) == 2
    assert "git cannot read it" in capsys.readouterr().err


def test_a_summary_change_changes_every_spec_category_and_says_so(repo, copy, capsys):
    _edit(copy / "categories/privacy.yaml", "Covers personal information", "Covers personal data and information")
    assert main(["spec", "diff", str(repo / "specs"), str(copy)]) == 1
    out = capsys.readouterr().out
    assert "EVERY spec(category) changed" in out and "the summary of category privacy" in out
    assert "changed (11):" in out and "unchanged" not in out.split("spec(category), what")[1]
    assert "summary: Covers personal {+data and+} information" in out
    assert "rayalign generate regenerates every prompt" in out
    summary_line = _line_of(copy / "categories/privacy.yaml", "summary:")
    assert f"categories/privacy.yaml:{summary_line}" in out


def test_category_hash_ignores_the_version_line_but_not_the_category(repo, copy):
    old = load_spec(repo / "specs")
    _edit(copy / "spec.yaml", 'version: "1.0.0"', 'version: "1.1.0"')
    bumped = load_spec(copy)
    assert bumped.hash != old.hash
    assert all(category_hash(old, c) == category_hash(bumped, c) for c in (*old.category_ids, None))
    diff = diff_specs(old, bumped)
    assert diff.changed and not diff.categories("changed") and [c.id for c in diff.changes] == ["version"]
    _edit(copy / "categories/self_harm.yaml", "Self-harm\n", "Self harm\n")  # the title is in every summary
    assert category_hash(old, "privacy") != category_hash(load_spec(copy), "privacy")


def test_word_diff_marks_removed_and_added_words():
    assert word_diff("refuse a b", "refuse b c") == "refuse [-a-] b {+c+}"
    assert word_diff("same", "same") == "same"


def _decision(spec_category_hash: str, template: str = "t") -> Decision:
    return Decision("p", "privacy", (), "kept", 2, 0, 0, 7.0, spec_category_hash=spec_category_hash,
                    generation_template_hash=template)  # fmt: skip


def test_regeneration_reason_reuses_only_matching_hashes():
    assert regeneration_reason(_decision("sha256:a"), "sha256:a", "t") == "reused"
    assert regeneration_reason(_decision("sha256:a"), "sha256:b", "t") == "spec(category) changed"
    assert regeneration_reason(_decision("sha256:a", "old"), "sha256:a", "t") == "generation templates changed"
    assert regeneration_reason(_decision(""), "sha256:a", "t") == "no spec(category) hash recorded"
    assert regeneration_reason(_decision("sha256:a"), "sha256:a", "t", full=True) == "forced (--full)"
    assert regeneration_reason(None, "sha256:a", "t") == "new"


def test_regeneration_report_counts_per_category():
    r = Regeneration(
        "sha256:s",
        "sha256:t",
        False,
        (
            PromptReuse("a", "privacy", 0, "reused"),
            PromptReuse("b", "privacy", 0, "spec(category) changed"),
            PromptReuse("c", "none", 1, "reused"),
        ),
        (1,),
        (0,),
    )
    text = format_regeneration(r)
    assert "3 prompts: 2 reused as they were, 1 generated and judged again" in text
    assert "| privacy | 2 | 1 | 1 | spec(category) changed: 1 |" in text and "| none | 1 | 1 | 0 | - |" in text


def test_format_diff_of_identical_specs(repo):
    spec = load_spec(repo / "specs")
    assert "no change" in format_diff(diff_specs(spec, spec), "a", "b")


# ------------------------------------------------------------------ stage-1 reuse, without Ray


def _run_like(run_dir, size=2):
    """The config keys stage 1's planning reads."""
    return SimpleNamespace(tracking=SimpleNamespace(run_dir=str(run_dir)), data=SimpleNamespace(shard_size=size))


def _prompts() -> list[Prompt]:
    labels = [("a", "privacy"), ("b", "self_harm"), ("c", "self_harm"), ("d", None), ("e", "privacy")]
    return [Prompt(pid, (Message("user", pid),), category, "refuse") for pid, category in labels]


def _write_decisions(layout, works, spec, template="t"):
    """What the judging task writes: one decision per prompt, with the hashes it was made with."""
    for w in works:
        decisions = [
            Decision(p.id, p.category, (), "below_threshold", 2, 0, 0, 1.0,
                     spec_category_hash=category_hash(spec, p.category), generation_template_hash=template)
            for p in w.prompts
        ]  # fmt: skip
        write_records(layout.shard(w.index), decisions)


def test_a_rerun_plans_only_the_stale_prompts(copy, tmp_path):
    from rayalign.stage1.generate import _plan

    layout, prompts, logged = RunLayout(tmp_path / "run"), _prompts(), []
    spec = load_spec(copy)
    first = _plan(_run_like(layout.root), spec, "t", prompts, False, logged.append)
    assert [[p.id for p in w.fresh] for w in first] == [["a", "b"], ["c", "d"], ["e"]]  # all new
    _write_decisions(layout, first, spec)
    written = {i: layout.shard(i).read_text() for i in range(3)}
    assert all(w.untouched for w in _plan(_run_like(layout.root), spec, "t", prompts, False, logged.append))

    _edit(copy / "categories/self_harm.yaml", "painful or effective", "painful or quick or effective")
    works = _plan(_run_like(layout.root), load_spec(copy), "t", prompts, False, logged.append)
    assert [[p.id for p in w.fresh] for w in works] == [["b"], ["c"], []]
    assert works[0].reused == {"a": written[0].split("\n")[0]} and works[2].untouched  # byte for byte
    report = json.loads(layout.regeneration_json.read_text())
    assert report["by_category"] == {"privacy": {"reused": 2}, "self_harm": {"spec(category) changed": 2},
                                     "none": {"reused": 1}}  # fmt: skip
    assert report["shards_untouched"] == [2] and "| self_harm | 2 | 0 | 2 |" in layout.regeneration_report.read_text()
    assert "3 shards of <= 2 prompts; 1 already done" in logged[-1]

    reasons = {p.reason for p in _regeneration(layout)}
    assert reasons == {"spec(category) changed", "reused"}
    changed = _plan(_run_like(layout.root), load_spec(copy), "t2", prompts, False, logged.append)
    assert all(w.fresh == w.prompts for w in changed)  # new generation templates: every prompt
    forced = _plan(_run_like(layout.root), spec, "t", prompts, True, logged.append)
    assert all(w.fresh == w.prompts for w in forced) and {p.reason for p in _regeneration(layout)} == {
        "forced (--full)"
    }


def test_a_prompt_keeps_its_shard_and_its_decision_wherever_it_was_found(copy, tmp_path):
    from rayalign.stage1.generate import _plan

    layout, prompts, spec = RunLayout(tmp_path / "run"), _prompts(), load_spec(copy)
    _write_decisions(layout, _plan(_run_like(layout.root), spec, "t", prompts, False, print), spec)
    # Shard 2 lost, its decision found in shard 1's file: reused, and shard 2 is written again with it.
    moved = layout.shard(2).read_text()
    layout.shard(2).unlink()
    layout.shard(1).write_text(layout.shard(1).read_text() + moved)
    works = _plan(_run_like(layout.root), spec, "t", prompts, False, print)
    assert not works[2].fresh and not works[2].untouched and works[2].reused == {"e": moved.strip()}
    assert not works[1].untouched and [p.id for p in works[1].prompts] == ["c", "d"]
    layout.shard(0).unlink()
    assert [p.id for p in _plan(_run_like(layout.root), spec, "t", prompts, False, print)[0].fresh] == ["a", "b"]


def _regeneration(layout):
    return [PromptReuse(**p) for p in json.loads(layout.regeneration_json.read_text())["prompts"]]
