"""The chunked head + cross-entropy equals the unchunked one, in value and in both gradients."""

import math

import pytest
import torch

from rayalign.sft.head_loss import head_loss_sum


def _reference(hidden, weight, labels):
    return torch.nn.functional.cross_entropy(hidden @ weight.T, labels, reduction="sum")


def _inputs(rows=7, width=5, vocab=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=g, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    return hidden, weight, labels


def test_a_hand_computed_loss_and_gradient():
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = head_loss_sum(hidden, weight, torch.tensor([1]), chunk=1)  # logits [1, 0], label 1
    assert float(loss) == pytest.approx(math.log(math.e + 1))  # log(e + 1) - 0 = 1.3133
    loss.backward()
    p = math.e / (math.e + 1)  # softmax [0.7311, 0.2689]; minus one-hot [0, 1]: [0.7311, -0.7311]
    assert hidden.grad[0].tolist() == pytest.approx([p, -p])  # (p - onehot) @ weight
    assert weight.grad.flatten().tolist() == pytest.approx([p, 0.0, -p, 0.0])  # (p - onehot)^T @ hidden


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_any_chunking_matches_the_unchunked_loss_and_gradients(chunk):
    hidden, weight, labels = _inputs()
    expected = _reference(hidden, weight, labels)
    expected.backward(torch.tensor(0.5))
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    got = head_loss_sum(hidden, weight, labels, chunk)
    got.backward(torch.tensor(0.5))  # the learner scales the loss: backward scales the stored gradients
    assert float(got) == pytest.approx(float(expected), rel=1e-6)
    torch.testing.assert_close(hidden.grad, want_h)
    torch.testing.assert_close(weight.grad, want_w)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    hidden, weight, labels = _inputs()
    weight.requires_grad_(False)  # LoRA leaves the output head frozen
    head_loss_sum(hidden, weight, labels, chunk=2).backward()
    assert weight.grad is None and hidden.grad is not None


def test_under_bf16_autocast_it_stays_close_to_float32_and_float32_weights_get_float32_gradients():
    hidden, weight, labels = _inputs(rows=16, width=32, vocab=64)
    expected = float(_reference(hidden, weight, labels))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_loss_sum(hidden, weight, labels, chunk=5)
    got.backward()
    assert float(got) == pytest.approx(expected, rel=0.02)
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_a_chunk_below_one_is_refused():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        head_loss_sum(hidden, weight, labels, 0)
