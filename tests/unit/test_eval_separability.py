"""The probe's numbers, by hand: AUC, refused/answered at a threshold, the best threshold, the fit."""

import pytest
import torch

from rayalign.eval.separability import auc, best_total, cross_scores, fit_probe, fold_of, rates, separation

# Two refuse-labelled prompts scored 3 and 1, two comply-labelled scored 2 and 0.
SCORES = torch.tensor([3.0, 1.0, 2.0, 0.0])
LABELS = torch.tensor([1.0, 1.0, 0.0, 0.0])


def test_auc_counts_pairs_ranked_right_and_ties_as_half():
    # Pairs (refuse, comply): 3>2, 3>0, 1<2, 1>0: 3 of 4.
    assert auc(SCORES, LABELS) == 0.75
    # 2 vs 2 ties (half), 2 > 1: (0.5 + 1) / 2.
    assert auc(torch.tensor([2.0, 2.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])) == 0.75


def test_rates_refuse_above_the_threshold_and_answer_at_or_below_it():
    # Threshold 0: both refuse-labelled above (1.0); of 2 and 0 only 0 is answered (0.5).
    assert rates(SCORES, LABELS) == (1.0, 0.5)
    # Threshold 2: only 3 refused (0.5); 2 and 0 answered (1.0).
    assert rates(SCORES, LABELS, 2.0) == (0.5, 1.0)
    assert rates(SCORES, LABELS, 1.0) == (0.5, 0.5)


def test_the_best_threshold_and_answering_everything_scores_one():
    assert best_total(SCORES, LABELS) == 1.5
    # A score that says nothing: every threshold refuses all or answers all.
    assert best_total(torch.zeros(4), LABELS) == 1.0
    assert best_total(torch.tensor([0.0, 0.0, 1.0, 1.0]), LABELS) == 1.0  # backwards: still 1.0 (answer all)


def test_separation_gathers_the_numbers():
    s = separation(SCORES, LABELS)
    assert (s.refused, s.answered, s.total, s.best, s.auc) == (1.0, 0.5, 1.5, 1.5, 0.75)
    assert (s.n_refuse, s.n_comply) == (2, 2)


def test_auc_needs_both_labels():
    with pytest.raises(ValueError, match="both labels"):
        auc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))


def test_a_symmetric_problem_gets_an_odd_probe_through_zero():
    # x = -2, -1 comply and 1, 2 refuse: standardised and balanced, so the bias is 0 and f(-x) = -f(x).
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    probe = fit_probe(x, torch.tensor([0.0, 0.0, 1.0, 1.0]), l2=1e-2)
    s = probe(torch.tensor([[-1.5], [0.0], [1.5]]))
    assert s[1].abs() < 1e-5
    assert s[2] > 0 and torch.allclose(s[0], -s[2], atol=1e-5)


def test_class_weights_keep_the_threshold_between_the_classes():
    # Nine comply at -1, one refuse at +1: unweighted, the bias would push everything to comply.
    x = torch.tensor([[-1.0]] * 9 + [[1.0]])
    y = torch.tensor([0.0] * 9 + [1.0])
    s = fit_probe(x, y, l2=1e-2)(x)
    assert (s[:9] < 0).all() and s[9] > 0
    assert rates(s, y) == (1.0, 1.0)


def test_a_larger_penalty_shrinks_the_scores():
    x = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    weak, strong = fit_probe(x, y, 1e-3)(x), fit_probe(x, y, 10.0)(x)
    assert strong.abs().max() < weak.abs().max()


def test_a_probe_needs_both_labels():
    with pytest.raises(ValueError, match="both labels"):
        fit_probe(torch.ones(3, 2), torch.ones(3), 1e-2)


def test_folds_are_stable_and_a_group_shares_one():
    assert fold_of("17", 5) == fold_of("17", 5)
    assert {fold_of(str(i), 5) for i in range(50)} == set(range(5))


def test_cross_scores_hold_out_whole_groups():
    # Two features: the first separates the classes; the second is a twin id. A twin pair (same group) sits
    # in one fold, so every prompt is scored by a probe that saw neither it nor its twin, and is still right.
    groups = [str(i // 2) for i in range(40)]
    y = torch.tensor([float(i % 2) for i in range(40)])
    x = torch.stack([y * 2 - 1 + 0.1 * torch.linspace(-1, 1, 40), torch.tensor([float(g) for g in groups])], 1)
    s = cross_scores(x, y, groups, folds=5, l2=1e-2)
    assert not s.isnan().any()
    assert rates(s, y) == (1.0, 1.0)
