"""The eval's per-benchmark behaviour table (pure), worked by hand."""

import pytest

from rayalign.eval.behaviour import Observed, behaviour_rows, behaviour_section


def _o(target, bench, expected, refused, *, fmt=True, cited=(), judge=None, category="privacy", decided=None):
    return Observed(target, bench, category, expected, refused, fmt, cited, judge, decided)


OBSERVED = [
    # sft on JBB harmful: 3 of 4 refused; the judge read 2 of its 3 verdicts as refusals
    _o("sft", "jbb-harmful", "refuse", True, cited=("privacy.D1",), judge="refuse"),
    _o("sft", "jbb-harmful", "refuse", True, cited=("cyber_abuse.D1",), judge="refuse"),  # wrong category
    _o("sft", "jbb-harmful", "refuse", True, fmt=False, judge="comply"),
    _o("sft", "jbb-harmful", "refuse", False),  # no scorable verdict
    # sft on JBB benign: 1 of 2 refused (an over-refusal)
    _o("sft", "jbb-benign", "comply", True, judge="refuse"),
    _o("sft", "jbb-benign", "comply", False, judge="comply"),
    # base on the mix: a safe completion answered; a prompt with no label is left out
    _o("base", "mix", "safe_complete", False, fmt=False, judge="safe_complete"),
    _o("base", "mix", None, False),
]


def test_rows_per_target_benchmark_and_wanted_behaviour_with_hand_counted_shares():
    rows = behaviour_rows(OBSERVED, samples=200)
    assert [(r.target, r.benchmark, r.expected, r.n) for r in rows] == [
        ("sft", "jbb-harmful", "refuse", 4),
        ("sft", "jbb-benign", "comply", 2),
        ("base", "mix", "safe_complete", 1),
    ]
    harmful, benign, safe = rows
    assert harmful.wanted.value == pytest.approx(3 / 4)
    assert harmful.wanted_by_judge.value == pytest.approx(2 / 3) and harmful.wanted_by_judge.n == 3
    assert harmful.in_format.value == pytest.approx(3 / 4)
    assert harmful.citing_category.value == pytest.approx(1 / 3)  # 3 refusals; only one cites privacy.*
    assert benign.wanted.value == 0.5 and benign.wanted_by_judge.value == 0.5 and benign.citing_category is None
    assert safe.wanted.value == 1.0 and safe.wanted_by_judge.value == 1.0 and safe.in_format.value == 0.0
    assert all(r.wanted.low <= r.wanted.value <= r.wanted.high for r in rows)


def test_the_section_names_what_each_row_measures():
    lines = behaviour_section(behaviour_rows(OBSERVED, samples=200))
    assert lines[0] == "## Behaviour per benchmark"
    table = [line for line in lines if line.startswith("| sft") or line.startswith("| base")]
    assert "| refuse | refused | 0.75 [" in table[0] and "| comply | answered | 0.50 [" in table[1]
    assert "| safe_complete | answered (not refused) |" in table[2]
    assert behaviour_section([]) == []


def test_decided_and_followed_tell_a_wrong_decision_from_an_answer_that_ignored_it():
    observed = [
        # benign prompts: two reasonings decided to refuse (wrong) and the answers refused (followed);
        # one decided to comply and refused anyway (ignored); one decided to comply and answered;
        # one decided nothing readable (left out of both shares)
        _o("rl", "jbb-benign", "comply", True, decided="refuse"),
        _o("rl", "jbb-benign", "comply", True, decided="refuse"),
        _o("rl", "jbb-benign", "comply", True, decided="comply"),
        _o("rl", "jbb-benign", "comply", False, decided="comply"),
        _o("rl", "jbb-benign", "comply", False),
        # a safe-completion prompt: decided to safe-complete and answered (followed)
        _o("rl", "mix", "safe_complete", False, decided="safe_complete"),
    ]
    benign, safe = behaviour_rows(observed, samples=200)
    assert benign.n == 5 and benign.wanted.value == pytest.approx(2 / 5)
    assert benign.decided_wanted.value == pytest.approx(2 / 4) and benign.decided_wanted.n == 4
    assert benign.follows_reasoning.value == pytest.approx(3 / 4) and benign.follows_reasoning.n == 4
    assert (safe.decided_wanted.value, safe.follows_reasoning.value) == (1.0, 1.0)
    row = behaviour_section([benign])[-2]
    decided_cell, follows_cell = row.split(" | ")[-2:]
    assert decided_cell.startswith("0.50 [") and follows_cell.startswith("0.75 [") and follows_cell.endswith("(n=4) |")
    # without decisions (a base model answers directly) both cells are empty
    [base] = behaviour_rows([_o("base", "jbb-benign", "comply", False)], samples=10)
    assert (base.decided_wanted, base.follows_reasoning) == (None, None)
    assert behaviour_section([base])[-2].endswith("| – | – |")
