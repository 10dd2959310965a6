"""Stage-2 RL math: reward shaping, group advantages, clipped loss with k3 KL.

Every expected number is worked out by hand in the comment beside it.
"""

import math

import pytest
import torch

from rayalign.rl.advantage import group_advantages
from rayalign.rl.loss import policy_loss
from rayalign.rl.reward import RewardShaping, reward_tensors, shape_reward, shape_rollout_reward
from rayalign.types import Completion, Rollout, Verdict

OK8 = Verdict(status="ok", score=8.0)
UNSCORABLE = Verdict(status="unscorable", score=None, explanation="judge timed out")


def _all_valid(n: int) -> torch.Tensor:
    return torch.ones(n, dtype=torch.bool)


def _t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------ reward


def test_reward_is_scaled_judge_score():
    # 7 * 0.1 = 0.7
    assert shape_reward(Verdict(status="ok", score=7.0), None, 10, 256, RewardShaping()) == pytest.approx(0.7)


def test_reward_length_term():
    # 8 * 0.1 - 0.5 * 64 / 256 = 0.8 - 0.125 = 0.675
    shaping = RewardShaping(length_coef=0.5)
    assert shape_reward(OK8, None, 64, 256, shaping) == pytest.approx(0.675)


def test_malformed_gets_penalty_whatever_the_verdict():
    # malformed: the verdict is not used; -1.0 - 0.5 * 256 / 256 = -1.5
    assert shape_reward(OK8, "no_answer", 10, 256, RewardShaping()) == -1.0
    assert shape_reward(None, "truncated", 10, 256, RewardShaping()) == -1.0
    assert shape_reward(OK8, "no_answer", 256, 256, RewardShaping(length_coef=0.5)) == pytest.approx(-1.5)
    assert shape_reward(OK8, "no_answer", 0, 256, RewardShaping(malformed_penalty=-2.0)) == -2.0


def test_truncated_excluded_under_overlong_filtering_other_malformed_still_penalised():
    shaping = RewardShaping(exclude_truncated=True)
    assert shape_reward(OK8, "truncated", 256, 256, shaping) is None
    assert shape_reward(None, "truncated", 256, 256, shaping) is None
    assert shape_reward(OK8, "no_answer", 10, 256, shaping) == -1.0
    # the reason a penalty can teach over-refusal: a benign refusal (cascade score 0) outranks a cut answer
    assert shape_reward(Verdict(status="ok", score=0.0), None, 12, 256, RewardShaping()) == 0.0
    assert shape_reward(None, "truncated", 256, 256, RewardShaping()) == -1.0


def test_soft_overlong_punishment_ramps_over_the_buffer_only():
    # buffer 64, penalty 0.5, limit 256: window 192-256
    shaping = RewardShaping(overlong_buffer=64, overlong_penalty=0.5)
    assert shape_reward(OK8, None, 192, 256, shaping) == pytest.approx(0.8)  # before the window: untouched
    assert shape_reward(OK8, None, 208, 256, shaping) == pytest.approx(0.8 - 0.5 * 16 / 64)  # 0.675
    assert shape_reward(OK8, None, 255, 256, shaping) == pytest.approx(0.8 - 0.5 * 63 / 64)
    # a right answer ending near the limit still outranks a benign refusal (score 0)
    assert shape_reward(OK8, None, 255, 256, shaping) > shape_reward(
        Verdict(status="ok", score=0.0), None, 12, 256, shaping
    )
    # under overlong filtering a cut completion stays out of the update
    cut = RewardShaping(overlong_buffer=64, overlong_penalty=0.5, exclude_truncated=True)
    assert shape_reward(None, "truncated", 256, 256, cut) is None
    # penalised truncation: the malformed penalty plus the whole ramp, -1.0 - 0.5
    assert shape_reward(None, "truncated", 256, 256, shaping) == pytest.approx(-1.5)
    # a buffer past the limit spreads the ramp over the whole length: 128 of 256 lose 0.5 * 128 / 256
    assert shape_reward(OK8, None, 128, 256, RewardShaping(overlong_buffer=512, overlong_penalty=0.5)) == pytest.approx(
        0.55
    )


def test_unscorable_or_missing_verdict_gives_no_reward_not_zero():
    assert shape_reward(UNSCORABLE, None, 10, 256, RewardShaping()) is None
    assert shape_reward(None, None, 10, 256, RewardShaping()) is None


def test_ok_verdict_without_score_is_an_error():
    with pytest.raises(ValueError, match="verdict.score"):
        shape_reward(Verdict(status="ok", score=None), None, 10, 256, RewardShaping())


def test_reward_rejects_bad_token_counts():
    with pytest.raises(ValueError, match="max_new_tokens"):
        shape_reward(OK8, None, 10, 0, RewardShaping())
    with pytest.raises(ValueError, match="n_tokens"):
        shape_reward(OK8, None, -1, 256, RewardShaping())


def test_rollout_reward_uses_token_count_and_malformed_flag():
    rollout = Rollout("p1", 0, "x", (1,), tuple(range(128)), (-0.1,) * 128, "stop")
    good = Completion(reasoning="r", answer="a")
    bad = Completion(reasoning="r", answer="", malformed="no_answer")
    shaping = RewardShaping(length_coef=1.0)
    # 8 * 0.1 - 1.0 * 128 / 256 = 0.3
    assert shape_rollout_reward(rollout, good, OK8, 256, shaping) == pytest.approx(0.3)
    # -1.0 - 0.5 = -1.5
    assert shape_rollout_reward(rollout, bad, OK8, 256, shaping) == pytest.approx(-1.5)


def test_reward_tensors_mark_none_invalid_with_nan():
    values, valid = reward_tensors([0.7, None, -1.0])
    assert valid.tolist() == [True, False, True]
    assert values[0].item() == pytest.approx(0.7)
    assert math.isnan(values[1].item())
    assert values[2].item() == -1.0


# --------------------------------------------------------------- advantage


def test_grpo_two_groups_of_two():
    # group {1, 0}: mean 0.5, population std 0.5 -> (1-0.5)/0.5 = 1, -1
    # group {0, 1}: -1, 1  (an unbiased std would give +-0.707 instead)
    adv = group_advantages(_t(1, 0, 0, 1), _all_valid(4), 2, method="grpo")
    assert adv.tolist() == pytest.approx([1, -1, -1, 1], abs=1e-5)


def test_grpo_group_of_three():
    # mean 2, population std sqrt((1 + 0 + 1) / 3) = 0.816497 -> -1/0.816497 = -1.224745
    adv = group_advantages(_t(1, 2, 3), _all_valid(3), 3, method="grpo")
    assert adv.tolist() == pytest.approx([-1.224745, 0.0, 1.224745], abs=1e-5)


@pytest.mark.parametrize("invalid_reward", [100.0, math.nan])
def test_grpo_invalid_member_is_zero_and_outside_the_statistics(invalid_reward):
    # valid {1, 0}: mean 0.5, std 0.5 -> 1, -1; the invalid reward must not move them
    rewards = _t(1, 0, invalid_reward)
    valid = torch.tensor([True, True, False])
    adv = group_advantages(rewards, valid, 3, method="grpo")
    assert adv.tolist() == pytest.approx([1, -1, 0], abs=1e-5)


def test_rloo_leave_one_out_baseline():
    # 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    adv = group_advantages(_t(1, 2, 3), _all_valid(3), 3, method="rloo")
    assert adv.tolist() == pytest.approx([-1.5, 0.0, 1.5])


def test_rloo_invalid_member_is_zero_and_outside_the_baseline():
    # valid {1, 3}: 1 - 3 = -2, 3 - 1 = 2; the invalid 5 is nobody's baseline
    valid = torch.tensor([True, False, True])
    adv = group_advantages(_t(1, 5, 3), valid, 3, method="rloo")
    assert adv.tolist() == pytest.approx([-2.0, 0.0, 2.0])


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_all_equal_group_gets_zero(method):
    # mean 0.7 up to rounding (2.8 / 4 may be off by one ulp)
    adv = group_advantages(_t(0.7, 0.7, 0.7, 0.7), _all_valid(4), 4, method=method)
    assert adv.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-9)


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_groups_with_fewer_than_two_valid_get_zero(method):
    # group 0: one valid member -> no baseline; group 1: none valid
    valid = torch.tensor([True, False, False, False])
    adv = group_advantages(_t(1, 0, 1, 0), valid, 2, method=method)
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_groups_do_not_mix(method):
    # group {1, 0} -> +-1 for both methods (rloo: 1 - 0, 0 - 1); group {5, 5} -> 0
    adv = group_advantages(_t(1, 0, 5, 5), _all_valid(4), 2, method=method)
    assert adv.tolist() == pytest.approx([1, -1, 0, 0], abs=1e-5)


def test_advantage_input_errors():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(_t(1, 2, 3), _all_valid(3), 2, method="grpo")
    with pytest.raises(ValueError, match="valid"):
        group_advantages(_t(1, 2), torch.ones(2), 2, method="grpo")
    with pytest.raises(ValueError, match="method"):
        group_advantages(_t(1, 2), _all_valid(2), 2, method="ppo")
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(_t(1, math.nan), _all_valid(2), 2, method="grpo")


# -------------------------------------------------------------------- loss


def _loss(logp, adv, *, old=None, ref=None, mask=None, clip_eps=0.2, kl_coef=0.0, **kw):
    old = logp.detach().clone() if old is None else old
    ref = logp.detach().clone() if ref is None else ref
    mask = torch.ones_like(logp) if mask is None else mask
    return policy_loss(logp, old, ref, adv, mask, clip_eps=clip_eps, kl_coef=kl_coef, **kw)


def test_on_policy_surrogate_is_advantage():
    # ratio 1, A = 2: min(2, 2) = 2 -> loss -2
    out = _loss(_t([-1.0]), _t(2.0))
    assert out.loss.item() == pytest.approx(-2.0)
    assert (out.ratio_mean, out.clip_fraction, out.kl) == (1.0, 0.0, 0.0)


def test_positive_advantage_clips_high_ratio():
    # ratio e^0.5 = 1.648721 > 1.2, A = 1: min(1.648721, 1.2) = 1.2 -> loss -1.2
    out = _loss(_t([0.0]), _t(1.0), old=_t([-0.5]))
    assert out.loss.item() == pytest.approx(-1.2)
    assert out.clip_fraction == 1.0
    assert out.ratio_mean == pytest.approx(1.648721)


def test_negative_advantage_takes_the_other_side():
    # A = -1, ratio e^0.5: min(-1.648721, -1.2) = -1.648721, unclipped -> loss 1.648721
    out = _loss(_t([0.0]), _t(-1.0), old=_t([-0.5]))
    assert out.loss.item() == pytest.approx(1.648721)
    assert out.clip_fraction == 0.0
    # A = -1, ratio e^-0.5 = 0.606531 < 0.8: min(-0.606531, -0.8) = -0.8, clipped -> loss 0.8
    out = _loss(_t([0.0]), _t(-1.0), old=_t([0.5]))
    assert out.loss.item() == pytest.approx(0.8)
    assert out.clip_fraction == 1.0
    # A = +1, ratio e^-0.5: min(0.606531, 0.8) = 0.606531, unclipped -> loss -0.606531
    out = _loss(_t([0.0]), _t(1.0), old=_t([0.5]))
    assert out.loss.item() == pytest.approx(-0.606531)
    assert out.clip_fraction == 0.0


def test_k3_kl_value():
    # ref - logp = 0.1: e^0.1 - 0.1 - 1 = 0.00517092; A = 0, kl_coef 0.5 -> loss 0.00258546
    out = _loss(_t([-1.0]), _t(0.0), ref=_t([-0.9]), kl_coef=0.5)
    assert out.kl == pytest.approx(0.00517092, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.00258546, rel=1e-5)
    # ref - logp = -0.1: e^-0.1 + 0.1 - 1 = 0.00483742, still >= 0
    out = _loss(_t([-1.0]), _t(0.0), ref=_t([-1.1]), kl_coef=0.5)
    assert out.kl == pytest.approx(0.00483742, rel=1e-5)


def test_masked_tokens_do_not_contribute():
    # row 0: one valid token, ratio 1, A = 1 -> -1; row 1: tokens 0-1 valid, A = 3 -> -3
    # The padding holds -inf / huge values that would be NaN or inf if used.
    logp = _t([-1.0, -math.inf], [-0.5, -0.2])
    old = _t([-1.0, 0.0], [-0.5, -0.2])
    ref = _t([-1.0, 50.0], [-0.5, -0.2])
    mask = _t([1, 0], [1, 1])
    out = policy_loss(logp, old, ref, _t(1.0, 3.0), mask, clip_eps=0.2, kl_coef=1.0)
    # seq_mean: (-1 + -3) / 2 = -2
    assert out.loss.item() == pytest.approx(-2.0)
    assert out.kl == 0.0 and out.ratio_mean == 1.0


def test_seq_mean_and_token_mean_differ_on_unequal_lengths():
    # on-policy; row 0: 1 token with A = 3 -> -3; row 1: 3 tokens with A = 1 -> -1 each
    logp = _t([-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0])
    mask = _t([1, 0, 0], [1, 1, 1])
    adv = _t(3.0, 1.0)
    # seq_mean: mean(-3, mean(-1, -1, -1)) = -2
    assert _loss(logp, adv, mask=mask).loss.item() == pytest.approx(-2.0)
    # token_mean: (-3 - 1 - 1 - 1) / 4 = -1.5
    assert _loss(logp, adv, mask=mask, aggregate="token_mean").loss.item() == pytest.approx(-1.5)


def test_seq_mean_skips_sequences_without_tokens():
    # row 0: 2 tokens, A = 1 -> -1; row 1: no valid token -> left out (not averaged as 0)
    logp = torch.zeros(2, 2, dtype=torch.float64)
    mask = _t([1, 1], [0, 0])
    assert _loss(logp, _t(1.0, 5.0), mask=mask).loss.item() == pytest.approx(-1.0)


def test_empty_batch_gives_zero_loss_that_backpropagates():
    logp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    out = _loss(logp, _t(1.0, 1.0), mask=torch.zeros(2, 2))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert logp.grad.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_on_policy_gradient_is_minus_advantage_over_length():
    # loss = mean_b mean_t(-exp(logp - old) * A_b); at logp = old,
    # d loss / d logp_bt = -A_b / (len_b * n_seqs)
    # row 0: len 2, A = 1 -> -1 / (2 * 2) = -0.25; row 1: len 4, A = -2 -> 2 / (4 * 2) = 0.25
    logp = torch.full((2, 4), -1.0, dtype=torch.float64, requires_grad=True)
    old = torch.full((2, 4), -1.0, dtype=torch.float64, requires_grad=True)
    ref = torch.full((2, 4), -1.0, dtype=torch.float64, requires_grad=True)
    mask = _t([1, 1, 0, 0], [1, 1, 1, 1])
    out = policy_loss(logp, old, ref, _t(1.0, -2.0), mask, clip_eps=0.2, kl_coef=0.0)
    out.loss.backward()
    torch.testing.assert_close(logp.grad, _t([-0.25, -0.25, 0, 0], [0.25, 0.25, 0.25, 0.25]))
    # old and ref are constants: no gradient reaches them
    assert old.grad is None and ref.grad is None


def test_on_policy_gradient_token_mean():
    # token_mean over 6 tokens: d/d logp_bt = -A_b / 6 -> -1/6 on row 0, 2/6 on row 1
    logp = torch.full((2, 4), -1.0, dtype=torch.float64, requires_grad=True)
    mask = _t([1, 1, 0, 0], [1, 1, 1, 1])
    _loss(logp, _t(1.0, -2.0), mask=mask, aggregate="token_mean").loss.backward()
    torch.testing.assert_close(logp.grad, _t([-1 / 6, -1 / 6, 0, 0], [1 / 3, 1 / 3, 1 / 3, 1 / 3]))


def test_single_sequence_gradient_is_minus_advantage_over_length():
    # one sequence, 3 valid tokens of 4, A = 2: -2 / 3 on each valid token
    logp = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    _loss(logp, _t(2.0), mask=_t([1, 1, 1, 0])).loss.backward()
    torch.testing.assert_close(logp.grad, _t([-2 / 3, -2 / 3, -2 / 3, 0]))


def test_clipped_token_gets_no_policy_gradient():
    # A = 1, ratio e^0.5 > 1.2: the surrogate is the constant 1.2 -> gradient 0
    logp = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    _loss(logp, _t(1.0), old=_t([-0.5])).loss.backward()
    assert logp.grad.item() == 0.0


def test_kl_gradient():
    # d/d logp [e^(ref-logp) - (ref-logp) - 1] = 1 - e^(ref-logp)
    # ref - logp = 0.1, A = 0, kl_coef 0.5: 0.5 * (1 - 1.105171) = -0.0525855
    logp = torch.full((1, 1), -1.0, dtype=torch.float64, requires_grad=True)
    _loss(logp, _t(0.0), ref=_t([-0.9]), kl_coef=0.5).loss.backward()
    assert logp.grad.item() == pytest.approx(-0.0525855, rel=1e-5)


def test_ratio_mean_over_valid_tokens():
    # ratios 1 and e^0.5 on valid tokens, padding ratio ignored: (1 + 1.648721) / 2 = 1.324361
    logp = _t([0.0, 0.0, 3.0])
    old = _t([0.0, -0.5, 0.0])
    out = _loss(logp, _t(0.0), old=old, mask=_t([1, 1, 0]))
    assert out.ratio_mean == pytest.approx(1.324361)
    # A = 0: both terms are 0, so nothing counts as clipped
    assert out.clip_fraction == 0.0


def test_loss_input_errors():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="mask"):
        policy_loss(logp, logp, logp, torch.zeros(2), torch.ones(2, 2), clip_eps=0.2, kl_coef=0.0)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logp, logp, logp, torch.zeros(3), torch.ones(2, 3), clip_eps=0.2, kl_coef=0.0)
    with pytest.raises(ValueError, match="aggregate"):
        _loss(logp, torch.zeros(2), aggregate="sum")
    with pytest.raises(ValueError, match="clip_eps"):
        _loss(logp, torch.zeros(2), clip_eps=0.0)
