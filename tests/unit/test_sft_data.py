"""SFT data: reading, loss masks, packing, batches, step sharding, LR schedule."""

import copy
import json
import math

import pytest
import torch

from rayalign.models import load_model, load_tokenizer
from rayalign.sft.data import (
    IGNORE_INDEX,
    SFTDataError,
    build_rows,
    collate,
    fit_length,
    loss_sum,
    lr_factor,
    pack,
    prefer_flat,
    read_sft_examples,
    scored_positions,
    step_rows,
    steps_per_epoch,
    tokenize_example,
)
from rayalign.types import Message, Prompt, SFTExample, to_json


def _example(question="How do I kill a process?", reasoning="rule A1 allows it", answer="Run kill.", system=None):
    messages = ((Message("system", system),) if system else ()) + (Message("user", question),)
    return SFTExample(prompt=Prompt(id="p1", messages=messages), reasoning=reasoning, answer=answer)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


# ------------------------------------------------------------------ reading


def test_read_round_trips_examples_and_skips_blank_lines(tmp_path):
    path = tmp_path / "sft.jsonl"
    examples = [_example(), _example("Why is the sky blue?", "benign", "Rayleigh scattering.", system="Be brief.")]
    path.write_text(to_json(examples[0]) + "\n\n" + to_json(examples[1]) + "\n")
    assert read_sft_examples(path) == examples


@pytest.mark.parametrize(
    "line, where",
    [
        ("{not json", "sft.jsonl:2: not valid JSON"),
        (
            json.dumps({"prompt": {"id": "x", "messages": [{"role": "user", "content": "q"}]}, "reasoning": "r"}),
            "sft.jsonl:2: answer: missing",
        ),
        (
            json.dumps(
                {
                    "prompt": {"id": "x", "messages": [{"role": "assistant", "content": "q"}]},
                    "reasoning": "r",
                    "answer": "a",
                }
            ),
            "sft.jsonl:2: prompt.messages: the conversation must end on a user turn",
        ),
        (
            json.dumps(
                {"prompt": {"id": "x", "messages": [{"role": "bot", "content": "q"}]}, "reasoning": "r", "answer": "a"}
            ),
            "sft.jsonl:2: prompt.messages[0].role: role must be",
        ),
    ],
)
def test_read_errors_name_file_line_and_field(tmp_path, line, where):
    path = tmp_path / "sft.jsonl"
    path.write_text(to_json(_example()) + "\n" + line + "\n")
    with pytest.raises(SFTDataError) as err:
        read_sft_examples(path)
    assert str(err.value).startswith(str(tmp_path / where))


# --------------------------------------------------------------- loss mask


def test_only_the_completion_and_end_of_turn_carry_loss(tokenizer):
    example = _example(system="Be brief.")
    ids, labels = tokenize_example(tokenizer, example)
    assert len(ids) == len(labels)
    first = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    # Everything before the first labelled token is exactly the generation prompt.
    prompt_text = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow do I kill a process?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tokenizer.decode(ids[:first]) == prompt_text
    assert all(x == IGNORE_INDEX for x in labels[:first])
    # Everything from there on is labelled with its own id, and is the completion
    # plus the end-of-turn token; the template's trailing newline is not kept.
    assert labels[first:] == ids[first:]
    assert tokenizer.decode(ids[first:]) == "<think>\nrule A1 allows it\n</think>\nRun kill.<|im_end|>"
    assert ids[-1] == tokenizer.eos_token_id


def test_a_template_whose_generation_prompt_is_not_a_prefix_is_refused(tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT>' }}{% endif %}"
    )
    with pytest.raises(SFTDataError, match="not a token prefix"):
        tokenize_example(broken, _example())


# ------------------------------------------------------------ rows, batches


def _seq(n, prompt):
    ids = list(range(10, 10 + n))
    return ids, [IGNORE_INDEX] * prompt + ids[prompt:]


def test_fit_length_cuts_long_examples_and_drops_those_left_without_loss():
    fit = fit_length([_seq(3, 1), _seq(7, 2), _seq(8, 6)], 5)
    assert [len(ids) for ids, _ in fit.sequences] == [3, 5]
    assert fit.sequences[1][1] == [IGNORE_INDEX, IGNORE_INDEX, 12, 13, 14]
    assert (fit.truncated, fit.dropped) == (2, 1)


def test_pack_layout_by_hand():
    a, b, c = _seq(3, 1), _seq(2, 1), _seq(4, 2)
    rows = pack([a, b, c], 5)
    assert [r.input_ids for r in rows] == [(10, 11, 12, 10, 11), (10, 11, 12, 13)]
    assert [r.position_ids for r in rows] == [(0, 1, 2, 0, 1), (0, 1, 2, 3)]
    assert rows[0].labels == (IGNORE_INDEX, 11, 12, IGNORE_INDEX, 11)
    with pytest.raises(ValueError, match="fit_length"):
        pack([_seq(6, 1)], 5)


def test_collate_pads_with_an_ignored_segment_of_its_own():
    rows = pack([_seq(3, 1), _seq(2, 1), _seq(4, 2)], 5)
    batch = collate(rows, pad_id=0)
    assert batch.input_ids.tolist() == [[10, 11, 12, 10, 11], [10, 11, 12, 13, 0]]
    assert batch.labels[1].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 12, 13, IGNORE_INDEX]
    assert batch.position_ids[1].tolist() == [0, 1, 2, 3, 0]
    assert batch.num_tokens == 9


def test_build_rows_counts_what_happened(tokenizer):
    short, long = _example(answer="Ok."), _example(answer="word " * 400)
    rows, stats = build_rows(tokenizer, [short, short, long], max_seq_len=64, packing=True)
    assert (stats.examples, stats.truncated, stats.dropped) == (3, 1, 0)
    assert all(len(r) <= 64 for r in rows)
    assert stats.tokens == sum(len(r) for r in rows)
    unpacked, stats = build_rows(tokenizer, [short, short], max_seq_len=64, packing=False)
    assert stats.rows == len(unpacked) == 2


# ------------------------------------------------------- packed == alone


def _completion_losses(model, rows):
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    return logits, batch


def test_a_packed_example_has_the_same_loss_as_alone(tokenizer, tiny_model):
    model, _ = load_model(tiny_model, dtype="float32")
    a = tokenize_example(tokenizer, _example())
    b = tokenize_example(tokenizer, _example("Why is the sky blue?", "benign", "Rayleigh scattering."))
    packed = pack([a, b], 512)
    assert len(packed) == 1
    cut = len(a[0])
    logits, batch = _completion_losses(model, packed)
    a_packed, _ = loss_sum(logits[:, :cut], batch.labels[:, :cut])
    b_packed, n_b = loss_sum(logits[:, cut:], batch.labels[:, cut:])
    alone_logits, alone = _completion_losses(model, pack([a], 512) + pack([b], 512))
    a_alone, _ = loss_sum(alone_logits[:1], alone.labels[:1])
    b_alone, _ = loss_sum(alone_logits[1:, : len(b[0])], alone.labels[1:, : len(b[0])])
    assert float(a_packed) == pytest.approx(float(a_alone), rel=1e-5)
    assert float(b_packed) == pytest.approx(float(b_alone), rel=1e-5)
    assert n_b == sum(x != IGNORE_INDEX for x in b[1])
    # Control: without restarting positions, b sees a and its loss changes.
    with torch.no_grad():
        leaky = model(input_ids=batch.input_ids, use_cache=False).logits
    b_leaky, _ = loss_sum(leaky[:, cut:], batch.labels[:, cut:])
    assert abs(float(b_leaky) - float(b_alone)) > 1e-3


def test_a_padding_free_micro_batch_has_the_same_loss_as_padded_rows(tokenizer, tiny_model):
    model, _ = load_model(tiny_model, dtype="float32")
    rows = [pack([tokenize_example(tokenizer, _example(answer="Ok." * k))], 512)[0] for k in (1, 5, 9)]
    padded, flat = collate(rows, pad_id=0), collate(rows, pad_id=0, flat=True)
    assert flat.input_ids.shape == (1, sum(len(r) for r in rows)) and padded.input_ids.shape == (3, len(rows[2]))
    totals = []
    for batch in (padded, flat):
        with torch.no_grad():
            logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
        totals.append(loss_sum(logits, batch.labels))
    assert totals[0][1] == totals[1][1]
    assert float(totals[0][0]) == pytest.approx(float(totals[1][0]), rel=1e-5)


def test_padding_free_is_chosen_when_it_computes_less():
    # 4 rows of 100, 10, 10, 10 at scale 1000: padded 4*100*1.1 = 440 > flat 130*1.13 = 146.9
    assert prefer_flat([100, 10, 10, 10], 1000)
    # 4 full rows of 100: padded 440 < flat 400 * 1.4 = 560
    assert not prefer_flat([100, 100, 100, 100], 1000)


def test_loss_sum_by_hand():
    # Two tokens predicted with uniform logits over 4 classes: 2 * ln 4.
    logits = torch.zeros(1, 3, 4)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    total, count = loss_sum(logits, labels)
    assert count == 2
    assert float(total) == pytest.approx(2 * 1.3862944, rel=1e-6)


def test_loss_sum_on_kept_positions_by_hand():
    # Positions 0 and 1 predict labels 1 and 2 (position 2 predicts nothing): logits only there.
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    positions = scored_positions(labels)
    assert positions.tolist() == [0, 1]
    logits = torch.zeros(1, 2, 4)
    logits[0, 0, 1] = math.log(3.0)  # p(1) = 3 / (3 + 1 + 1 + 1) = 0.5 at position 0
    total, count = loss_sum(logits, labels, positions)
    assert count == 2
    assert float(total) == pytest.approx(math.log(2.0) + math.log(4.0), rel=1e-6)


def test_logits_at_scored_positions_give_the_full_forwards_loss_and_gradients(tokenizer, tiny_model):
    """What the SFT learner trains with (logits_to_keep): the same loss and the same gradients, padded or flat."""
    rows = [pack([tokenize_example(tokenizer, _example(answer="Ok." * k))], 512)[0] for k in (1, 5, 9)]
    for batch in (collate(rows, pad_id=0), collate(rows, pad_id=0, flat=True)):
        results = []
        for keep in (False, True):
            model, _ = load_model(tiny_model, dtype="float32")
            positions = scored_positions(batch.labels) if keep else None
            extra = {"logits_to_keep": positions} if keep else {}
            out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **extra)
            total, count = loss_sum(out.logits, batch.labels, positions)
            total.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            results.append((float(total.detach()), count, grads, out.logits.shape[1]))
        (full, n_full, g_full, t_full), (kept, n_kept, g_kept, t_kept) = results
        assert n_full == n_kept and kept == pytest.approx(full, rel=1e-5)
        assert t_kept < t_full  # the prompts' positions were never projected onto the vocabulary
        for name, g in g_full.items():
            assert torch.allclose(g, g_kept[name], rtol=1e-4, atol=1e-6), name


# --------------------------------------------------- steps and schedule


def test_each_epoch_visits_every_row_once_across_workers():
    kwargs = dict(world_size=2, micro_batch_size=2, grad_accum=2, seed=7)
    spe = steps_per_epoch(16, 2 * 2 * 2)
    assert spe == 2
    for epoch in range(2):
        seen = [
            i
            for step in range(epoch * spe, (epoch + 1) * spe)
            for rank in range(2)
            for mb in step_rows(16, step, rank=rank, **kwargs)
            for i in mb
        ]
        assert sorted(seen) == list(range(16))
    first = [step_rows(16, s, rank=0, **kwargs) for s in range(2)]
    second = [step_rows(16, s, rank=0, **kwargs) for s in range(2, 4)]
    assert first != second  # reshuffled each epoch
    assert first == [step_rows(16, s, rank=0, **kwargs) for s in range(2)]  # and reproducibly


def test_the_last_step_of_an_epoch_wraps_around_to_its_first_rows():
    kwargs = dict(world_size=2, micro_batch_size=2, grad_accum=1, seed=0)
    assert steps_per_epoch(6, 4) == 2
    last = [i for rank in range(2) for mb in step_rows(6, 1, rank=rank, **kwargs) for i in mb]
    first = [i for rank in range(2) for mb in step_rows(6, 0, rank=rank, **kwargs) for i in mb]
    assert len(last) == 4
    assert len(set(last) - set(first)) == 2 and len(set(last) & set(first)) == 2


def test_lr_warms_up_linearly_then_decays_on_a_cosine():
    # warm-up 4: 1/4, 2/4, 3/4, 4/4; then cosine over the 4 remaining steps:
    # 0.5 * (1 + cos(pi * k / 4)) for k = 0..3 = 1, 0.8536, 0.5, 0.1464
    got = [lr_factor(s, 4, 8) for s in range(8)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 0.853553, 0.5, 0.146447], abs=1e-6)
    assert lr_factor(0, 0, 1) == 1.0
