"""Reward shaping: a judge verdict on one completion -> one scalar reward.

The judge scores the final answer on 0-10 (it does not see the reasoning in
RL, see the method notes). The reward is

    reward = score * scale - length_coef * n_tokens / max_new_tokens - overlong

where ``overlong`` grows linearly from 0 to ``overlong_penalty`` over the last
``overlong_buffer`` tokens before the limit (DAPO's soft overlong punishment):
a completion that ends near the limit scores a little below the same one
ended early, which teaches the policy to finish before it is cut, and unlike
a flat length term leaves every shorter completion alone.

A malformed completion (no answer, truncated, ...) is not judged: it gets
``malformed_penalty`` (plus the same length term), so the policy learns to
keep the format. A completion the token limit cut (``truncated``) may instead
be left out of the update (``exclude_truncated``, overlong filtering as in
DAPO): a penalty there ranks a right answer that ran long below a short wrong
one, e.g. a refusal of a benign request (cascade score 0) above a cut answer
to it (-1), which teaches over-refusal.

Unscorable is not zero: a verdict that is missing, could not be parsed or
timed out yields ``None``. The sample is then excluded from the update (no
advantage, and it does not move its group's mean) instead of being scored 0,
which would push the policy away from whatever the judge failed on (the bug
of verl PR #6673 and AReaL #548).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rayalign.rollout.format import split_completion
from rayalign.types import Completion, JudgeRequest, Prompt, Rollout, Verdict


@dataclass(frozen=True)
class RewardShaping:
    """How a verdict becomes a reward."""

    malformed_penalty: float = -1.0
    """Reward of a malformed completion, given instead of judging it."""
    length_coef: float = 0.0
    """reward -= length_coef * completion_tokens / max_new_tokens (0 = no length term)."""
    scale: float = 0.1
    """Judge score (0-10) -> reward score * scale (0-1 with the default)."""
    exclude_truncated: bool = False
    """A completion cut by the token limit gets no reward (None: out of the update) instead of the penalty."""
    overlong_buffer: int = 0
    """The last this-many tokens before max_new_tokens, over which the reward falls linearly by up to
    overlong_penalty (0 = off; a buffer of max_new_tokens or more spreads it over the whole length)."""
    overlong_penalty: float = 1.0
    """What the reward loses at the limit under overlong_buffer."""


def overlong_term(n_tokens: int, max_new_tokens: int, shaping: RewardShaping) -> float:
    """How much a completion of ``n_tokens`` loses for ending near ``max_new_tokens``.

    Buffer 64 and penalty 0.5 at a limit of 256: the window is tokens 192-256, so 224 tokens lose
    0.5 * (224 - 192) / 64 = 0.25, and 192 or fewer lose nothing.

    >>> s = RewardShaping(overlong_buffer=64, overlong_penalty=0.5)
    >>> overlong_term(224, 256, s), overlong_term(192, 256, s), overlong_term(256, 256, s)
    (0.25, 0.0, 0.5)
    >>> overlong_term(256, 256, RewardShaping())
    0.0
    """
    buffer = min(shaping.overlong_buffer, max_new_tokens)
    if buffer <= 0:
        return 0.0
    return shaping.overlong_penalty * max(0, n_tokens - (max_new_tokens - buffer)) / buffer


def shape_reward(
    verdict: Verdict | None,
    malformed: str | None,
    n_tokens: int,
    max_new_tokens: int,
    shaping: RewardShaping,
) -> float | None:
    """The reward of one completion, or None when it cannot be scored.

    ``malformed`` is the completion's malformed reason (:func:`split_completion`), None when well formed.
    Worked examples (``RewardShaping(length_coef=0.5)``, 64 of 256 tokens):

    - verdict score 8: 8 * 0.1 - 0.5 * 64 / 256 = 0.8 - 0.125 = 0.675
    - malformed: -1.0 - 0.125 = -1.125 (the verdict, if any, is ignored)
    - truncated under ``exclude_truncated``: None; other malformed reasons keep the penalty
    - verdict unscorable or None: None, never 0

    >>> v = Verdict(status="ok", score=8.0)
    >>> shape_reward(v, None, 64, 256, RewardShaping(length_coef=0.5))
    0.675
    >>> shape_reward(None, None, 64, 256, RewardShaping()) is None
    True
    >>> shape_reward(None, "truncated", 256, 256, RewardShaping(exclude_truncated=True)) is None
    True
    >>> shape_reward(v, None, 224, 256, RewardShaping(overlong_buffer=64, overlong_penalty=0.5))
    0.55
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: must be >= 1, got {max_new_tokens}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens: must be >= 0, got {n_tokens}")
    length_cost = shaping.length_coef * n_tokens / max_new_tokens + overlong_term(n_tokens, max_new_tokens, shaping)
    if malformed == "truncated" and shaping.exclude_truncated:
        return None
    if malformed is not None:
        return shaping.malformed_penalty - length_cost
    if verdict is None or verdict.status == "unscorable":
        return None
    if verdict.score is None:
        # An "ok" verdict always carries a score; silently treating this as
        # unscorable would hide a judge-parsing bug.
        raise ValueError(f"verdict.score: None on a verdict with status 'ok' ({verdict.request_id})")
    return verdict.score * shaping.scale - length_cost


def shape_rollout_reward(
    rollout: Rollout,
    completion: Completion,
    verdict: Verdict | None,
    max_new_tokens: int,
    shaping: RewardShaping,
) -> float | None:
    """:func:`shape_reward` for a sampled rollout and its parsed completion.

    >>> r = Rollout("p1", 0, "x", (1,), (5, 6), (-0.1, -0.2), "stop")
    >>> c = Completion(reasoning="", answer="", malformed="no_answer")
    >>> shape_rollout_reward(r, c, None, 256, RewardShaping())
    -1.0
    """
    return shape_reward(verdict, completion.malformed, len(rollout.token_ids), max_new_tokens, shaping)


def reward_tensors(rewards: Sequence[float | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards with None -> (rewards, valid) tensors for :func:`group_advantages`.

    Unscorable entries hold NaN, so any use that forgets the ``valid`` mask
    shows up as NaN rather than as a silent 0.

    >>> r, v = reward_tensors([0.7, None])
    >>> v.tolist(), r[0].item() == torch.tensor(0.7).item(), math.isnan(r[1].item())
    ([True, False], True, True)
    """
    valid = torch.tensor([r is not None for r in rewards], dtype=torch.bool)  # (B,)
    values = torch.tensor([math.nan if r is None else float(r) for r in rewards], dtype=torch.float32)  # (B,)
    return values, valid


def request_id(rollout: Rollout) -> str:
    return f"{rollout.prompt_id}#{rollout.sample_index}"


def judge_requests(
    prompts: Mapping[str, Prompt], rollouts: Sequence[Rollout]
) -> tuple[list[Completion], list[JudgeRequest]]:
    """Parse each rollout; a judge request for every well-formed one.

    The reasoning is hidden from the judge (``reasoning=None``): rewarding
    what the chain of thought says would teach the policy to write reasoning
    that pleases the judge rather than reasoning that is true (the method's
    stage 2). The prompt carries its label hint (``expected``) when known.

    >>> from rayalign.types import Message
    >>> p = Prompt("p1", (Message("user", "hi"),), expected="comply")
    >>> r = Rollout("p1", 0, "<think>secret plan</think>Hello!", (1,), (5,), (-0.1,), "stop")
    >>> completions, requests = judge_requests({"p1": p}, [r])
    >>> requests[0].answer, requests[0].reasoning, requests[0].request_id
    ('Hello!', None, 'p1#0')
    """
    completions = [split_completion(r.text, r.finish_reason) for r in rollouts]
    requests = [
        JudgeRequest(prompt=prompts[r.prompt_id], answer=c.answer, reasoning=None, request_id=request_id(r))
        for r, c in zip(rollouts, completions)
        if c.malformed is None
    ]
    return completions, requests
