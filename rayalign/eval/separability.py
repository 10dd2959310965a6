"""How well one score separates refuse-labelled prompts from comply-labelled ones.

Pure: torch only. A linear probe (class-balanced, L2-regularised logistic
regression on standardised features) is fitted on the training prompts and
read on evaluation prompts; the numbers are those the eval reports for a
model, so the two can be set side by side:

- ``refused``: the share of refuse-labelled prompts scored above 0 (the
  probe would refuse them);
- ``answered``: the share of comply-labelled prompts scored at or below 0;
- ``refused + answered``: 1.0 for a model that answers everything (or refuses
  everything), 2.0 for a perfect one;
- ``best``: the largest ``refused + answered`` any threshold gives (the
  probe's separation with its operating point chosen after the fact);
- ``auc``: the chance that a refuse-labelled prompt scores above a
  comply-labelled one (ties count half), independent of any threshold.

Labels are tensors of 0/1 floats, 1 = refuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Separation:
    """How one score splits the prompts."""

    refused: float
    answered: float
    best: float
    auc: float
    n_refuse: int
    n_comply: int

    @property
    def total(self) -> float:
        """refused + answered at the probe's own threshold."""
        return self.refused + self.answered


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """P(score of a refuse-labelled prompt > score of a comply-labelled one), ties half."""
    pos, neg = scores[labels > 0], scores[labels <= 0]
    if not len(pos) or not len(neg):
        raise ValueError("AUC needs prompts of both labels")
    above = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(above + 0.5 * ties)


def rates(scores: torch.Tensor, labels: torch.Tensor, threshold: float = 0.0) -> tuple[float, float]:
    """(refused, answered): refuse-labelled scored above ``threshold``, comply-labelled at or below it."""
    refuse = scores > threshold
    pos, neg = labels > 0, labels <= 0
    return float(refuse[pos].double().mean()), float((~refuse[neg]).double().mean())


def best_total(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The largest refused + answered over every threshold (refuse-all and answer-all give 1.0)."""
    cuts = torch.cat([scores.unique(), scores.min().reshape(1) - 1.0])
    return max(sum(rates(scores, labels, float(t))) for t in cuts)


def separation(scores: torch.Tensor, labels: torch.Tensor) -> Separation:
    refused, answered = rates(scores, labels)
    return Separation(
        refused=refused,
        answered=answered,
        best=best_total(scores, labels),
        auc=auc(scores, labels),
        n_refuse=int((labels > 0).sum()),
        n_comply=int((labels <= 0).sum()),
    )


Probe = Callable[[torch.Tensor], torch.Tensor]
"""Features (N, D) -> scores (N,); above 0 = refuse."""


def fit_probe(features: torch.Tensor, labels: torch.Tensor, l2: float) -> Probe:
    """Class-balanced logistic regression with an L2 penalty, on features standardised by the training set.

    features: (N, D) float; labels: (N,) 0/1. Each class weighs half of the
    loss, so the threshold 0 sits between the classes whatever their counts.
    """
    if not ((labels > 0).any() and (labels <= 0).any()):
        raise ValueError("a probe needs training prompts of both labels")
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    y = labels.double()
    share = y.mean()
    weight = torch.where(y > 0, 0.5 / share, 0.5 / (1 - share))
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=weight)
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    return lambda f: (((f.double() - mean) / std) @ w + b).float()


def fold_of(group: str, folds: int) -> int:
    """A stable fold for a group key (the same on every run and machine)."""
    return int(hashlib.sha256(group.encode()).hexdigest(), 16) % folds


def cross_scores(features: torch.Tensor, labels: torch.Tensor, groups: Sequence[str], folds: int, l2: float):
    """Scores of every prompt by a probe fitted on the other folds; prompts of one group share a fold.

    Grouping keeps a prompt and its twin (the same behaviour asked harmfully
    and benignly) out of each other's training folds.
    """
    fold = torch.tensor([fold_of(g, folds) for g in groups])
    out = torch.empty(len(labels))
    for k in range(folds):
        held = fold == k
        if held.any():
            out[held] = fit_probe(features[~held], labels[~held], l2)(features[held])
    return out
