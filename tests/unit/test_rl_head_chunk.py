"""RL's log-probs with the LM head in chunks (rl.logprob_chunk): the loss, every gradient, the entropy
and the reference's log-probs of the whole-vocabulary forward, plain or LoRA, with padding on both sides."""

import random
from collections import defaultdict

import pytest
import torch

from rayalign.config import load_config
from rayalign.models import load_model, resolve_model, with_lora
from rayalign.rl.batch import pad_experiences, policy_logprobs, reference_logprobs
from rayalign.rl.learn import AdaptersOff, MicroBatch, micro_step
from rayalign.types import Experience


def _batch(vocab: int):
    rng = random.Random(0)
    experiences = []
    for i, (p, t) in enumerate([(3, 6), (5, 2), (4, 4)]):  # left- and right-padded rows
        prompt = tuple(rng.randrange(3, vocab) for _ in range(p))
        tokens = tuple(rng.randrange(3, vocab) for _ in range(t))
        experiences.append(Experience(f"p{i}", prompt, tokens, (-1.0,) * t, (1.0, -0.5, 2.0)[i], 1.0))
    return pad_experiences(experiences, 0)


def _step(model, reference, batch, chunk: int):
    """One micro-step's loss, the policy's gradients, the summed entropy and the reference log-probs."""
    r = load_config(None, [f"--rl.logprob_chunk={chunk}", "--rl.kl_coef=0.1"]).rl
    ref = reference_logprobs(reference, batch, "cpu", chunk=chunk)
    m = MicroBatch(batch, ref, batch.old_logprobs, weight=0.5)
    acc = defaultdict(float)
    loss = micro_step(m, r, acc)(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return float(loss.detach()), grads, acc["entropy"], ref


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_log_probs_give_the_whole_vocabulary_loss_gradients_entropy_and_reference(tiny_model, lora):
    torch.manual_seed(0)
    model, _ = load_model(str(resolve_model(tiny_model)), dtype="float32")
    if lora:
        model = with_lora(model, rank=4, alpha=8)
        reference = AdaptersOff(model)  # the reference is the policy with its adapters off
    else:
        reference, _ = load_model(str(resolve_model(tiny_model)), dtype="float32")
    batch = _batch(model.config.vocab_size)
    loss, grads, entropy, ref = _step(model, reference, batch, chunk=0)
    chunked_loss, chunked_grads, chunked_entropy, chunked_ref = _step(model, reference, batch, chunk=3)
    real = batch.mask > 0
    torch.testing.assert_close(chunked_ref[real], ref[real])
    assert (chunked_ref[~real] == 0).all()  # padding columns read 0 when chunked
    assert chunked_loss == pytest.approx(loss, rel=1e-5)
    assert chunked_entropy == pytest.approx(entropy, rel=1e-5) and entropy > 0
    assert chunked_grads.keys() == grads.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(chunked_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_padding_columns_are_left_out_and_real_ones_match(tiny_model):
    model, _ = load_model(str(resolve_model(tiny_model)), dtype="float32")
    batch = _batch(model.config.vocab_size)
    with torch.no_grad():
        whole, whole_entropy = policy_logprobs(model, batch, "cpu")
        chunked, chunked_entropy = policy_logprobs(model, batch, "cpu", chunk=2)
    real = batch.attention_mask[:, batch.prompt_len :] > 0
    assert real.sum(-1).tolist() == [6, 2, 4]
    torch.testing.assert_close(chunked[real], whole[real])
    torch.testing.assert_close(chunked_entropy[real], whole_entropy[real])
    assert (chunked[~real] == 0).all() and (chunked_entropy[~real] == 0).all()
