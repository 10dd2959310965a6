"""Score judge requests: render, ask the backend for k replies each, parse,
retry the unparseable ones a bounded number of times, keep the minimum.

A request whose replies never parse becomes an *unscorable* verdict with
the reason, never a silent zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rayalign.judge.backends import JudgeBackend
from rayalign.judge.rubric import (
    JudgeTemplates,
    VerdictParseError,
    aggregate_min,
    parse_verdict,
    render_judge_messages,
    unscorable,
)
from rayalign.spec import Spec
from rayalign.types import JudgeRequest, Verdict


@dataclass(frozen=True)
class ScoringPolicy:
    k: int = 1
    """Judge runs per request; the minimum score is kept."""
    parse_retries: int = 2
    """Extra rounds for runs whose reply did not parse."""


async def score_requests(
    backend: JudgeBackend,
    spec: Spec,
    templates: JudgeTemplates,
    requests: Sequence[JudgeRequest],
    policy: ScoringPolicy,
) -> list[Verdict]:
    """One min-over-k verdict per request, in order."""
    conversations = [render_judge_messages(spec, templates, r) for r in requests]
    runs: list[list[Verdict]] = [[] for _ in requests]
    needed = {i: policy.k for i in range(len(requests))}
    for _ in range(policy.parse_retries + 1):
        todo = [i for i, count in needed.items() if count > 0]
        if not todo:
            break
        n = max(needed[i] for i in todo)
        replies = await backend.complete([conversations[i] for i in todo], n, [requests[i] for i in todo])
        for i, texts in zip(todo, replies):
            for text in texts[: needed[i]]:
                verdict = _parse(text, spec, templates, requests[i])
                runs[i].append(verdict)
                if verdict.status == "ok":
                    needed[i] -= 1
    return [_final(r, needed[i], policy) for i, r in enumerate(runs)]


def _parse(text: str, spec: Spec, templates: JudgeTemplates, request: JudgeRequest) -> Verdict:
    hashes = dict(spec_hash=spec.hash, template_hash=templates.hash, request_id=request.request_id)
    try:
        return parse_verdict(text, spec, **hashes)
    except VerdictParseError as e:
        return unscorable(f"unparseable judge reply: {e.reason}", **hashes)


def _final(runs: list[Verdict], missing: int, policy: ScoringPolicy) -> Verdict:
    """Min over k scored runs; unscorable when fewer than k ever parsed.

    A minimum over fewer runs than asked would be a laxer filter than the
    config says, so it is not passed off as a score.
    """
    scored = [v for v in runs if v.status == "ok"]
    if missing == 0:
        return aggregate_min(scored)
    reasons = "; ".join(sorted({v.explanation for v in runs if v.status != "ok"}))
    first = runs[0]
    return unscorable(
        f"{len(scored)}/{policy.k} judge runs parsed after retries: {reasons}",
        spec_hash=first.spec_hash,
        template_hash=first.template_hash,
        request_id=first.request_id,
    )
