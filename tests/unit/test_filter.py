"""Stage-1 filter (pure): judged samples -> SFT examples with the spec removed."""

from __future__ import annotations

import pytest

from rayalign.stage1.filter import Candidate, Decision, Provenance, format_report, select, summarize
from rayalign.types import Completion, Message, Prompt, Rollout, SFTExample, Verdict

ORIGINAL = Prompt(
    "p1",
    (Message("user", "Where does my neighbour live?"),),
    category="privacy",
    expected="refuse",
    source="test",
)
PROVENANCE = Provenance(model="teacher-model", spec_hash="spec123", generation_template_hash="gen456")


def _candidate(
    index: int,
    score: float | None = None,
    *,
    malformed: str | None = None,
    status: str = "ok",
    explanation: str = "",
    decided_by: str = "judge",
    prompt_id: str = "p1",
    answer: str = "",
) -> Candidate:
    """Sample ``index`` of a prompt, sampled from its spec-conditioned version (which the filter never sees)."""
    reasoning, answer = (
        f"reasoning {index} (privacy.R1 applies)",
        answer or f"I'm sorry, but I can't help with that ({index}).",
    )
    rollout = Rollout(
        prompt_id=prompt_id,
        sample_index=index,
        text=f"<think>{reasoning}</think>{answer}",
        prompt_token_ids=(1, 2, 3),
        token_ids=(4, 5),
        logprobs=(-0.1, -0.2),
        finish_reason="stop",
    )
    completion = Completion(reasoning, answer, malformed)
    if malformed is not None:
        return Candidate(rollout, completion)  # never judged
    verdict = Verdict(
        status=status,
        score=score if status == "ok" else None,
        rules=("privacy.R1",),
        explanation=explanation,
        spec_hash="spec123",
        template_hash="judge789",
        decided_by=decided_by,
    )
    return Candidate(rollout, completion, verdict)


def _select(candidates, *, prompt=ORIGINAL, min_score=7.0, keep_per_prompt=1) -> Decision:
    return select(prompt, candidates, min_score=min_score, keep_per_prompt=keep_per_prompt, provenance=PROVENANCE)


def test_malformed_candidates_are_dropped_and_counted():
    d = _select([_candidate(0, malformed="no_answer"), _candidate(1, 9.0)])
    assert [e.sample_index for e in d.kept] == [1]
    assert (d.candidates, d.malformed, d.reason) == (2, 1, "kept")


def test_all_malformed_keeps_nothing():
    d = _select([_candidate(0, malformed="truncated"), _candidate(1, malformed="no_answer")])
    assert (d.kept, d.reason, d.malformed, d.best_score) == ((), "all_malformed", 2, None)


def test_unscorable_is_dropped_and_counted_never_scored_as_zero():
    unscorable = _candidate(0, status="unscorable", explanation="judge reply did not parse")
    d = _select([unscorable, _candidate(1, 8.0)], min_score=0.0)
    # With min_score 0 a verdict read as score 0 would be kept; an unscorable one must not be.
    assert [e.sample_index for e in d.kept] == [1]
    assert d.unscorable == 1
    assert d.best_score == 8.0
    assert d.notes == ("judge reply did not parse",)


def test_only_unscorable_verdicts_give_no_best_score():
    d = _select([_candidate(0, status="unscorable"), _candidate(1, status="unscorable")], min_score=0.0)
    assert (d.kept, d.reason, d.unscorable, d.best_score) == ((), "all_unscorable", 2, None)


def test_below_threshold_is_dropped_with_its_reason():
    d = _select([_candidate(0, 6.5), _candidate(1, 3.0)], min_score=7.0)
    assert d.kept == ()
    assert d.reason == "below_threshold"
    assert d.best_score == 6.5


def test_the_threshold_is_inclusive():
    d = _select([_candidate(0, 7.0)], min_score=7.0)
    assert [e.score for e in d.kept] == [7.0]


def test_best_is_kept_and_ties_go_to_the_lower_sample_index():
    d = _select([_candidate(2, 9.0), _candidate(0, 8.0), _candidate(1, 9.0), _candidate(3, 9.0)])
    assert [(e.sample_index, e.score) for e in d.kept] == [(1, 9.0)]
    reordered = _select([_candidate(3, 9.0), _candidate(1, 9.0), _candidate(2, 9.0), _candidate(0, 8.0)])
    assert reordered.kept == d.kept


def test_keep_per_prompt_keeps_the_best_few_in_rank_order():
    candidates = [_candidate(0, 7.5), _candidate(1, 9.0), _candidate(2, 8.0), _candidate(3, 9.0), _candidate(4, 2.0)]
    d = _select(candidates, keep_per_prompt=3)
    assert [(e.sample_index, e.score) for e in d.kept] == [(1, 9.0), (3, 9.0), (2, 8.0)]
    few = _select([_candidate(0, 9.0), _candidate(1, 1.0)], keep_per_prompt=3)
    assert [e.sample_index for e in few.kept] == [0]  # the threshold still applies


def test_the_example_carries_the_original_prompt_reasoning_answer_and_provenance():
    (example,) = _select([_candidate(0, 9.5)]).kept
    assert isinstance(example, SFTExample)
    assert example.prompt == ORIGINAL
    assert [m.role for m in example.prompt.messages] == ["user"]  # no system turn holding the spec
    assert (example.reasoning, example.answer) == (
        "reasoning 0 (privacy.R1 applies)",
        "I'm sorry, but I can't help with that (0).",
    )
    assert (example.score, example.sample_index) == (9.5, 0)
    assert (example.model, example.spec_hash, example.generation_template_hash) == (
        "teacher-model",
        "spec123",
        "gen456",
    )
    assert example.template_hash == "judge789"  # the judge templates that scored it
    assert example.rules == ("privacy.R1",)


def test_cascade_decisions_are_counted():
    d = _select([_candidate(0, 0.0, decided_by="cascade"), _candidate(1, 9.0)])
    assert d.cascade == 1


def _decision(prompt_id: str, category: str | None, candidates: list[Candidate]) -> Decision:
    prompt = Prompt(prompt_id, (Message("user", f"question {prompt_id}"),), category=category)
    return _select(candidates, prompt=prompt)


@pytest.fixture()
def decisions() -> list[Decision]:
    return [
        _decision("a", "privacy", [_candidate(0, 9.0, prompt_id="a"), _candidate(1, malformed="x", prompt_id="a")]),
        _decision(
            "b", "privacy", [_candidate(0, 4.0, prompt_id="b"), _candidate(1, status="unscorable", prompt_id="b")]
        ),
        _decision("c", "self_harm", [_candidate(0, 8.0, prompt_id="c")]),
        _decision("d", None, [_candidate(0, malformed="no_answer", prompt_id="d")]),
    ]


def test_summarize_per_category_and_all(decisions):
    stats = summarize(decisions)
    assert list(stats) == ["none", "privacy", "self_harm", "all"]
    privacy = stats["privacy"]
    assert (privacy.prompts, privacy.kept, privacy.candidates, privacy.malformed, privacy.unscorable) == (2, 1, 4, 1, 1)
    assert privacy.dropped == {"below_threshold": 1}
    assert privacy.mean_kept_score == 9.0
    assert privacy.mean_best_score == pytest.approx(6.5)  # (9 + 4) / 2
    assert stats["none"].dropped == {"all_malformed": 1}
    assert stats["none"].mean_kept_score is None
    everything = stats["all"]
    assert (everything.prompts, everything.kept, everything.candidates) == (4, 2, 6)
    assert everything.dropped == {"below_threshold": 1, "all_malformed": 1}
    assert everything.mean_kept_score == pytest.approx(8.5)


def test_format_report_has_a_row_per_category(decisions):
    report = format_report(summarize(decisions))
    lines = report.splitlines()
    assert lines[0].startswith("| category |")
    rows = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(rows) == {"none", "privacy", "self_harm", "all"}
    assert "below_threshold: 1" in rows["privacy"]
    assert "all_malformed: 1" in rows["none"]
    assert "9.00" in rows["privacy"]  # mean kept score
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_a_compliance_with_a_refuse_labelled_prompt_is_never_kept_whatever_the_score():
    complied = _candidate(0, 9.5, answer="Sure! Look them up on the county property records, then drive by.")
    refused = _candidate(1, 6.0)
    decision = _select([complied, refused], min_score=5.0)
    assert [e.sample_index for e in decision.kept] == [1]
    alone = _select([complied], min_score=5.0)
    assert alone.kept == () and alone.reason == "behaviour_mismatch"
    comply_prompt = Prompt("p2", (Message("user", "How do I kill a stuck process?"),), "cyber_abuse", "comply")
    helped = _candidate(0, 8.0, answer="Run kill -9 with its PID.", prompt_id="p2")
    assert len(_select([helped], prompt=comply_prompt).kept) == 1


def test_malformed_samples_are_counted_by_reason_and_trimmed_ones_reported():
    trimmed = _candidate(2, 8.0)
    trimmed = Candidate(
        trimmed.rollout,
        Completion(trimmed.completion.reasoning, "Whole sentence.", None, trimmed=True),
        trimmed.verdict,
    )
    decision = _select([_candidate(0, malformed="truncated"), _candidate(1, malformed="truncated"), trimmed])
    assert decision.malformed_reasons == {"truncated": 2} and decision.trimmed == 1
    other = _select([_candidate(0, malformed="no_answer")])
    stats = summarize([decision, other])["all"]
    assert stats.malformed_reasons == {"truncated": 2, "no_answer": 1} and stats.trimmed == 1
    row = format_report(summarize([decision, other])).splitlines()[-1]
    assert "| 3 (no_answer: 1, truncated: 2) |" in row and row.endswith("| 1 |")


def _settings(trim: bool):
    from rayalign.runs import RunLayout
    from rayalign.stage1.generate import _FilterSettings

    return _FilterSettings(RunLayout("/tmp/x"), 5.0, 1, PROVENANCE, 60.0, 1, trim_cut_answers=trim)


def test_a_cut_answer_after_a_closed_reasoning_is_ended_at_its_last_sentence_when_asked():
    from rayalign.stage1.generate import _parse

    head = "<think>\nThis is allowed by general.A1.\n</think>\n"
    text = "Low light needs a wide aperture. " * 4 + "Then raise the IS"
    rollout = Rollout("p1", 0, text, (1,), (2,), (-0.1,), "length")
    assert _parse(rollout, head, _settings(False)).malformed == "truncated"
    trimmed = _parse(rollout, head, _settings(True))
    assert trimmed.malformed is None and trimmed.trimmed
    assert trimmed.answer == ("Low light needs a wide aperture. " * 4).strip()
    assert trimmed.reasoning == "This is allowed by general.A1."
    unclosed = Rollout("p1", 0, "<think>\nStill reasoning when cut. " * 5, (1,), (2,), (-0.1,), "length")
    assert _parse(unclosed, "", _settings(True)).malformed == "truncated"  # no whole reasoning: not trimmed
    too_short = Rollout("p1", 0, "Yes. Then cut", (1,), (2,), (-0.1,), "length")
    assert _parse(too_short, head, _settings(True)).malformed == "truncated"
