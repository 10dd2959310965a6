"""Group-relative advantages: each prompt is sampled K times, and each
completion is judged against its own group instead of a learned critic.

With the group's rewards r_1..r_K of one prompt (valid members only):

GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, "outcome supervision"):

    A_i = (r_i - mean(r)) / (std(r) + eps)

  std is the population std (``unbiased=False``, divide by n): a group of two
  with rewards {1, 0} then gets advantages {+1, -1}. (trl's GRPOTrainer uses
  the unbiased std, which gives +-0.707 for the same group.)

RLOO (Ahmadian et al. 2024, "Back to Basics", arXiv 2402.14740; Kool et al.
2019, "Buy 4 REINFORCE samples, get a baseline for free"):

    A_i = r_i - mean_{j != i}(r_j)

  the leave-one-out baseline is independent of r_i, so the estimate is unbiased.

Unscorable is not zero: a sample marked invalid gets advantage 0 AND is left
out of its group's mean and std, so a judge failure neither rewards nor
punishes anyone. A group with fewer than 2 valid members has no baseline and
gets all-zero advantages; so does a group whose valid rewards are all equal
(nothing to prefer).
"""

from __future__ import annotations

from typing import Literal

import torch

AdvantageMethod = Literal["grpo", "rloo"]


def group_advantages(
    rewards: torch.Tensor,
    valid: torch.Tensor,
    group_size: int,
    *,
    method: AdvantageMethod,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Advantages of B = n_groups * group_size samples, groups consecutive.

    ``rewards`` (B,): entries [g*K, (g+1)*K) are the K completions of prompt g.
    ``valid`` (B,) bool: False marks unscorable samples (their reward value is
    ignored, NaN allowed). Returns (B,) advantages, 0 where invalid.

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.ones(4, dtype=torch.bool),
    ...                  2, method="grpo").round(decimals=4).tolist()
    [1.0, -1.0, -1.0, 1.0]
    >>> group_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3, dtype=torch.bool),
    ...                  3, method="rloo").tolist()
    [-1.5, 0.0, 1.5]
    """
    _check_inputs(rewards, valid, group_size, method)
    n_groups = rewards.shape[0] // group_size
    dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    # Zero the invalid entries first: NaN * 0 is still NaN.
    r = torch.where(valid, rewards.to(dtype), 0.0).view(n_groups, group_size)  # (G, K)
    v = valid.view(n_groups, group_size)  # (G, K)
    w = v.to(dtype)  # (G, K)
    n_valid = w.sum(dim=-1, keepdim=True)  # (G, 1)
    total = (r * w).sum(dim=-1, keepdim=True)  # (G, 1)

    if method == "grpo":
        mean = total / n_valid.clamp(min=1)  # (G, 1)
        centred = (r - mean) * w  # (G, K)
        std = ((centred**2).sum(dim=-1, keepdim=True) / n_valid.clamp(min=1)).sqrt()  # (G, 1)
        adv = centred / (std + eps)  # (G, K)
    else:
        # Mean of the other valid members: (sum of the group - own reward) / (n - 1).
        baseline = (total - r) / (n_valid - 1).clamp(min=1)  # (G, K)
        adv = r - baseline  # (G, K)

    keep = v & (n_valid >= 2)  # (G, K)
    return torch.where(keep, adv, 0.0).view(-1)  # (B,)


def _check_inputs(rewards: torch.Tensor, valid: torch.Tensor, group_size: int, method: str) -> None:
    if method not in ("grpo", "rloo"):
        raise ValueError(f"method: expected 'grpo' or 'rloo', got {method!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards: expected shape (B,), got {tuple(rewards.shape)}")
    if valid.shape != rewards.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid: expected a bool tensor of shape {tuple(rewards.shape)}, got {valid.dtype} {tuple(valid.shape)}"
        )
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"group_size: {group_size} does not divide the batch of {rewards.shape[0]} rewards")
    if not torch.isfinite(rewards[valid]).all():
        raise ValueError("rewards: a valid reward is NaN or infinite (mark it invalid instead)")
