"""Learner math on CUDA: packed SFT loss equals per-example loss in bf16 and
fp32 (sdpa with restarting position ids), and the RL loss trains a step."""

import pytest
import torch

from rayalign.models import load_model, load_tokenizer
from rayalign.rl.advantage import group_advantages
from rayalign.rl.loss import policy_loss
from rayalign.sft.data import build_rows, collate, loss_sum, tokenize_example
from rayalign.types import Message, Prompt, SFTExample


def _examples():
    return [
        SFTExample(
            Prompt(f"p{i}", (Message("user", f"question {i} about processes"),)),
            f"rule A{i} applies",
            "Run kill." * (i + 1),
        )
        for i in range(4)
    ]


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_packed_loss_matches_unpacked_on_cuda(tiny_model, dtype, tol):
    model, _ = load_model(tiny_model, dtype=dtype, device="cuda")
    tokenizer = load_tokenizer(tiny_model)
    examples = _examples()
    packed_rows, _ = build_rows(tokenizer, examples, max_seq_len=512, packing=True)
    assert len(packed_rows) < len(examples)
    with torch.no_grad():
        packed = collate(packed_rows, tokenizer.pad_token_id)
        logits = model(
            input_ids=packed.input_ids.cuda(), position_ids=packed.position_ids.cuda(), use_cache=False
        ).logits
        total_packed, n_packed = loss_sum(logits, packed.labels.cuda())
        total_single, n_single = 0.0, 0
        for e in examples:
            ids, labels = tokenize_example(tokenizer, e)
            out = model(input_ids=torch.tensor([ids], device="cuda"), use_cache=False).logits
            t, n = loss_sum(out, torch.tensor([labels], device="cuda"))
            total_single, n_single = total_single + t.item(), n_single + n
    assert n_packed == n_single
    assert total_packed.item() / n_packed == pytest.approx(total_single / n_single, rel=tol)


def test_rl_loss_step_on_cuda(tiny_model):
    model, _ = load_model(tiny_model, dtype="float32", device="cuda")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, 300, (4, 12), device="cuda")
    with torch.no_grad():
        old = torch.log_softmax(model(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], device="cuda")
    advantages = group_advantages(rewards, torch.ones(4, dtype=torch.bool, device="cuda"), 2, method="grpo")
    mask = torch.ones_like(old)
    for _ in range(3):
        new = torch.log_softmax(model(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out = policy_loss(new, old, old, advantages, mask, clip_eps=0.2, kl_coef=0.05)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        new = torch.log_softmax(model(ids).logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    gain = (new - old).sum(-1)  # (B,) sequences with positive advantage got likelier
    assert gain[0] > gain[1] and gain[3] > gain[2]
