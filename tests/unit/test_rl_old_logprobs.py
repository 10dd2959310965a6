"""The PPO ratio's old log-probs: the sampler's, or the learner's own before the step's update
(rl.old_logprobs), for samplers whose log-probs are not the policy's (a grammar-masked vLLM)."""

import math
import random
from types import SimpleNamespace

import pytest
import torch

from rayalign.config import load_config
from rayalign.models import resolve_model
from rayalign.rl.batch import pad_experiences, reference_logprobs
from rayalign.rl.learn import behaviour_from_learner, learn
from rayalign.rl.reference import load_reference
from rayalign.types import Experience

GAP = 0.5
"""How much higher the sampler's log-probs are than the policy's (log 1/Z of a grammar mask)."""


class _SGDLearner:
    """The learner interface learn() drives: run each micro-step, backward, one optimizer step."""

    def __init__(self, model):
        self.model, self.device = model, torch.device("cpu")
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)

    def train_step(self, steps, lr):
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        for step in steps:
            step(self.model).backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return 0.0


def _run(tiny_model, *overrides):
    path = str(resolve_model(tiny_model))
    model = load_reference(path, "cpu").train()
    for p in model.parameters():
        p.requires_grad_(True)
    rng = random.Random(0)
    bare = []
    for i in range(8):
        prompt = tuple(rng.randrange(3, model.config.vocab_size) for _ in range(5))
        tokens = tuple(rng.randrange(3, model.config.vocab_size) for _ in range(6))
        bare.append(Experience(f"p{i}", prompt, tokens, (0.0,) * 6, 1.0 if i % 2 else -1.0, 1.0))
    # The sampler's log-probs: the policy's own, raised by GAP on every token.
    policy = reference_logprobs(model, pad_experiences(bare, 0), "cpu")
    experiences = [
        Experience(e.prompt_id, e.prompt_token_ids, e.token_ids, tuple(x + GAP for x in policy[j, :6].tolist()),
                   e.advantage, e.reward)
        for j, e in enumerate(bare)
    ]  # fmt: skip
    cfg = load_config(None, ["--rl.micro_batch_size=4", "--rl.kl_coef=0", *overrides])
    job = SimpleNamespace(cfg=cfg, pad_id=0, bf16=False)
    return learn(_SGDLearner(model), load_reference(path, "cpu"), job, experiences, 1e-2, 0, 1)


def test_auto_takes_the_learners_log_probs_only_under_a_format_grammar():
    cfg = load_config(None)
    assert not behaviour_from_learner(cfg.rl)
    assert behaviour_from_learner(load_config(None, ["--rl.enforce_format=true"]).rl)
    assert not behaviour_from_learner(load_config(None, ["--rl.enforce_format=true", "--rl.old_logprobs=sampler"]).rl)
    assert behaviour_from_learner(load_config(None, ["--rl.old_logprobs=learner"]).rl)


def test_the_learners_own_log_probs_give_ratio_one_and_the_gap_is_reported(tiny_model):
    stats = _run(tiny_model, "--rl.old_logprobs=learner")
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-6) and stats.clip_fraction == 0.0
    assert stats.sampler_ratio_mean == pytest.approx(math.exp(-GAP), rel=1e-4)


def test_the_samplers_log_probs_carry_the_gap_into_the_ratio(tiny_model):
    stats = _run(tiny_model, "--rl.old_logprobs=sampler")
    assert stats.ratio_mean == pytest.approx(math.exp(-GAP), rel=1e-4)
    assert stats.clip_fraction == 0.5  # ratio 0.61 < 0.8: the negative-advantage half lose their gradient


def test_later_epochs_keep_the_first_epochs_log_probs(tiny_model):
    stats = _run(tiny_model, "--rl.old_logprobs=learner", "--rl.epochs_per_step=2")
    # epoch 1 at ratio 1 exactly, epoch 2 after an update: the mean moves off 1
    assert stats.ratio_mean != pytest.approx(1.0, abs=1e-6)
    assert abs(stats.ratio_mean - 1.0) < 0.5
