"""Per-step RL metrics and sample tables, from a step's judged rollouts and the
learners' statistics. Names: ``rl/<metric>``, ``rl/reward/<category>``,
``timing/<phase>``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rayalign.types import Completion, Prompt, Rollout, Verdict

TABLE_ROWS = 8
TABLE_COLUMNS = ("prompt", "category", "reasoning", "answer", "reward", "score", "verdict")


@dataclass(frozen=True)
class Judged:
    """The generate + reward phases' output for one step (rank 0)."""

    prompts: tuple[Prompt, ...]
    rollouts: tuple[Rollout, ...]
    completions: tuple[Completion, ...]
    verdicts: tuple[Verdict | None, ...]
    """None where the completion was malformed and not judged."""
    rewards: tuple[float | None, ...]


@dataclass(frozen=True)
class LearnStats:
    """What the learners report for one step (means over all ranks' tokens)."""

    loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float
    entropy: float
    grad_norm: float
    tokens: int
    sync_bytes: int = 0
    """Bytes of weights rank 0 sent to the samplers after the step."""
    sampler_ratio_mean: float = 1.0
    """Mean of p_learner / p_sampler per token: 1 when the sampler reports the policy's own log-probs."""


def step_metrics(
    judged: Judged, stats: LearnStats, policy_version: int, prompts_seen: int, timings: dict[str, float]
) -> dict[str, float]:
    """The step's metrics, named ``rl/...`` and ``timing/<phase>``.

    ``rl/cascade_rate`` is the share of scored verdicts the judge cascade
    decided (judge calls saved); NaN when nothing was scored.
    """
    scored = [x for x in judged.rewards if x is not None]
    verdicts = [v for v in judged.verdicts if v is not None and v.status == "ok"]
    n = len(judged.rewards)
    mean = sum(scored) / len(scored) if scored else float("nan")
    std = (sum((x - mean) ** 2 for x in scored) / len(scored)) ** 0.5 if scored else float("nan")
    metrics = {
        "rl/reward_mean": mean,
        "rl/reward_std": std,
        "rl/unscorable_rate": sum(x is None for x in judged.rewards) / n,
        "rl/malformed_rate": sum(c.malformed is not None for c in judged.completions) / n,
        "rl/truncated_rate": sum(c.malformed == "truncated" for c in judged.completions) / n,
        "rl/cascade_rate": (
            sum(v.decided_by == "cascade" for v in verdicts) / len(verdicts) if verdicts else float("nan")
        ),
        "rl/completion_tokens": sum(len(x.token_ids) for x in judged.rollouts) / n,
        "rl/loss": stats.loss,
        "rl/kl": stats.kl,
        "rl/clip_fraction": stats.clip_fraction,
        "rl/ratio_mean": stats.ratio_mean,
        "rl/sampler_ratio_mean": stats.sampler_ratio_mean,
        "rl/entropy": stats.entropy,
        "rl/grad_norm": stats.grad_norm,
        "rl/sync_bytes": stats.sync_bytes,
        "rl/policy_version": policy_version,
        "rl/prompts_seen": prompts_seen,
        "rl/completions_per_s": n / timings["step"],
        **{f"timing/{k}": v for k, v in timings.items()},
    }
    return metrics | category_rewards(judged)


def category_rewards(judged: Judged) -> dict[str, float]:
    """Mean reward per spec category (``rl/reward/<category>``, benign when none)."""
    group_size = len(judged.rollouts) // max(len(judged.prompts), 1)
    by_category: dict[str, list[float]] = defaultdict(list)
    for i, value in enumerate(judged.rewards):
        if value is not None:
            by_category[judged.prompts[i // group_size].category or "benign"].append(value)
    return {f"rl/reward/{c}": sum(v) / len(v) for c, v in sorted(by_category.items())}


def table_rows(judged: Judged) -> list[list]:
    group_size = len(judged.rollouts) // max(len(judged.prompts), 1)
    rows = []
    for i in range(min(TABLE_ROWS, len(judged.rollouts))):
        prompt, completion, verdict = judged.prompts[i // group_size], judged.completions[i], judged.verdicts[i]
        rows.append(
            [
                prompt.messages[-1].content,
                prompt.category or "",
                completion.reasoning,
                completion.answer,
                judged.rewards[i],
                verdict.score if verdict else None,
                (verdict.explanation if verdict else f"malformed: {completion.malformed}"),
            ]
        )
    return rows
