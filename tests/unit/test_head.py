"""The LM head in chunks: SFT's summed cross-entropy and RL's token log-probs equal the unchunked ones,
in value and in both gradients; models whose logits are more than hidden @ head.T are refused."""

import math

import pytest
import torch

from rayalign.errors import ConfigError
from rayalign.head import check_plain_head, decoder_output, head_loss_sum, head_token_logprobs, no_logits, output_head
from rayalign.models import load_model, with_lora


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
    assert float(loss.detach()) == pytest.approx(math.log(math.e + 1))  # log(e + 1) - 0 = 1.3133
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
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    torch.testing.assert_close(hidden.grad, want_h)
    torch.testing.assert_close(weight.grad, want_w)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_still_do():
    hidden, weight, labels = _inputs()
    weight.requires_grad_(False)  # LoRA leaves the output head frozen
    head_loss_sum(hidden, weight, labels, chunk=2).backward()
    assert weight.grad is None and hidden.grad is not None


def test_under_bf16_autocast_it_stays_close_to_float32_and_float32_weights_get_float32_gradients():
    hidden, weight, labels = _inputs(rows=16, width=32, vocab=64)
    expected = float(_reference(hidden, weight, labels).detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_loss_sum(hidden, weight, labels, chunk=5)
    got.backward()
    assert float(got.detach()) == pytest.approx(expected, rel=0.02)
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_a_chunk_below_one_is_refused():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        head_loss_sum(hidden, weight, labels, 0)


# ------------------------------------------------------------ RL's token log-probs


def _token_reference(hidden, weight, tokens):
    logp = torch.log_softmax(hidden @ weight.T, dim=-1)
    return logp.gather(1, tokens[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)


def test_token_logprobs_and_their_gradients_by_hand():
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    logp, entropy = head_token_logprobs(hidden, weight, torch.tensor([1]), chunk=1)  # logits [1, 0], token 1
    p = math.e / (math.e + 1)  # softmax [0.7311, 0.2689]
    assert float(logp.detach()) == pytest.approx(math.log(1 - p))  # -1.3133
    assert float(entropy) == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)))  # 0.5822
    (3.0 * logp).sum().backward()  # d/d(logits) = 3 (one-hot - softmax) = [-3p, 3p]
    assert hidden.grad[0].tolist() == pytest.approx([-3 * p, 3 * p])  # @ weight (identity)
    assert weight.grad.flatten().tolist() == pytest.approx([-3 * p, 0.0, 3 * p, 0.0])  # outer with hidden [1, 0]


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_any_chunking_gives_the_log_softmax_gather_and_its_gradients_under_per_row_weights(chunk):
    hidden, weight, tokens = _inputs()
    upstream = torch.linspace(-2.0, 3.0, hidden.shape[0])  # the PPO loss weighs every token differently
    want_logp, want_entropy = _token_reference(hidden, weight, tokens)
    (want_logp * upstream).sum().backward()
    want_h, want_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp, entropy = head_token_logprobs(hidden, weight, tokens, chunk)
    (logp * upstream).sum().backward()
    torch.testing.assert_close(logp, want_logp.detach())
    torch.testing.assert_close(entropy, want_entropy.detach())
    assert not entropy.requires_grad
    torch.testing.assert_close(hidden.grad, want_h)
    torch.testing.assert_close(weight.grad, want_w)


def test_token_logprobs_with_a_frozen_head_under_bf16_autocast_and_without_grad():
    hidden, weight, tokens = _inputs(rows=16, width=32, vocab=64)
    weight.requires_grad_(False)
    want, _ = _token_reference(hidden, weight, tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = head_token_logprobs(hidden, weight, tokens, chunk=5)
    logp.sum().backward()
    torch.testing.assert_close(logp, want.detach(), rtol=0.05, atol=0.1)
    assert weight.grad is None and hidden.grad.dtype == torch.float32
    with torch.no_grad():  # the frozen reference's forward
        logp, _ = head_token_logprobs(hidden, weight, tokens, chunk=5)
    assert not logp.requires_grad
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        head_token_logprobs(hidden, weight, tokens, 0)


# ------------------------------------------------------------ the model's decoder and head


@pytest.mark.parametrize("lora", [False, True])
def test_the_decoder_output_times_the_head_is_the_models_logits(tiny_model, lora):
    model, _ = load_model(tiny_model, dtype="float32")
    model = with_lora(model, rank=4, alpha=8) if lora else model
    ids = torch.tensor([[1, 5, 9, 3]])
    hidden = decoder_output(model, lambda: model(input_ids=ids, use_cache=False, **no_logits("cpu")))
    assert hidden.shape[:2] == (1, 4)
    torch.testing.assert_close(hidden @ output_head(model).weight.T, model(input_ids=ids, use_cache=False).logits)


def test_a_model_whose_logits_are_more_than_the_heads_product_is_refused(tiny_model):
    model, _ = load_model(tiny_model, dtype="float32")
    check_plain_head(model, "sft.loss_chunk")  # a plain head passes
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match=r"rl.logprob_chunk: .*final_logit_softcapping.*set rl.logprob_chunk: 0"):
        check_plain_head(model, "rl.logprob_chunk")
