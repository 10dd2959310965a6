"""The learn phase of an RL step, on every learner rank: the policy and its frozen
reference, then ``rl.epochs_per_step`` clipped-loss optimizer steps on this
rank's share of the step's experiences::

    experiences -> this rank's shard -> padded micro-batches
        + reference log-probs (scored off the learners already, or here)
        + old log-probs (the sampler's, or the learner's own first-epoch forward)
        -> one closure per micro-batch -> learner.train_step -> LearnStats (summed over ranks)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from rayalign.head import check_plain_head
from rayalign.learners import global_sum
from rayalign.models import with_lora
from rayalign.rl.batch import (
    PolicyBatch,
    pad_experiences,
    policy_logprobs,
    reference_logprobs,
    shard,
)
from rayalign.rl.job import RLJob
from rayalign.rl.loss import policy_loss
from rayalign.rl.metrics import LearnStats
from rayalign.rl.reference import load_reference
from rayalign.types import Experience


@dataclass
class MicroBatch:
    """One micro-batch of a step and what its loss needs besides the policy's forward."""

    batch: PolicyBatch
    ref: torch.Tensor
    """Reference log-probs of the completion tokens, on the learner's device."""
    old: torch.Tensor | None
    """The PPO ratio's old log-probs; None until the learner's own first-epoch forward fills it."""
    weight: float
    """This micro-batch's share of the step's loss, times world_size (the learners average gradients)."""


def learn(
    learner, reference, job: RLJob, experiences: list[Experience], lr: float, rank: int, world_size: int
) -> LearnStats:
    """rl.epochs_per_step optimizer steps on this rank's share; stats over all ranks."""
    r = job.cfg.rl
    mine = shard(experiences, rank, world_size)
    batches = [
        pad_experiences(mine[i : i + r.micro_batch_size], job.pad_id) for i in range(0, len(mine), r.micro_batch_size)
    ]
    device = learner.device
    # The step's loss is a mean over all ranks' sequences (or tokens).
    seqs, toks = global_sum([sum(_n_sequences(b) for b in batches), sum(float(b.mask.sum()) for b in batches)], device)
    micro = [
        MicroBatch(
            b,
            reference_for(reference, b, device, job),
            # None: the learner's own first-epoch log-probs stand in (rl.old_logprobs, see behaviour_from_learner).
            None if behaviour_from_learner(r) else b.old_logprobs.to(device),
            loss_weight(b, r.loss_aggregate, seqs, toks, world_size),
        )
        for b in batches
    ]
    acc: defaultdict[str, float] = defaultdict(float)
    grad_norm = float("nan")
    for _ in range(r.epochs_per_step):
        grad_norm = learner.train_step([micro_step(m, r, acc) for m in micro], lr)
    keys = ("loss", "kl", "clip", "ratio", "entropy", "sampler_ratio")
    loss, kl, clip, ratio, entropy, sampler_ratio = global_sum([acc[k] for k in keys], device)
    denom = max(toks, 1.0) * r.epochs_per_step
    return LearnStats(
        loss=loss / world_size / r.epochs_per_step,
        kl=kl / denom,
        clip_fraction=clip / denom,
        ratio_mean=ratio / denom if toks else 1.0,
        sampler_ratio_mean=sampler_ratio / denom if toks else 1.0,
        entropy=entropy / denom,
        grad_norm=grad_norm,
        tokens=int(toks),
    )


def _n_sequences(batch: PolicyBatch) -> float:
    return float((batch.mask.sum(-1) > 0).sum())


def loss_weight(batch: PolicyBatch, aggregate: str, seqs: float, toks: float, world_size: int) -> float:
    """A micro-batch's share of the step's loss (its sequences or tokens over all ranks'), times world_size.

    >>> mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # 2 sequences, 3 tokens
    >>> b = PolicyBatch(None, None, None, None, mask, None, None, prompt_len=0)
    >>> loss_weight(b, "seq_mean", seqs=8.0, toks=20.0, world_size=2), loss_weight(b, "token_mean", 8.0, 20.0, 2)
    (0.5, 0.3)
    """
    if aggregate == "token_mean":
        return float(batch.mask.sum()) / max(toks, 1.0) * world_size
    return _n_sequences(batch) / max(seqs, 1.0) * world_size


def reference_for(reference, batch: PolicyBatch, device, job: RLJob) -> torch.Tensor:
    """The batch's reference log-probs: scored off the learners already, or by this learner now."""
    if batch.ref_logprobs is not None:
        return batch.ref_logprobs.to(device)
    if reference is None:
        raise RuntimeError("experiences came without reference log-probs and this learner holds no reference")
    return reference_logprobs(reference, batch, device, bf16=job.bf16, chunk=job.cfg.rl.logprob_chunk)


def behaviour_from_learner(r) -> bool:
    """Whether the PPO ratio's old log-probs are the learner's own (before the step's update) instead of
    the sampler's. ``rl.old_logprobs: auto`` picks the learner under ``rl.enforce_format``: vLLM applies
    the format grammar's mask to the logits before it computes log-probs, so a constrained sampler reports
    log p(token) - log Z (Z: the probability of the tokens the grammar allows), not the policy's log-prob
    (measured on SmolLM2-135M: a ratio of 0.87-0.89 at the first step instead of 1)."""
    return r.old_logprobs == "learner" or (r.old_logprobs == "auto" and r.enforce_format)


def micro_step(m: MicroBatch, r, acc: defaultdict[str, float]):
    """The closure a learner runs for one micro-batch: its weighted loss; adds its diagnostics to ``acc``
    and, on the first epoch without the sampler's old log-probs, fills ``m.old`` with the policy's."""
    n_tokens = float(m.batch.mask.sum())

    def run(model) -> torch.Tensor:
        device = m.ref.device
        logp, entropy = policy_logprobs(model, m.batch, device, r.logprob_chunk)  # (B, T) each
        if m.old is None:  # the optimizer has not stepped yet: this is the behaviour policy
            m.old = logp.detach()
        mask = m.batch.mask.to(device)
        sampled = m.batch.old_logprobs.to(device)
        acc["sampler_ratio"] += float((torch.where(mask > 0, logp.detach() - sampled, 0.0).exp() * mask).sum())
        out = policy_loss(
            logp,
            m.old,
            m.ref,
            m.batch.advantages.to(device),
            mask,
            clip_eps=r.clip_eps,
            kl_coef=r.kl_coef,
            aggregate=r.loss_aggregate,
        )
        acc["loss"] += float(out.loss.detach()) * m.weight
        acc["kl"] += out.kl * n_tokens
        acc["clip"] += out.clip_fraction * n_tokens
        acc["ratio"] += out.ratio_mean * n_tokens
        acc["entropy"] += float((entropy * mask).sum())
        return out.loss * m.weight

    return run


def micro_batches_per_rank(job: RLJob, world_size: int) -> int:
    """Each learner's share of a step's completions, in micro-batches (its grad_accum)."""
    r = job.cfg.rl
    return r.prompts_per_step * r.group_size // world_size // r.micro_batch_size


# ------------------------------------------------------------ models


def build_models(job: RLJob, device):
    """(policy in float32, frozen reference on ``device``): both start from job.model_path. With
    LoRA (rl.lora_rank) the reference is the policy with its adapters off (no second model); with
    the reference on an actor of its own, None."""
    from transformers import AutoModelForCausalLM

    r = job.cfg.rl
    policy = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=torch.float32)
    policy.config.use_cache = False
    if r.lora_rank > 0:
        policy = with_lora(policy, r.lora_rank, r.lora_alpha)
    if r.logprob_chunk:
        check_plain_head(policy, "rl.logprob_chunk")  # say so before training
    if job.reference is not None:
        return policy, None
    return policy, AdaptersOff(policy) if r.lora_rank > 0 else load_reference(job.model_path, device)


class AdaptersOff:
    """A LoRA policy called with its adapters off: the frozen reference, sharing the base weights."""

    def __init__(self, policy):
        self.policy = policy

    @property
    def module(self):
        """The wrapped model, by the name DDP and DeepSpeed give it (for :mod:`rayalign.head`)."""
        return self.policy

    def __call__(self, **inputs):
        with self.policy.disable_adapter():
            return self.policy(**inputs)
