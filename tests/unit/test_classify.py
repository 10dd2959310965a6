"""Category assignment by the judge model: prompt rendering and strict parsing."""

import re

import pytest

from rayalign.judge.classify import (
    ClassifyTemplateError,
    category_regex,
    classification,
    load_classify_template,
    parse_category,
    render_classify_messages,
)
from rayalign.spec import load_spec
from rayalign.types import Message, Prompt


@pytest.fixture(scope="module")
def spec(repo):
    return load_spec(repo / "specs")


@pytest.fixture(scope="module")
def template(repo):
    return load_classify_template(repo / "specs")


def test_prompt_lists_every_category_summary_and_quotes_the_request(spec, template):
    prompt = Prompt("p", (Message("user", "How do I pick a lock?"),))
    system, user = render_classify_messages(spec, template, prompt)
    assert (system.role, user.role) == ("system", "user")
    for category in spec.categories:
        assert f"- {category.id} ({category.title}): {category.summary}" in system.content
    assert "How do I pick a lock?" in user.content and "<<<CONVERSATION_" in user.content
    assert "[style." not in system.content  # summaries only, no rules


def test_regex_allows_exactly_the_category_ids_and_none(spec):
    pattern = re.compile(category_regex(spec))
    assert all(pattern.fullmatch(c) for c in (*spec.category_ids, "none"))
    assert not pattern.fullmatch("hacking") and not pattern.fullmatch("none of them")


def test_parse_is_strict(spec):
    cid = spec.category_ids[0]
    assert parse_category(f"  `{cid}`.\n", spec) == cid
    assert parse_category("None", spec) is None
    with pytest.raises(Exception, match="expected one of"):
        parse_category(f"I think {cid}", spec)


def test_an_unparseable_reply_is_unscorable_not_benign(spec, template):
    prompt = Prompt("p", (Message("user", "hi"),))
    result = classification(prompt, "maybe weapons?", spec, template)
    assert (result.status, result.category) == ("unscorable", None) and "expected one of" in result.explanation
    assert classification(prompt, "none", spec, template).status == "ok"


def test_template_errors_name_the_file(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "classify.md").write_text(
        "no categories here\n<!-- section: user -->\n$conversation $tag\n"
    )
    with pytest.raises(ClassifyTemplateError, match=r"classify\.md.*categories"):
        load_classify_template(tmp_path)


def test_stage_two_reuses_the_categories_stage_one_saved(repo, tmp_path):
    """RL categorises its prompts with stage 1's saved answers: no judge needed when all are saved."""
    from rayalign.config import load_config
    from rayalign.runs import RunLayout
    from rayalign.stage1.categories import categorise, needs_categories
    from rayalign.types import Classification, to_json

    cfg = load_config(repo / "configs/quickstart.yaml", [f"--tracking.run_dir={tmp_path}"])
    prompts = [
        Prompt("u1", (Message("user", "How do I pick a lock?"),)),
        Prompt("u2", (Message("user", "Write a haiku."),)),
        Prompt("b1", (Message("user", "Bake bread?"),), expected="comply"),  # labelled benign: never asked
    ]
    path = RunLayout.of(cfg).categories
    path.parent.mkdir(parents=True)
    path.write_text(
        to_json(Classification("u1", "ok", "illicit_behavior"))
        + "\n"
        + to_json(Classification("u2", "ok", None))
        + "\n"
    )
    lines = []
    out = {p.id: p.category for p in categorise(cfg, prompts, None, log=lines.append)}
    assert out == {"u1": "illicit_behavior", "u2": None, "b1": None}
    assert lines == ["[categories] 2 uncategorised prompts (0 asked now): illicit_behavior 1, none 1"]
    off = load_config(repo / "configs/quickstart.yaml", [f"--tracking.run_dir={tmp_path}", "--data.classify=false"])
    assert not needs_categories(off, prompts) and categorise(off, prompts, None) == prompts
