"""Mixed precision on CUDA as the learners run it under ``model.dtype: bfloat16``: float32 weights,
bfloat16 autocast over the forward and backward. The SFT loss through ``logits_to_keep`` and the RL
reference log-probs stay near float32's, and an RL step under autocast keeps float32 weights and
makes the rewarded sequences likelier."""

import random

import pytest
import torch

from rayalign.models import autocast, load_model, load_tokenizer
from rayalign.rl.advantage import group_advantages
from rayalign.rl.batch import forward_logits, pad_experiences, reference_logprobs, token_logprobs
from rayalign.rl.loss import policy_loss
from rayalign.sft.data import build_rows, collate, loss_sum, scored_positions
from rayalign.types import Experience, Message, Prompt, SFTExample


def _sft_batch(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    examples = [
        SFTExample(Prompt(f"p{i}", (Message("user", f"question {i} about processes"),)), f"rule A{i}", "Run kill." * i)
        for i in range(1, 5)
    ]
    rows, _ = build_rows(tokenizer, examples, max_seq_len=512, packing=True)
    return collate(rows, tokenizer.pad_token_id)


def _sft_loss(model, batch, bf16: bool) -> float:
    labels = batch.labels.cuda()
    positions = scored_positions(labels)
    with torch.no_grad(), autocast("cuda", bf16):
        logits = model(
            input_ids=batch.input_ids.cuda(),
            position_ids=batch.position_ids.cuda(),
            use_cache=False,
            logits_to_keep=positions,
        ).logits
        total, n = loss_sum(logits, labels, positions)
    return total.item() / n


def test_sft_loss_under_autocast_is_near_float32(tiny_model):
    model, _ = load_model(tiny_model, dtype="float32", device="cuda")
    batch = _sft_batch(tiny_model)
    fp32, mixed = _sft_loss(model, batch, False), _sft_loss(model, batch, True)
    assert next(model.parameters()).dtype == torch.float32
    assert mixed != fp32  # autocast changed the arithmetic
    assert mixed == pytest.approx(fp32, rel=2e-2)


def _experiences(vocab: int) -> list[Experience]:
    rng = random.Random(0)
    prompt = tuple(rng.randrange(3, vocab) for _ in range(6))
    out = []
    for i in range(4):
        tokens = tuple(rng.randrange(3, vocab) for _ in range(10))
        out.append(Experience("p0", prompt, tokens, tuple(-1.0 for _ in tokens), 0.0, float(i in (0, 3))))
    return out


def test_rl_step_under_autocast_trains_float32_weights(tiny_model):
    policy, _ = load_model(tiny_model, dtype="float32", device="cuda")
    reference, _ = load_model(tiny_model, dtype="float32", device="cuda")
    experiences = _experiences(policy.config.vocab_size)
    batch = pad_experiences(experiences, 0)
    ref_fp32 = reference_logprobs(reference, batch, "cuda")
    ref = reference_logprobs(reference, batch, "cuda", bf16=True)
    assert torch.allclose(ref, ref_fp32, atol=0.1, rtol=0)

    rewards = torch.tensor([e.reward for e in experiences], device="cuda")
    advantages = group_advantages(rewards, torch.ones(4, dtype=torch.bool, device="cuda"), 4, method="grpo")
    completion_ids, mask = batch.completion_ids.cuda(), batch.mask.cuda()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    old = None
    for _ in range(3):
        with autocast("cuda", True):
            logp = token_logprobs(forward_logits(policy, batch, "cuda"), completion_ids)
        old = logp.detach() if old is None else old
        out = policy_loss(logp, old, ref, advantages, mask, clip_eps=0.2, kl_coef=0.05)
        optimizer.zero_grad()
        out.loss.backward()
        assert all(p.grad.dtype == torch.float32 and p.grad.isfinite().all() for p in policy.parameters())
        optimizer.step()
    assert next(policy.parameters()).dtype == torch.float32
    with torch.no_grad():
        new = token_logprobs(forward_logits(policy, batch, "cuda"), completion_ids)
    gain = (new - old).sum(-1)  # (B,) the rewarded sequences 0 and 3 got likelier than 1 and 2
    assert min(gain[0], gain[3]) > max(gain[1], gain[2])
