"""Spec parsing, validation errors (file + line), hashing and rendering."""

import shutil
from pathlib import Path

import pytest

from rayalign.errors import SpecError
from rayalign.spec import load_spec, render_for, render_full


@pytest.fixture
def small(fixtures, tmp_path) -> Path:
    """A writable copy of the two-category test spec."""
    dst = tmp_path / "spec"
    shutil.copytree(fixtures / "spec_small", dst)
    return dst


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_default_spec_is_valid_and_complete(repo):
    spec = load_spec(repo / "specs")
    assert len(spec.categories) >= 8
    for category in spec.categories:
        behaviors = {r.behavior for r in category.rules}
        assert {"comply", "refuse"} <= behaviors, category.id
        assert category.style, category.id
    assert "self_harm" in spec.category_ids
    assert {"style.R1", "style.S1", "style.C1", "general.P1"} <= spec.rule_ids()


def test_render_for_category_matches_golden(fixtures):
    spec = load_spec(fixtures / "spec_small")
    golden = (fixtures / "spec_small_alpha.golden.md").read_text()
    assert render_for(spec, "alpha") == golden


def test_render_for_has_every_summary_and_one_category_in_full(repo):
    spec = load_spec(repo / "specs")
    text = render_for(spec, "self_harm")
    for category in spec.categories:
        assert category.summary in text
    assert all(f"[{r.id}]" in text for r in spec.category("self_harm").rules)
    assert "[privacy.D1]" not in text  # other categories: summary only
    assert render_for(spec, "self_harm") == text  # deterministic
    assert "## Category:" not in render_for(spec, None)
    full = render_full(spec)
    assert all(f"[{r.id}]" in full for c in spec.categories for r in c.rules)


def test_hash_ignores_layout_but_not_wording(small):
    before = load_spec(small).hash
    _edit(small / "categories/alpha.yaml", "Alpha requests.", "Alpha   requests.")  # whitespace only
    assert load_spec(small).hash == before
    _edit(small / "categories/alpha.yaml", "Weaponising alpha", "Weaponizing alpha")
    assert load_spec(small).hash != before
    assert before.startswith("sha256:") and len(before) == len("sha256:") + 16


def test_duplicate_rule_id_names_file_and_line(small):
    _edit(small / "categories/beta.yaml", "id: beta.D1", "id: beta.A1")
    _edit(small / "categories/beta.yaml", "behavior: refuse", "behavior: comply")
    _edit(small / "categories/beta.yaml", "Weaponising beta is disallowed.", "Another.")
    with pytest.raises(SpecError) as e:
        load_spec(small)
    message = str(e.value)
    assert "beta.yaml:12: rules[1].id" in message and "duplicate rule id 'beta.A1'" in message
    assert "beta.yaml:9" in message  # where it was first defined


def test_duplicate_across_files_points_at_both(small):
    _edit(small / "categories/beta.yaml", "id: beta.Y1", "id: alpha.Y1")
    with pytest.raises(SpecError, match=r"style id 'alpha.Y1' must look like beta.Y<n>"):
        load_spec(small)


def test_unknown_category_names_manifest_line(small):
    _edit(small / "spec.yaml", "  - beta\n", "  - beta\n  - gamma\n")
    with pytest.raises(SpecError, match=r"spec.yaml:9: categories\[2\]: unknown category 'gamma'"):
        load_spec(small)


def test_unlisted_category_file_is_an_error(small):
    _edit(small / "spec.yaml", "  - beta\n", "")
    with pytest.raises(SpecError, match=r"beta.yaml: category file is not listed"):
        load_spec(small)


def test_missing_style_section(small):
    _edit(
        small / "spec.yaml",
        "  safe_complete:\n    - id: style.S1\n      text: Address the need and point to help.\n",
        "",
    )
    with pytest.raises(SpecError, match=r"spec.yaml:\d+: style.safe_complete: missing required key"):
        load_spec(small)
    _edit(small / "categories/beta.yaml", "style:\n  - id: beta.Y1\n    applies_to: comply\n    text: Be direct.\n", "")
    with pytest.raises(SpecError, match=r"style"):
        load_spec(small)


def test_bad_behavior_and_letter_mismatch(small):
    _edit(small / "categories/alpha.yaml", "behavior: refuse", "behavior: deny")
    with pytest.raises(
        SpecError, match=r"alpha.yaml:15: rules\[1\].behavior: must be one of comply, refuse, safe_complete; got 'deny'"
    ):
        load_spec(small)
    _edit(small / "categories/alpha.yaml", "behavior: deny", "behavior: comply")
    with pytest.raises(SpecError, match=r"alpha.yaml:14: rules\[1\].id: rule id 'alpha.D1' must look like alpha.A<n>"):
        load_spec(small)


def test_unknown_key_and_yaml_syntax(small):
    _edit(small / "categories/alpha.yaml", "title: Alpha things", "title: Alpha things\ntitel: typo")
    with pytest.raises(SpecError, match=r"alpha.yaml:3: titel: unknown key"):
        load_spec(small)
    (small / "categories/alpha.yaml").write_text("id: alpha\nrules: [unclosed\n")
    with pytest.raises(SpecError, match=r"alpha.yaml:\d+: invalid YAML"):
        load_spec(small)


def test_missing_directory(tmp_path):
    with pytest.raises(SpecError, match="no spec.yaml"):
        load_spec(tmp_path)


def test_rules_know_their_file_and_line_and_the_hash_ignores_them(small):
    spec = load_spec(small)
    rule = spec.categories[0].rules[0]
    lines = (small / rule.file).read_text().split("\n")
    assert rule.file == f"categories/{spec.categories[0].id}.yaml" and f"id: {rule.id}" in lines[rule.line - 1]
    principle, style = spec.principles[0], spec.style[0]
    assert principle.file == style.file == "spec.yaml"
    manifest = (small / "spec.yaml").read_text().split("\n")
    assert f"id: {principle.id}" in manifest[principle.line - 1] and f"id: {style.id}" in manifest[style.line - 1]
    category = spec.categories[0]
    assert (small / category.file).read_text().split("\n")[category.summary_line - 1].startswith("summary:")
    # Lines moved by a comment: positions follow, content and hash do not change.
    path = small / rule.file
    path.write_text("# a comment\n\n" + path.read_text())
    moved = load_spec(small)
    assert moved.hash == spec.hash and moved.categories[0].rules[0].line == rule.line + 2
    assert moved.categories[0].rules[0] == rule  # positions are not compared


def test_hash_is_computed_as_before_positions_existed(repo):
    """The hash is sha256 over asdict(spec) without the hash: the value already recorded in every
    stage-1 row and verdict. Positions are left out, so those records stay valid."""
    import dataclasses
    import hashlib
    import json

    def without_positions(value):
        if isinstance(value, dict):
            return {k: without_positions(v) for k, v in value.items() if k not in ("file", "line", "summary_line")}
        return [without_positions(v) for v in value] if isinstance(value, (list, tuple)) else value

    spec = load_spec(repo / "specs")
    body = without_positions(dataclasses.asdict(spec))
    body.pop("hash")
    assert spec.hash == "sha256:" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
