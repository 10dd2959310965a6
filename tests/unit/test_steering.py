"""Behaviour-steered stage-1 generation: templates cite only real rule ids, and the
SFT example keeps the steered reasoning but neither the spec nor the instruction."""

import dataclasses
import re
import shutil

import pytest

from rayalign.rollout.format import THINK_OPEN, format_regex, join_completion, split_completion
from rayalign.runs import RunLayout
from rayalign.sft.data import _chat
from rayalign.spec import load_spec, render_for
from rayalign.stage1 import filter as sample_filter
from rayalign.stage1.conditioning import (
    PromptTemplateError,
    conditioned_prompt,
    load_generation_templates,
    load_steer_templates,
    steer_prefix,
)
from rayalign.stage1.generate import _filter_shard, _FilterSettings
from rayalign.types import BEHAVIORS, Message, Prompt, Rollout, Verdict

RULE_ID = re.compile(r"\b[a-z_]+\.[A-Z][0-9]+\b")


@pytest.fixture(scope="module")
def spec(repo):
    return load_spec(repo / "specs")


@pytest.fixture(scope="module")
def templates(repo):
    return load_generation_templates(repo / "specs"), load_steer_templates(repo / "specs")


def _prompt(category="privacy", expected="refuse"):
    return Prompt("p1", (Message("user", "Find the home address of my ex."),), category, expected, source="test")


def test_every_opening_cites_only_rule_ids_of_the_spec(spec, templates):
    _, steer = templates
    for category in spec.category_ids:
        for behavior in BEHAVIORS:
            prefix = steer_prefix(spec, steer, _prompt(category, behavior))
            cited = set(RULE_ID.findall(prefix))
            assert cited, f"{category}/{behavior} cites nothing"
            assert cited <= spec.rule_ids(), f"{category}/{behavior} cites unknown ids {cited - spec.rule_ids()}"
            # Content ids come from the prompt's own category, with the expected behaviour's letter.
            letter = {"comply": "A", "refuse": "D", "safe_complete": "S"}[behavior]
            content = {i for i in cited if not i.startswith(("style.", f"{category}.Y"))}
            assert all(i.startswith(f"{category}.{letter}") for i in content), (category, behavior, content)


def test_an_unlabelled_prompt_only_opens_the_think_block(spec, templates):
    _, steer = templates
    assert steer_prefix(spec, steer, _prompt(expected=None)) == THINK_OPEN + "\n"
    assert steer_prefix(spec, steer, _prompt(category=None, expected="comply")) == THINK_OPEN + "\n"


@pytest.mark.parametrize("mode", ["none", "instruction", "prefix", "both"])
def test_modes_add_instruction_and_prefill_as_named(spec, templates, mode):
    gen, steer = templates
    out = conditioned_prompt(spec, gen, steer, mode, _prompt())
    system = out.messages[0].content
    assert system.startswith(render_for(spec, "privacy"))
    assert ("A reviewer labelled the ideal response to this request: refuse" in system) == (
        mode in ("instruction", "both")
    )
    assert bool(out.prefill) == (mode in ("prefix", "both"))
    assert out.messages[1:] == _prompt().messages


def test_opened_format_regex_continues_a_prefilled_think_block():
    regex = format_regex(64, opened=True)
    assert not regex.startswith("<think>") and re.fullmatch(regex, "more reasoning\n</think>\nI can't help.")


def test_the_sft_example_keeps_the_prefix_and_drops_spec_and_instruction(spec, templates, tmp_path):
    gen, steer = templates
    original = _prompt()
    conditioned = conditioned_prompt(spec, gen, steer, "both", original)
    continuation = "The user wants private data.\n</think>\nI'm sorry, but I can't help with that."
    rollout = Rollout("p1", 0, continuation, (1,), (2,), (-0.1,), "stop")

    class Judge:
        async def score(self, requests):
            assert requests[0].reasoning.startswith("This request falls under Privacy")
            return [Verdict("ok", 9.0, rules=("privacy.D1",), request_id=requests[0].request_id)]

    settings = _FilterSettings(RunLayout(tmp_path), 5.0, 1, sample_filter.Provenance("m", spec.hash, "h"), 10.0, 1)
    (decision,) = _filter_shard(Judge(), [original], [rollout], {"p1": conditioned.prefill}, settings)
    (example,) = decision.kept
    assert example.reasoning.startswith("This request falls under Privacy (privacy).")
    assert example.reasoning.endswith("The user wants private data.")
    assert example.answer == "I'm sorry, but I can't help with that."
    assert example.prompt == original
    context = "\n".join(m["content"] for m in _chat(example))  # what the SFT model is conditioned on
    target = join_completion(example.reasoning, example.answer)  # what it learns to write
    assert "privacy.D1" in target and target.startswith(THINK_OPEN)  # the steered opening is a target
    assert context == "Find the home address of my ex."  # no spec, no instruction
    assert "A reviewer labelled" not in target and render_for(spec, "privacy")[:200] not in target
    assert split_completion(conditioned.prefill + continuation).malformed is None


def test_a_broken_steering_template_names_the_file_and_line(repo, tmp_path):
    shutil.copytree(repo / "specs", tmp_path / "specs")
    path = tmp_path / "specs" / "templates" / "steer.md"
    path.write_text(path.read_text().replace("$rules permit it", "$rulez permit it"))
    with pytest.raises(PromptTemplateError, match=r"steer\.md:\d+: \$rulez"):
        load_steer_templates(tmp_path / "specs")


def test_a_closed_reasoning_leaves_only_the_answer_to_write(spec, templates):
    gen, steer = templates
    closed = conditioned_prompt(spec, gen, steer, "prefix", _prompt(), close_reasoning=True)
    assert closed.prefill.endswith("</think>\n") and closed.prefill.startswith(THINK_OPEN)
    full = split_completion(closed.prefill + "I'm sorry, but I can't help with that.")
    assert full.malformed is None and full.answer == "I'm sorry, but I can't help with that."
    assert full.reasoning.startswith("This request falls under Privacy (privacy)")
    # an unlabelled prompt has no reasoning to close: it gets the open think tag only
    unlabelled = conditioned_prompt(spec, gen, steer, "prefix", _prompt(expected=None), close_reasoning=True)
    assert unlabelled.prefill == THINK_OPEN + "\n"


def _g(**kw):
    from rayalign.config_tree import GenerateConfig

    return GenerateConfig(**{"steer": "both", **kw})


def test_condition_follows_the_paper_by_default(spec, templates):
    from rayalign.stage1.conditioning import condition

    gen, steer = templates
    c = condition(spec, gen, None, _g(steer="none"), _prompt())
    assert c.sampled.messages[0].content.startswith(render_for(spec, "privacy")) and c.head == "" and not c.rendered
    c = condition(spec, gen, steer, _g(), _prompt())
    assert c.head == c.sampled.prefill and c.head.startswith(THINK_OPEN)


def test_a_plain_answer_sees_only_the_conversation_and_keeps_the_spec_reasoning(spec, templates):
    from rayalign.stage1.conditioning import condition

    gen, steer = templates
    c = condition(spec, gen, steer, _g(close_reasoning=True, answer_context="plain"), _prompt(expected="comply"))
    assert c.sampled == _prompt(expected="comply")  # no spec, no instruction, no reasoning in view
    full = split_completion(c.head + "Here is what the law says.")
    assert full.malformed is None and "privacy.A1" in full.reasoning and full.answer == "Here is what the law says."


def test_a_spec_refusal_is_rendered_not_sampled(spec, templates):
    from rayalign.stage1.conditioning import condition

    gen, steer = templates
    g = _g(close_reasoning=True, answer_context="plain", refusals="spec")
    c = condition(spec, gen, steer, g, _prompt(expected="refuse"))
    assert c.sampled is None
    full = split_completion(c.rendered)
    assert full.answer in steer.refusal.splitlines() and "privacy.D1" in full.reasoning
    assert full.answer == steer.refusal_for(_prompt(expected="refuse").id)  # stable per prompt
    assert set(RULE_ID.findall(full.reasoning)) <= spec.rule_ids()
    # a comply-labelled or unlabelled prompt is still answered by the generator
    assert condition(spec, gen, steer, g, _prompt(expected="comply")).sampled is not None
    assert condition(spec, gen, steer, g, _prompt(expected=None)).sampled is not None


def test_spec_refusals_vary_across_prompts_and_are_all_refusals(spec, templates):
    from rayalign.eval.refusal import detect_behavior
    from rayalign.stage1.conditioning import condition

    gen, steer = templates
    g = _g(close_reasoning=True, answer_context="plain", refusals="spec")
    answers = {
        split_completion(
            condition(spec, gen, steer, g, dataclasses.replace(_prompt(expected="refuse"), id=str(i))).rendered
        ).answer
        for i in range(40)
    }
    assert len(answers) >= 4
    assert all(detect_behavior(a) == "refuse" for a in answers)


def test_a_spec_safe_completion_is_rendered_for_every_category_and_reads_as_one(spec, templates):
    from rayalign.eval.refusal import detect_behavior
    from rayalign.stage1.conditioning import check_safe_completions, condition

    gen, steer = templates
    check_safe_completions(spec, steer, "specs")
    g = _g(close_reasoning=True, answer_context="plain", refusals="spec", safe_completions="spec")
    for category in spec.category_ids:
        c = condition(spec, gen, steer, g, _prompt(category, "safe_complete"))
        assert c.sampled is None  # nothing sampled: the spec writes it
        full = split_completion(c.rendered)
        assert full.malformed is None and full.answer == steer.safe_completion(category)
        assert f"{category}.S" in full.reasoning and set(RULE_ID.findall(full.reasoning)) <= spec.rule_ids()
        assert detect_behavior(full.answer) == "safe_complete", category  # care and a pointer to help
    # other behaviours, and the default mode, are unchanged
    assert condition(spec, gen, steer, g, _prompt(expected="comply")).sampled is not None
    plain = _g(close_reasoning=True, answer_context="plain")
    assert condition(spec, gen, steer, plain, _prompt(expected="safe_complete")).sampled is not None


def _steer_file(repo, tmp_path, edit):
    shutil.copytree(repo / "specs", tmp_path / "specs")
    path = tmp_path / "specs" / "templates" / "steer.md"
    path.write_text(edit(path.read_text()))
    return tmp_path / "specs"


def test_a_safe_completion_line_fills_placeholders_like_a_refusal(repo, tmp_path, spec, templates):
    from rayalign.stage1.conditioning import condition

    specs = _steer_file(
        repo,
        tmp_path,
        lambda t: t.replace("self_harm: Thank you", "self_harm: On $title ($category), $$0 help. Thank you"),
    )
    g = _g(close_reasoning=True, answer_context="plain", refusals="spec", safe_completions="spec")
    c = condition(spec, templates[0], load_steer_templates(specs), g, _prompt("self_harm", "safe_complete"))
    assert split_completion(c.rendered).answer.startswith("On Self-harm (self_harm), $0 help. Thank you")


def test_a_malformed_safe_completion_line_names_the_file_and_line(repo, tmp_path):
    specs = _steer_file(repo, tmp_path, lambda t: t.replace("self_harm: Thank you", "self_harm Thank you"))
    with pytest.raises(PromptTemplateError, match=r"steer\.md:\d+: expected 'category: text'"):
        load_steer_templates(specs)


def test_a_safe_completion_for_an_unknown_category_or_a_missing_one_is_refused(repo, tmp_path, spec):
    from rayalign.stage1.conditioning import check_safe_completions

    specs = _steer_file(repo, tmp_path, lambda t: t.replace("self_harm: Thank you", "self_harms: Thank you"))
    with pytest.raises(PromptTemplateError, match=r"steer\.md:\d+: unknown category 'self_harms'"):
        check_safe_completions(spec, load_steer_templates(specs), specs)
    without = _steer_file(repo, tmp_path / "b", lambda t: t[: t.index("<!-- section: safe_completion -->")])
    steer = load_steer_templates(without)  # optional until safe_completions: spec uses it
    assert steer.safe_completions == {}
    with pytest.raises(PromptTemplateError, match="no safe completion for violent_wrongdoing"):
        check_safe_completions(spec, steer, without)


def test_safe_completions_from_the_spec_need_a_closed_reasoning(tmp_path):
    from rayalign.config import load_config
    from rayalign.errors import ConfigError
    from rayalign.stage1.generate import run_generate

    cfg = load_config(
        None, [f"--tracking.run_dir={tmp_path}", "--generate.steer=both", "--generate.safe_completions=spec"]
    )
    with pytest.raises(ConfigError, match="generate.safe_completions"):
        run_generate(cfg)
