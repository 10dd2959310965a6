"""An SFT micro-step with sft.loss_chunk: the loss and gradients of the unchunked step, plain or LoRA."""

import pytest
import torch

from rayalign.models import load_model, load_tokenizer, with_lora
from rayalign.sft.data import collate, pack, tokenize_example
from rayalign.sft.loop import _micro_step
from rayalign.types import Message, Prompt, SFTExample


def _batch(tokenizer, flat: bool):
    rows = []
    for k in (1, 5, 9):
        example = SFTExample(
            prompt=Prompt(id=f"p{k}", messages=(Message("user", "How do I kill a process?"),)),
            reasoning="rule A1 allows it",
            answer="Run kill." * k,
        )
        rows.append(pack([tokenize_example(tokenizer, example)], 512)[0])
    return collate(rows, pad_id=0, flat=flat)


def _loss_and_grads(tiny_model, batch, chunk: int, lora: bool):
    torch.manual_seed(0)
    model, _ = load_model(tiny_model, dtype="float32")
    model = with_lora(model, rank=4, alpha=8) if lora else model
    totals: list[float] = []
    loss = _micro_step(batch, 0.5, "cpu", totals, chunk=chunk)(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), totals[0], grads


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("lora", [False, True])
def test_a_chunked_head_gives_the_unchunked_loss_and_gradients(tiny_model, flat, lora):
    batch = _batch(load_tokenizer(tiny_model), flat)
    loss, total, grads = _loss_and_grads(tiny_model, batch, chunk=0, lora=lora)
    chunked_loss, chunked_total, chunked_grads = _loss_and_grads(tiny_model, batch, chunk=7, lora=lora)
    assert chunked_loss == pytest.approx(loss, rel=1e-5) and chunked_total == pytest.approx(total, rel=1e-5)
    assert chunked_loss == pytest.approx(0.5 * total, rel=1e-6)  # the learner's scale applies
    assert chunked_grads.keys() == grads.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(chunked_grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
