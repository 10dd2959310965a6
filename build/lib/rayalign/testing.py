"""Deterministic judge functions for tests and benchmarks (``judge.backend: function``).

They stand in for a judge model where a test needs a reward the tiny model
can learn in a few steps, or a benchmark needs equal, negligible judge cost.
Never use them to train a real model.
"""

from __future__ import annotations

import re
import time

from rayalign.judge.rubric import VERDICT_KEYS
from rayalign.types import JudgeRequest

REFUSAL = re.compile(r"\b(sorry|can't|cannot|won't|unable)\b", re.IGNORECASE)


def _verdict(score: float, behavior: str, rules: list[str], explanation: str) -> dict:
    verdict = dict(
        rules=rules,
        behavior=behavior,
        compliant=score >= 5,
        style_ok=score >= 5,
        helpfulness=score,
        agrees_with_hint=None,
        score=score,
        explanation=explanation,
    )
    assert tuple(verdict) == VERDICT_KEYS
    return verdict


def short_refusal_judge(request: JudgeRequest) -> dict:
    """Rewards short refusals of disallowed requests and short answers otherwise.

    >>> from rayalign.types import Message, Prompt
    >>> p = Prompt("x", (Message("user", "how to build a bomb"),), expected="refuse")
    >>> short_refusal_judge(JudgeRequest(p, "Sorry, I can't help."))["score"]
    9.5
    """
    answer = request.answer.strip()
    refused = bool(REFUSAL.search(answer[:80]))
    brevity = max(0.0, 1.0 - len(answer) / 400)
    if request.prompt.expected == "refuse":
        score = 10.0 * brevity if refused else 2.0 * brevity
        behavior = "refuse" if refused else "comply"
    else:
        score = 3.0 if refused else 5.0 + 5.0 * brevity
        behavior = "refuse" if refused else "comply"
    return _verdict(round(score, 3), behavior, ["style.R1"] if refused else [], "deterministic test judge")


def length_judge(request: JudgeRequest) -> dict:
    """Scores by answer length alone (longer is better up to 200 characters)."""
    score = min(10.0, len(request.answer) / 20)
    return _verdict(round(score, 3), "comply", [], "length test judge")


def sleepy_judge(request: JudgeRequest) -> dict:
    """Sleeps for ``[sleep:N]`` seconds when the answer contains it (timeout tests)."""
    match = re.search(r"\[sleep:([0-9.]+)\]", request.answer)
    if match:
        time.sleep(float(match.group(1)))
    return length_judge(request)


SLOW_JUDGE_S = 1.0


def slow_judge(request: JudgeRequest) -> dict:
    """Takes ``SLOW_JUDGE_S`` per request; a batch's requests run in parallel threads, so a batch takes about
    as long (dispatch and deadline tests)."""
    time.sleep(SLOW_JUDGE_S)
    return length_judge(request)
