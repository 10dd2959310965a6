"""The policy loss: PPO's clipped surrogate plus a k3 KL penalty to the reference.

Per completion token t of sequence b, with A_b the sequence's advantage:

    ratio     = exp(logp - logp_old)                  # current policy / sampler
    surrogate = min(ratio * A_b, clip(ratio, 1 - eps, 1 + eps) * A_b)
    kl        = exp(logp_ref - logp) - (logp_ref - logp) - 1
    loss_t    = -surrogate + kl_coef * kl

- Clipped surrogate: Schulman et al. 2017, "Proximal Policy Optimization
  Algorithms" (arXiv 1707.06347), eq. 7. The min makes it a pessimistic bound:
  for A > 0 the gain stops at ratio 1 + eps, for A < 0 at 1 - eps, and the
  clipped tokens get no gradient.
- k3 KL estimator: Schulman, "Approximating KL Divergence" (2020,
  http://joschu.net/blog/kl-approx.html). With x = p_ref / p sampled from p,
  k3 = x - log x - 1 is an unbiased, always non-negative estimate of
  KL(p || p_ref). Used as a loss term (not folded into the reward) as in
  GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300, eq. 4).

Aggregation (``aggregate``):

- ``"seq_mean"`` (default, GRPO eq. 3): mean over each sequence's valid
  tokens, then mean over the sequences that have any. Every completion weighs
  the same whatever its length.
- ``"token_mean"``: mean over all valid tokens of the batch (DAPO, arXiv
  2503.14476). Long completions weigh more. seq_mean divides each
  completion's gradient by its length, so a long wrong answer is penalised
  less per token than a short one: the length bias Dr. GRPO (arXiv
  2503.20783) points out. Pick token_mean to avoid it.

``old_logprobs`` and ``ref_logprobs`` are constants: they are detached here.
To leave unscorable samples out of the update entirely (no KL term either),
zero their rows of ``mask``; an advantage of 0 alone still applies the KL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregate = Literal["seq_mean", "token_mean"]


@dataclass(frozen=True)
class LossOutput:
    """The loss to backpropagate and its diagnostics.

    The diagnostics are means over all valid tokens of the batch (whatever
    ``aggregate``), detached, as Python floats.
    """

    loss: torch.Tensor
    """() scalar, differentiable with respect to ``logprobs``."""
    kl: float
    """Mean k3 KL to the reference per token."""
    clip_fraction: float
    """Share of tokens where the clipped term was the smaller one and differed."""
    ratio_mean: float
    """Mean of exp(logp - logp_old); 1.0 when fully on-policy."""


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float,
    kl_coef: float,
    aggregate: Aggregate = "seq_mean",
) -> LossOutput:
    """Clipped policy-gradient loss with a k3 KL penalty, see the module docstring.

    Shapes: ``logprobs``, ``old_logprobs``, ``ref_logprobs``, ``mask`` (B, T),
    log-probabilities of each completion token under the current policy, the
    sampler that drew it and the frozen reference; ``mask`` is 1 (or True) on
    real completion tokens. ``advantages`` (B,). A batch with no valid token
    gives a zero loss that is still connected to ``logprobs`` (every data-
    parallel rank must call backward).

    Worked example, one token, on-policy (ratio 1), A = 2, ref = logp:
    surrogate = min(1 * 2, 1 * 2) = 2, kl = e^0 - 0 - 1 = 0, loss = -2.

    >>> z = torch.zeros(1, 1)
    >>> out = policy_loss(z, z, z, torch.tensor([2.0]), torch.ones(1, 1), clip_eps=0.2, kl_coef=0.1)
    >>> out.loss.item(), out.kl, out.clip_fraction, out.ratio_mean
    (-2.0, 0.0, 0.0, 1.0)
    """
    _check_shapes(logprobs, old_logprobs, ref_logprobs, advantages, mask, aggregate)
    if not clip_eps > 0.0:
        raise ValueError(f"clip_eps: must be > 0, got {clip_eps}")
    if not kl_coef >= 0.0:
        raise ValueError(f"kl_coef: must be >= 0, got {kl_coef}")
    valid = mask.bool()  # (B, T)
    # Padding may hold -inf or garbage: zero the log-ratios there before exp,
    # where() also sends those positions no gradient.
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), 0.0)  # (B, T)
    ref_log_ratio = torch.where(valid, ref_logprobs.detach() - logprobs, 0.0)  # (B, T)

    ratio = torch.exp(log_ratio)  # (B, T)
    adv = advantages.detach().to(ratio.dtype).unsqueeze(-1)  # (B, 1)
    unclipped = ratio * adv  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv  # (B, T)
    surrogate = torch.minimum(unclipped, clipped)  # (B, T)
    kl = torch.exp(ref_log_ratio) - ref_log_ratio - 1.0  # (B, T), >= 0
    per_token = -surrogate + kl_coef * kl  # (B, T)

    w = valid.to(per_token.dtype)  # (B, T)
    loss = _aggregate(per_token, w, aggregate)
    n_tokens = w.sum().clamp(min=1)
    with torch.no_grad():
        return LossOutput(
            loss=loss,
            kl=((kl * w).sum() / n_tokens).item(),
            clip_fraction=(((clipped < unclipped) & valid).sum() / n_tokens).item(),
            ratio_mean=((ratio * w).sum() / n_tokens).item(),
        )


def _aggregate(per_token: torch.Tensor, w: torch.Tensor, aggregate: Aggregate) -> torch.Tensor:
    """Reduce (B, T) per-token losses to a scalar over the tokens where w = 1."""
    if aggregate == "token_mean":
        return (per_token * w).sum() / w.sum().clamp(min=1)
    lengths = w.sum(dim=-1)  # (B,)
    seq_loss = (per_token * w).sum(dim=-1) / lengths.clamp(min=1)  # (B,)
    # Sequences without a valid token are left out of the mean, not counted as 0.
    has_tokens = (lengths > 0).to(seq_loss.dtype)  # (B,)
    return (seq_loss * has_tokens).sum() / has_tokens.sum().clamp(min=1)


def _check_shapes(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    aggregate: str,
) -> None:
    if aggregate not in ("seq_mean", "token_mean"):
        raise ValueError(f"aggregate: expected 'seq_mean' or 'token_mean', got {aggregate!r}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs: expected shape (B, T), got {tuple(logprobs.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        if t.shape != logprobs.shape:
            raise ValueError(f"{name}: expected shape {tuple(logprobs.shape)} like logprobs, got {tuple(t.shape)}")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages: expected shape ({logprobs.shape[0]},), got {tuple(advantages.shape)}")
