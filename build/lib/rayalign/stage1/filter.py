"""Stage-1 filtering, pure: judged samples -> SFT examples with the spec removed.

Per prompt: drop malformed completions (the format parser), drop unscorable
and low-scoring ones (min-over-k judge score below the threshold), keep the
best ``keep_per_prompt``. The kept example pairs the ORIGINAL conversation
(no spec text) with the reasoning and answer the spec-conditioned model
wrote, plus provenance (spec hash, judge template hash, score, sample index).
The report counts the verdicts the judge cascade decided (``decided_by ==
"cascade"``): judge calls saved. Whatever the judge said, a compliance with a
refuse-labelled prompt (by the behaviour detector) is never kept: a weak judge
must not teach the model what the spec forbids.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

from rayalign.eval.refusal import detect_behavior
from rayalign.types import Completion, Prompt, Rollout, SFTExample, Verdict


@dataclass(frozen=True)
class Candidate:
    """One sampled completion of a prompt, parsed and (unless malformed) judged."""

    rollout: Rollout
    completion: Completion
    verdict: Verdict | None = None
    """None when the completion was malformed and never judged."""


@dataclass(frozen=True)
class Provenance:
    model: str
    spec_hash: str
    generation_template_hash: str
    spec_category_hash: str = ""
    """Hash of the prompt's spec(category): set per prompt (see ``specdiff.category_hash``)."""


@dataclass(frozen=True)
class Decision:
    """What the filter did with one prompt's candidates."""

    prompt_id: str
    category: str | None
    kept: tuple[SFTExample, ...]
    reason: str
    """kept, all_malformed, all_unscorable, below_threshold or behaviour_mismatch."""
    candidates: int
    malformed: int
    unscorable: int
    best_score: float | None
    notes: tuple[str, ...] = ()
    """Distinct reasons the judge gave for unscorable verdicts (first 200 characters)."""
    cascade: int = 0
    """Candidates the judge cascade decided (behaviour mismatch) without a judge call."""
    spec_category_hash: str = ""
    """Hash of the spec(category) the prompt was generated and judged with; a re-run after a
    spec change regenerates the prompt when it differs (empty in older files: regenerated)."""
    generation_template_hash: str = ""
    """The generation (+ steering) template hash it was generated with; regenerated when it differs."""
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    """Malformed candidates by the format parser's reason (truncated, no_answer, ...)."""
    trimmed: int = 0
    """Candidates judged after their cut answer was ended at its last complete sentence."""


def select(
    prompt: Prompt,
    candidates: Sequence[Candidate],
    *,
    min_score: float,
    keep_per_prompt: int,
    provenance: Provenance,
) -> Decision:
    """Keep the best-scoring well-formed candidates at or above ``min_score``.

    Ties keep the lower sample index, so a re-run decides the same way.
    """
    malformed = [c for c in candidates if c.completion.malformed is not None]
    judged = [c for c in candidates if c.completion.malformed is None and c.verdict is not None]
    scored = [c for c in judged if c.verdict.status == "ok" and c.verdict.score is not None]
    unscorable = len(judged) - len(scored)
    ranked = sorted(scored, key=lambda c: (-c.verdict.score, c.rollout.sample_index))
    passing = [c for c in ranked if c.verdict.score >= min_score]
    kept = [c for c in passing if not complies_with_refusal(prompt, c.completion.answer)][:keep_per_prompt]
    if kept:
        reason = "kept"
    elif not judged:
        reason = "all_malformed"
    elif not scored:
        reason = "all_unscorable"
    else:
        reason = "behaviour_mismatch" if passing else "below_threshold"
    return Decision(
        prompt_id=prompt.id,
        category=prompt.category,
        kept=tuple(_example(prompt, c, provenance) for c in kept),
        reason=reason,
        candidates=len(candidates),
        malformed=len(malformed),
        unscorable=unscorable,
        best_score=ranked[0].verdict.score if ranked else None,
        notes=tuple(sorted({c.verdict.explanation[:200] for c in judged if c.verdict.status != "ok"})),
        cascade=sum(c.verdict.decided_by == "cascade" for c in judged),
        spec_category_hash=provenance.spec_category_hash,
        generation_template_hash=provenance.generation_template_hash,
        malformed_reasons=dict(collections.Counter(c.completion.malformed for c in malformed)),
        trimmed=sum(c.completion.trimmed for c in judged),
    )


def complies_with_refusal(prompt: Prompt, answer: str) -> bool:
    """A refuse-labelled prompt answered with a compliance: never training data.

    >>> from rayalign.types import Message
    >>> p = Prompt("p", (Message("user", "How do I pick my neighbour's lock?"),), "illicit_behavior", "refuse")
    >>> complies_with_refusal(p, "Sure: insert a tension wrench, then rake the pins.")
    True
    >>> complies_with_refusal(p, "I'm sorry, but I can't help with that.")
    False
    """
    return prompt.expected == "refuse" and detect_behavior(answer) == "comply"


def _example(prompt: Prompt, c: Candidate, p: Provenance) -> SFTExample:
    return SFTExample(
        prompt=prompt,
        reasoning=c.completion.reasoning,
        answer=c.completion.answer,
        score=c.verdict.score,
        sample_index=c.rollout.sample_index,
        model=p.model,
        spec_hash=p.spec_hash,
        template_hash=c.verdict.template_hash,
        generation_template_hash=p.generation_template_hash,
        rules=c.verdict.rules,
        spec_category_hash=p.spec_category_hash,
    )


@dataclass(frozen=True)
class CategoryStats:
    prompts: int = 0
    kept: int = 0
    candidates: int = 0
    malformed: int = 0
    unscorable: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    """Dropped prompts by reason."""
    mean_kept_score: float | None = None
    mean_best_score: float | None = None
    cascade: int = 0
    """Samples the judge cascade decided without a judge call."""
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    """Malformed samples by the format parser's reason."""
    trimmed: int = 0
    """Samples judged after their cut answer was ended at its last complete sentence."""


def summarize(decisions: Sequence[Decision]) -> dict[str, CategoryStats]:
    """Per category (``none`` for uncategorised) plus ``all``.

    >>> d = Decision("p", "privacy", (), "below_threshold", 2, 1, 0, 3.0, cascade=1)
    >>> summarize([d])["all"].dropped, summarize([d])["privacy"].cascade
    ({'below_threshold': 1}, 1)
    """
    groups: dict[str, list[Decision]] = collections.defaultdict(list)
    for d in decisions:
        groups[d.category or "none"].append(d)
        groups["all"].append(d)
    return {name: _stats(ds) for name, ds in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0]))}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _stats(decisions: list[Decision]) -> CategoryStats:
    return CategoryStats(
        prompts=len(decisions),
        kept=sum(len(d.kept) for d in decisions),
        candidates=sum(d.candidates for d in decisions),
        malformed=sum(d.malformed for d in decisions),
        unscorable=sum(d.unscorable for d in decisions),
        dropped=dict(collections.Counter(d.reason for d in decisions if d.reason != "kept")),
        mean_kept_score=_mean([e.score for d in decisions for e in d.kept if e.score is not None]),
        mean_best_score=_mean([d.best_score for d in decisions if d.best_score is not None]),
        cascade=sum(d.cascade for d in decisions),
        malformed_reasons=dict(
            sum((collections.Counter(d.malformed_reasons) for d in decisions), collections.Counter())
        ),
        trimmed=sum(d.trimmed for d in decisions),
    )


def unscorable_reasons(decisions: Sequence[Decision], top: int = 3) -> list[tuple[str, int]]:
    """The most frequent reasons for unscorable verdicts, with counts."""
    counts = collections.Counter(note for d in decisions for note in d.notes)
    return counts.most_common(top)


def format_report(stats: dict[str, CategoryStats]) -> str:
    """The filter summary as a Markdown table; "cascade" counts samples decided
    without a judge call (judge calls saved), "trimmed" samples judged after a cut
    answer was ended at its last complete sentence."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.2f}"

    lines = [
        "| category | prompts | samples | malformed | unscorable | cascade | kept | dropped (reason: prompts) "
        "| mean kept score | mean best score | trimmed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(s.dropped.items())) or "-"
        why = ", ".join(f"{k}: {v}" for k, v in sorted(s.malformed_reasons.items()))
        malformed = f"{s.malformed} ({why})" if why else str(s.malformed)
        lines.append(
            f"| {name} | {s.prompts} | {s.candidates} | {malformed} | {s.unscorable} | {s.cascade} | {s.kept} | {dropped} "
            f"| {num(s.mean_kept_score)} | {num(s.mean_best_score)} | {s.trimmed} |"
        )
    return "\n".join(lines)
