"""The eval's per-benchmark behaviour table (pure), worked by hand."""

import pytest

from rayalign.eval.behaviour import Observed, behaviour_rows, behaviour_section


def _o(target, bench, expected, refused, *, fmt=True, cited=(), judge=None, category="privacy"):
    return Observed(target, bench, category, expected, refused, fmt, cited, judge)


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
