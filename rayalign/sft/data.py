"""SFT data: JSONL of ``SFTExample`` -> token ids with a loss mask -> rows -> batches,
and which rows each worker trains on at each step.

Pure: torch and a tokenizer only (no Ray), so every rule is unit-tested.

- The target is the chat template applied to the conversation plus one
  assistant turn holding ``join_completion(reasoning, answer)``. Loss falls on
  that turn's content and its end-of-turn token only.
- Packing puts several examples back to back in one row, with position ids
  restarting at 0 for each. transformers (5.x, sdpa and flash-attention)
  turns restarting position ids into a block-diagonal causal mask when no
  attention mask is passed, so a packed example attends only to itself and
  gets the same loss as alone (tested). Padding is one more such segment,
  with labels ignored, so padded and packed rows need no attention mask.
- The same trick makes a micro-batch padding-free (TRL's ``padding_free``):
  its rows laid end to end in one row. :func:`prefer_flat` picks that layout
  when it costs less compute than padding the rows to the longest.
- An example longer than ``max_seq_len`` is cut at ``max_seq_len`` (its end,
  answer and end-of-turn token included, is lost); one whose prompt alone
  fills ``max_seq_len`` is dropped. Both are counted in :class:`FitResult`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from rayalign.errors import LocatedError
from rayalign.rollout.format import join_completion
from rayalign.types import SFTExample, from_dict

IGNORE_INDEX = -100
"""Label of a token that carries no loss (prompt, padding)."""

TokenSequence = tuple[list[int], list[int]]
"""(input_ids, labels) of one example; labels are IGNORE_INDEX outside the completion."""


class SFTDataError(LocatedError):
    """An SFT example file or example that cannot be trained on."""


# ------------------------------------------------------------------ reading


def read_sft_examples(path: str | Path) -> list[SFTExample]:
    """Read a JSONL file with one ``to_json(SFTExample)`` per line (blank lines skipped).

    Raises :class:`SFTDataError` naming the file, line and field at fault.
    """
    path = Path(path)
    if not path.is_file():
        raise SFTDataError("no such file", file=str(path))
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                examples.append(_parse_line(line, str(path), line_no))
    return examples


def _parse_line(line: str, file: str, line_no: int) -> SFTExample:
    def fail(message: str, field: str | None = None):
        raise SFTDataError(message, file=file, line=line_no, field=field)

    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        fail(f"not valid JSON: {e.msg} (column {e.colno})")
    if not isinstance(data, dict):
        fail("must be a JSON object (an SFTExample)")
    for key in ("prompt", "reasoning", "answer"):
        if key not in data:
            fail("missing", key)
    for key in ("reasoning", "answer"):
        if not isinstance(data[key], str):
            fail(f"must be a string; got {type(data[key]).__name__}", key)
    prompt = data["prompt"]
    if not isinstance(prompt, dict) or not isinstance(prompt.get("messages"), list) or not prompt["messages"]:
        fail("must hold a non-empty list of messages", "prompt.messages")
    for i, message in enumerate(prompt["messages"]):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            fail("must be {role, content} with string content", f"prompt.messages[{i}]")
        if message.get("role") not in ("system", "user", "assistant"):
            fail(f"role must be system, user or assistant; got {message.get('role')!r}", f"prompt.messages[{i}].role")
    if prompt["messages"][-1]["role"] != "user":
        fail("the conversation must end on a user turn", "prompt.messages")
    try:
        return from_dict(SFTExample, data)
    except (TypeError, ValueError) as e:
        fail(f"does not fit SFTExample: {e}")


# --------------------------------------------------------------- tokenizing


def _chat(example: SFTExample) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in example.prompt.messages]


def _ids(tokenizer, text: str) -> list[int]:
    # The rendered template already holds every special token it wants.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_example(tokenizer, example: SFTExample) -> TokenSequence:
    """(input_ids, labels) for one example, with loss on the completion only.

    The prompt is the template with ``add_generation_prompt=True`` (what the
    model sees at inference); it must be a token prefix of the full rendering.
    Tokens the template adds after the end-of-turn token (e.g. a newline) are
    dropped: nothing is learnt from them.

    With a ChatML template, ``user: "Hi"`` and completion ``<think>\\nr\\n</think>\\na``
    give ``<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n`` with
    labels -100 and ``<think>\\nr\\n</think>\\na<|im_end|>`` with labels = ids.
    """
    chat = _chat(example)
    prompt_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    target = {"role": "assistant", "content": join_completion(example.reasoning, example.answer)}
    full_text = tokenizer.apply_chat_template([*chat, target], tokenize=False)
    prompt_ids, full_ids = _ids(tokenizer, prompt_text), _ids(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) <= len(prompt_ids):
        raise SFTDataError(
            "the chat template's generation prompt is not a token prefix of the conversation with "
            "its answer, so the loss mask cannot be placed; use a model whose template renders "
            "the assistant turn after add_generation_prompt's text",
            field=f"prompt {example.prompt.id}",
        )
    eos = tokenizer.eos_token_id
    completion = full_ids[len(prompt_ids) :]
    if eos is not None and eos in completion:
        last = len(completion) - 1 - completion[::-1].index(eos)
        completion = completion[: last + 1]
    return prompt_ids + completion, [IGNORE_INDEX] * len(prompt_ids) + completion


# ------------------------------------------------------------------- rows


@dataclass(frozen=True)
class FitResult:
    """Examples cut to the maximum length, and how many were changed."""

    sequences: list[TokenSequence]
    truncated: int
    """Examples longer than max_seq_len, cut at max_seq_len."""
    dropped: int
    """Examples with no completion token left within max_seq_len."""


def fit_length(sequences: Sequence[TokenSequence], max_seq_len: int) -> FitResult:
    """Cut examples to ``max_seq_len`` tokens; drop those left without loss tokens.

    >>> r = fit_length([([1, 2, 3], [-100, 2, 3]), ([4, 5, 6], [-100, -100, 6])], 2)
    >>> r.sequences, r.truncated, r.dropped
    ([([1, 2], [-100, 2])], 2, 1)
    """
    kept, truncated, dropped = [], 0, 0
    for ids, labels in sequences:
        if len(ids) > max_seq_len:
            truncated += 1
            ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            continue
        kept.append((list(ids), list(labels)))
    return FitResult(kept, truncated, dropped)


@dataclass(frozen=True)
class Row:
    """One training row: one or several examples back to back, unpadded."""

    input_ids: tuple[int, ...]
    """(T,)"""
    labels: tuple[int, ...]
    """(T,) IGNORE_INDEX outside completions."""
    position_ids: tuple[int, ...]
    """(T,) restarting at 0 at the start of each example."""

    def __len__(self) -> int:
        return len(self.input_ids)


def _row(sequences: Sequence[TokenSequence]) -> Row:
    ids = tuple(i for s, _ in sequences for i in s)
    labels = tuple(x for _, lab in sequences for x in lab)
    positions = tuple(p for s, _ in sequences for p in range(len(s)))
    return Row(ids, labels, positions)


def pack(sequences: Sequence[TokenSequence], max_seq_len: int) -> list[Row]:
    """Greedy packing in order: append to the current row while it fits, else start a new one.

    Every sequence must already fit (see :func:`fit_length`).

    >>> [r.position_ids for r in pack([([1, 2], [-100, 2]), ([3], [3]), ([4, 5], [-100, 5])], 3)]
    [(0, 1, 0), (0, 1)]
    """
    rows, current, used = [], [], 0
    for ids, labels in sequences:
        if len(ids) > max_seq_len:
            raise ValueError(f"sequence of {len(ids)} tokens exceeds max_seq_len={max_seq_len}; call fit_length first")
        if current and used + len(ids) > max_seq_len:
            rows.append(_row(current))
            current, used = [], 0
        current.append((ids, labels))
        used += len(ids)
    if current:
        rows.append(_row(current))
    return rows


def one_per_row(sequences: Sequence[TokenSequence]) -> list[Row]:
    """No packing: each example is its own row (padded to the batch's longest later)."""
    return [_row([s]) for s in sequences]


@dataclass(frozen=True)
class RowStats:
    """What became of the examples on their way to rows."""

    examples: int
    truncated: int
    dropped: int
    rows: int
    tokens: int
    """Non-padding tokens over all rows."""
    loss_tokens: int


def build_rows(
    tokenizer, examples: Sequence[SFTExample], max_seq_len: int, packing: bool
) -> tuple[list[Row], RowStats]:
    """Tokenize, cut to length and (optionally) pack a list of examples."""
    fit = fit_length([tokenize_example(tokenizer, e) for e in examples], max_seq_len)
    rows = pack(fit.sequences, max_seq_len) if packing else one_per_row(fit.sequences)
    tokens = sum(len(r) for r in rows)
    loss_tokens = sum(x != IGNORE_INDEX for r in rows for x in r.labels)
    return rows, RowStats(len(examples), fit.truncated, fit.dropped, len(rows), tokens, loss_tokens)


# ----------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """Rows padded to the longest one; padding is its own position segment."""

    input_ids: torch.Tensor
    """(B, T)"""
    labels: torch.Tensor
    """(B, T) IGNORE_INDEX on prompt and padding tokens."""
    position_ids: torch.Tensor
    """(B, T) restarting at each example and at the padding."""
    num_tokens: int
    """Non-padding tokens."""


def collate(rows: Sequence[Row], pad_id: int, *, flat: bool = False) -> Batch:
    """Pad rows on the right to the longest one, or (``flat``) lay them end to end in one row.

    >>> rows = [Row((5, 6, 7), (-100, 6, 7), (0, 1, 2)), Row((8,), (8,), (0,))]
    >>> b = collate(rows, pad_id=0)
    >>> b.input_ids.tolist(), b.position_ids.tolist(), b.num_tokens
    ([[5, 6, 7], [8, 0, 0]], [[0, 1, 2], [0, 0, 1]], 4)
    >>> collate(rows, pad_id=0, flat=True).position_ids.tolist()
    [[0, 1, 2, 0]]
    """
    if flat:
        rows = [Row(*(tuple(x for r in rows for x in getattr(r, f)) for f in ("input_ids", "labels", "position_ids")))]
    width = max(len(r) for r in rows)
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r)
        ids.append(list(r.input_ids) + [pad_id] * pad)
        labels.append(list(r.labels) + [IGNORE_INDEX] * pad)
        positions.append(list(r.position_ids) + list(range(pad)))
    return Batch(torch.tensor(ids), torch.tensor(labels), torch.tensor(positions), sum(len(r) for r in rows))


def prefer_flat(lengths: Sequence[int], context_scale: float) -> bool:
    """Whether one padding-free row costs less compute than rows padded to the longest.

    A token costs ~ ``1 + context / context_scale``: its share of the linear
    layers, plus attention over ``context`` tokens (dense, masked, under sdpa).
    ``context_scale`` is linear over attention cost per context token (see
    ``rayalign.sft.loop.context_scale``; ~3900 for SmolLM2-135M). Padding-free
    wins when rows are short and uneven, padded rows when they are full.

    >>> prefer_flat([214, 150, 140, 129], 3906)  # 4 x 214 padded vs 633 flat
    True
    >>> prefer_flat([1024, 1000, 990, 1010], 3906)
    False
    """
    total, longest = sum(lengths), max(lengths)
    padded = len(lengths) * longest * (1 + longest / context_scale)
    return total * (1 + total / context_scale) < padded


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels of the token after each position; IGNORE_INDEX after the last.

    >>> next_token_labels(torch.tensor([[-100, 6, 7], [8, -100, -100]])).tolist()
    [[6, 7, -100], [-100, -100, -100]]
    """
    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose next token is scored in any row, ascending: the only logits a loss needs.
    A forward that computes just these (``logits_to_keep``) skips the language-model head and the
    cross-entropy over the prompt tokens.

    >>> scored_positions(torch.tensor([[-100, -100, 6, 7], [-100, 8, -100, -100]])).tolist()
    [0, 1, 2]
    """
    return (next_token_labels(labels) != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)


def loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled tokens, and their count.

    ``logits`` (B, T, V) at position t predict ``labels`` (B, T) at t + 1; with
    ``positions`` (K,), ``logits`` are (B, K, V) at those positions only.
    Across a packed boundary the next label is a prompt token (ignored), so
    examples never score each other.
    """
    # Shift the labels, not the logits: slicing (B, T, V) logits would copy them.
    shifted = next_token_labels(labels)
    if positions is not None:
        shifted = shifted[:, positions]
    shifted = shifted.reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1]).float()
    total = torch.nn.functional.cross_entropy(flat, shifted, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((shifted != IGNORE_INDEX).sum())


# ---------------------------------------------- which rows, at which rate


def steps_per_epoch(num_rows: int, rows_per_step: int) -> int:
    """Optimizer steps in one pass; the last step is topped up from the epoch's start.

    >>> steps_per_epoch(10, 4)
    3
    """
    return max(1, math.ceil(num_rows / rows_per_step))


def epoch_order(num_rows: int, epoch: int, seed: int) -> list[int]:
    """A permutation of the rows, the same on every worker for a given (epoch, seed)."""
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_rows(
    num_rows: int, step: int, *, world_size: int, rank: int, micro_batch_size: int, grad_accum: int, seed: int
) -> list[list[int]]:
    """Row indices of ``rank``'s micro-batches at optimizer step ``step`` (0-based).

    A step takes ``world_size * micro_batch_size * grad_accum`` rows of the
    epoch's order; the worker of rank r takes every world_size-th of them,
    starting at r. The epoch's last step wraps around to its first rows.

    >>> epoch_order(4, 0, seed=0)
    [2, 0, 1, 3]
    >>> step_rows(4, 0, world_size=2, rank=1, micro_batch_size=1, grad_accum=2, seed=0)
    [[0], [3]]
    """
    per_step = world_size * micro_batch_size * grad_accum
    epoch, position = divmod(step, steps_per_epoch(num_rows, per_step))
    order = epoch_order(num_rows, epoch, seed)
    taken = list(itertools.islice(itertools.cycle(order), position * per_step, (position + 1) * per_step))
    mine = taken[rank::world_size]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at 0-based ``step``: linear warm-up, then cosine to ~0.

    >>> [round(lr_factor(s, 2, 6), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def rows_fingerprint(rows: Sequence[Row]) -> str:
    """A short hash of the rows, to refuse resuming on different data."""
    h = hashlib.sha256()
    for r in rows:
        h.update(repr((r.input_ids, r.labels)).encode())
    return h.hexdigest()[:16]
