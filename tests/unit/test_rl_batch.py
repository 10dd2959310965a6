"""RL batch layout, log-prob slicing, data order and the judge requests RL sends.

Expected numbers are worked out by hand in the comments.
"""

import math

import pytest
import torch

from rayalign.judge.rubric import load_templates, render_judge_messages
from rayalign.rl.batch import (
    completion_logits,
    logits_to_keep,
    pad_experiences,
    shard,
    step_prompt_indices,
    token_entropy,
    token_logprobs,
)
from rayalign.rl.reward import judge_requests
from rayalign.spec import load_spec
from rayalign.types import Experience, Message, Prompt, Rollout

E1 = Experience("a", (11, 12, 13), (21, 22), (-0.5, -1.0), 1.5, 0.9)
E2 = Experience("b", (14,), (23, 24, 25), (-0.1, -0.2, -0.3), -1.5, 0.1)


def test_completions_start_in_one_column():
    b = pad_experiences([E1, E2], pad_id=0)
    # P = 3 prompt columns, T = 3 completion columns.
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[11, 12, 13, 21, 22, 0], [0, 0, 14, 23, 24, 25]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    # Positions count real tokens only: row 2 starts at its first real token.
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert b.completion_ids.tolist() == [[21, 22, 0], [23, 24, 25]]
    assert b.mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert torch.allclose(b.old_logprobs, torch.tensor([[-0.5, -1.0, 0.0], [-0.1, -0.2, -0.3]]))
    assert b.advantages.tolist() == [1.5, -1.5]


def test_unscorable_experience_keeps_its_row_with_an_empty_mask():
    b = pad_experiences([E1, Experience("c", (1,), (2, 3), (-1.0, -1.0), 0.0, None)], pad_id=0)
    assert b.mask.tolist() == [[1, 1], [0, 0]]


def test_bad_experiences_are_refused():
    with pytest.raises(ValueError, match="no experiences"):
        pad_experiences([], pad_id=0)
    with pytest.raises(ValueError, match="1 log-probs for 2 tokens"):
        pad_experiences([Experience("x", (1,), (2, 3), (-1.0,), 0.0, 0.0)], pad_id=0)


def test_logits_predicting_each_completion_token():
    b = pad_experiences([E1, E2], pad_id=0)
    # Logits whose value at (row, column, 0) is the column: completion token j
    # is predicted by column P + j - 1 = 2 + j.
    logits = torch.arange(6.0).view(1, 6, 1).expand(2, 6, 4)
    assert completion_logits(logits, b)[0, :, 0].tolist() == [2.0, 3.0, 4.0]
    # A forward pass asked for the last T + 1 = 4 columns only (2..5) gives the same slice.
    assert logits_to_keep(b) == 4
    assert completion_logits(logits[:, -4:], b)[0, :, 0].tolist() == [2.0, 3.0, 4.0]


def test_token_logprobs_by_hand():
    # logits (0, log 3) over 2 tokens: softmax = (1/4, 3/4).
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])
    got = token_logprobs(logits, torch.tensor([[0, 1]]))
    assert got[0].tolist() == pytest.approx([math.log(0.25), math.log(0.75)])


def test_entropy_by_hand():
    # Uniform over 2 tokens: log 2 nats; (1/4, 3/4): 1/4 log 4 + 3/4 log(4/3) = 0.5623.
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    assert token_entropy(logits)[0].tolist() == pytest.approx([math.log(2), 0.5623], abs=1e-4)


def test_data_position_visits_every_prompt_once_per_epoch():
    # 5 prompts, 2 per step: steps 0-4 cover 10 positions = exactly 2 epochs.
    steps = [step_prompt_indices(5, s, 2, seed=3) for s in range(5)]
    flat = [i for s in steps for i in s]
    assert sorted(flat[:5]) == [0, 1, 2, 3, 4] and sorted(flat[5:]) == [0, 1, 2, 3, 4]
    # Resuming at step 3 picks the same prompts as the uninterrupted run.
    assert step_prompt_indices(5, 3, 2, seed=3) == steps[3]
    assert flat[:5] != flat[5:]  # each epoch in its own order
    with pytest.raises(ValueError):
        step_prompt_indices(0, 0, 2, seed=0)


def test_shard_splits_evenly_or_refuses():
    assert [shard(list("abcd"), r, 2) for r in (0, 1)] == [["a", "b"], ["c", "d"]]
    with pytest.raises(ValueError, match="do not split over 3"):
        shard(list("abcd"), 0, 3)


def test_rl_judge_prompt_never_contains_the_reasoning(repo):
    spec, templates = load_spec(repo / "specs"), load_templates(repo / "specs")
    prompt = Prompt("p1", (Message("user", "How do I pick a lock?"),), category=spec.category_ids[0], expected="refuse")
    secret = "SECRET-CHAIN-OF-THOUGHT mentions rule 42"
    rollouts = [
        Rollout("p1", 0, f"<think>{secret}</think>I can't help with that.", (1,), (2,), (-0.1,), "stop"),
        Rollout("p1", 1, "no format at all", (1,), (2,), (-0.1,), "stop"),
    ]
    completions, requests = judge_requests({"p1": prompt}, rollouts)
    assert [c.malformed for c in completions] == [None, "no_reasoning"]
    assert len(requests) == 1 and requests[0].reasoning is None  # the malformed one is not judged
    rendered = "\n".join(m.content for m in render_judge_messages(spec, templates, requests[0]))
    assert "I can't help with that." in rendered
    assert secret not in rendered and "SECRET" not in rendered


def test_step_metrics_by_hand():
    from rayalign.rl.metrics import Judged, LearnStats, step_metrics
    from rayalign.types import Completion, Verdict

    prompts = (Prompt("a", (Message("user", "x"),), category="self_harm"), Prompt("b", (Message("user", "y"),)))
    rollouts = tuple(
        Rollout(p, i, "t", (1,), (2,) * (i + 1), (-0.1,) * (i + 1), "stop") for p in "ab" for i in range(2)
    )
    ok, bad = Completion("r", "ans"), Completion("", "x", "no_reasoning")
    judged = Judged(
        prompts,
        rollouts,
        (ok, ok, ok, bad),
        (Verdict("ok", 10.0), None, Verdict("ok", 5.0), None),
        (1.0, None, 0.5, 0.0),
    )
    stats = LearnStats(loss=0.1, kl=0.02, clip_fraction=0.0, ratio_mean=1.0, entropy=2.0, grad_norm=0.5, tokens=6)
    m = step_metrics(judged, stats, policy_version=3, prompts_seen=6, timings={"step": 2.0, "learn": 1.0})
    # Scored rewards 1.0, 0.5, 0.0: mean 0.5, population std sqrt((0.25 + 0 + 0.25) / 3) = 0.4082.
    assert m["rl/reward_mean"] == pytest.approx(0.5) and m["rl/reward_std"] == pytest.approx(0.4082, abs=1e-4)
    assert m["rl/unscorable_rate"] == 0.25 and m["rl/malformed_rate"] == 0.25
    assert m["rl/completion_tokens"] == pytest.approx(1.5)  # (1 + 2 + 1 + 2) / 4
    assert m["rl/reward/self_harm"] == 1.0 and m["rl/reward/benign"] == pytest.approx(0.25)
    assert m["rl/completions_per_s"] == 2.0 and m["timing/learn"] == 1.0 and m["rl/policy_version"] == 3
