"""Experiences -> the tensors a learner trains on, and which prompts a step uses.

Pure: stdlib and torch only (and rayalign.models' autocast context, rayalign.head's chunked head).

A batch lays each sample out as ``[left padding, prompt, completion, right
padding]`` so every completion starts at the same column ``P`` (the longest
prompt). Completion token j of a row then sits at column ``P + j`` and its
log-prob comes from the logits at column ``P + j - 1``: one slice for the
whole batch, instead of a gather per row.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rayalign.head import decoder_output, head_token_logprobs, no_logits, output_head
from rayalign.models import autocast
from rayalign.types import Experience


@dataclass(frozen=True)
class PolicyBatch:
    """A padded batch of experiences. B rows, P prompt columns, T completion columns."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T), 1 on real tokens
    position_ids: torch.Tensor  # (B, P + T), 0 at each row's first real token
    completion_ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T) float, 1 on completion tokens that count in the loss
    old_logprobs: torch.Tensor  # (B, T) sampler log-probs (0 on padding)
    advantages: torch.Tensor  # (B,)
    prompt_len: int
    """P: column where every completion starts."""
    ref_logprobs: torch.Tensor | None = None
    """(B, T) the reference's log-probs scored off the learners (0 on padding); None: the learner scores."""


def pad_experiences(experiences: Sequence[Experience], pad_id: int) -> PolicyBatch:
    """Lay out experiences for one forward pass.

    An unscorable experience (``reward is None``) keeps its row, so every
    worker runs the same number of micro-batches, but its mask is all zero:
    no policy-gradient and no KL term.

    >>> e = Experience("p", (5, 6), (7,), (-0.5,), 1.0, 0.8)
    >>> f = Experience("q", (5,), (8, 9), (-0.1, -0.2), -1.0, None)
    >>> b = pad_experiences([e, f], pad_id=0)
    >>> b.input_ids.tolist(), b.position_ids.tolist(), b.mask.tolist()
    ([[5, 6, 7, 0], [0, 5, 8, 9]], [[0, 1, 2, 2], [0, 0, 1, 2]], [[1.0, 0.0], [0.0, 0.0]])
    """
    if not experiences:
        raise ValueError("pad_experiences: no experiences")
    prompt_len = max(len(e.prompt_token_ids) for e in experiences)
    width = max(len(e.token_ids) for e in experiences)
    rows, attention, completions, masks, old, refs = [], [], [], [], [], []
    for e in experiences:
        if len(e.logprobs) != len(e.token_ids):
            raise ValueError(f"experience {e.prompt_id!r}: {len(e.logprobs)} log-probs for {len(e.token_ids)} tokens")
        left, right = prompt_len - len(e.prompt_token_ids), width - len(e.token_ids)
        rows.append([pad_id] * left + list(e.prompt_token_ids) + list(e.token_ids) + [pad_id] * right)
        attention.append([0] * left + [1] * (len(e.prompt_token_ids) + len(e.token_ids)) + [0] * right)
        completions.append(list(e.token_ids) + [pad_id] * right)
        counts = 1.0 if e.reward is not None else 0.0
        masks.append([counts] * len(e.token_ids) + [0.0] * right)
        old.append(list(e.logprobs) + [0.0] * right)
        if len(e.ref_logprobs) not in (0, len(e.token_ids)):
            raise ValueError(
                f"experience {e.prompt_id!r}: {len(e.ref_logprobs)} reference log-probs for {len(e.token_ids)} tokens"
            )
        refs.append(list(e.ref_logprobs) + [0.0] * right)
    scored = {bool(e.ref_logprobs) for e in experiences}
    if len(scored) > 1:
        raise ValueError("pad_experiences: some experiences have reference log-probs and some do not")
    attention_mask = torch.tensor(attention, dtype=torch.long)  # (B, P + T)
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)  # (B, P + T)
    return PolicyBatch(
        input_ids=torch.tensor(rows, dtype=torch.long),
        attention_mask=attention_mask,
        position_ids=position_ids,
        completion_ids=torch.tensor(completions, dtype=torch.long),
        mask=torch.tensor(masks, dtype=torch.float32),
        old_logprobs=torch.tensor(old, dtype=torch.float32),
        advantages=torch.tensor([e.advantage for e in experiences], dtype=torch.float32),
        prompt_len=prompt_len,
        ref_logprobs=torch.tensor(refs, dtype=torch.float32) if scored == {True} else None,
    )


def logits_to_keep(batch: PolicyBatch) -> int:
    """How many final positions' logits a forward pass must return: T + 1
    (column P - 1 onwards), so the LM head skips the prompt columns."""
    return batch.completion_ids.shape[1] + 1


def completion_logits(logits: torch.Tensor, batch: PolicyBatch) -> torch.Tensor:
    """Logits of the last ``logits_to_keep(batch)`` (or all P + T) columns ->
    (B, T, V): the logits that predict each completion token."""
    width = batch.completion_ids.shape[1]
    start = batch.prompt_len - 1 if logits.shape[1] == batch.input_ids.shape[1] else 0
    return logits[:, start : start + width]


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: (B, T, V), (B, T) -> (B, T), in float32.

    >>> token_logprobs(torch.zeros(1, 1, 4), torch.tensor([[2]])).exp().item()
    0.25
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return logp.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)


def forward_logits(model, batch: PolicyBatch, device) -> torch.Tensor:
    """(B, T, V) the model's logits at the completion positions."""
    out = model(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        position_ids=batch.position_ids.to(device),
        use_cache=False,
        logits_to_keep=logits_to_keep(batch),
    )
    return completion_logits(out.logits, batch)


def policy_logprobs(model, batch: PolicyBatch, device, chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log-probs of the completion tokens (differentiable) and (B, T) entropies of the model's
    next-token distributions there (nats, no gradient). With ``chunk``, the LM head runs ``chunk``
    completion tokens at a time from the decoder's output (:mod:`rayalign.head`) and padding columns
    read 0; without, from the (B, T, V) logits at once."""
    ids = batch.completion_ids.to(device)
    if not chunk:
        logits = forward_logits(model, batch, device)
        return token_logprobs(logits, ids), token_entropy(logits)
    inputs = {k: getattr(batch, k).to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    hidden = decoder_output(model, lambda: model(**inputs, use_cache=False, **no_logits(device)))
    start, width = batch.prompt_len - 1, ids.shape[1]
    real = inputs["attention_mask"][:, batch.prompt_len :] > 0  # (B, T): completion tokens, not padding
    logp, entropy = head_token_logprobs(
        hidden[:, start : start + width][real], output_head(model).weight, ids[real], chunk
    )
    zeros = torch.zeros(ids.shape, dtype=torch.float32, device=device)
    return zeros.masked_scatter(real, logp), zeros.masked_scatter(real, entropy)


def reference_logprobs(reference, batch: PolicyBatch, device, *, bf16: bool = False, chunk: int = 0) -> torch.Tensor:
    """(B, T) log-probs of the completion tokens under the frozen reference (bf16: autocast on ``device``;
    ``chunk``: the head in chunks, as :func:`policy_logprobs`)."""
    with torch.no_grad(), autocast(device, bf16):
        return policy_logprobs(reference, batch, device, chunk)[0]


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """(B, T, V) -> (B, T) entropy of each position's distribution (nats), no gradient.

    >>> token_entropy(torch.zeros(1, 2, 4)).tolist()[0] == [torch.log(torch.tensor(4.0)).item()] * 2
    True
    """
    with torch.no_grad():
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        return -(logp.exp() * logp).sum(dim=-1)


def step_prompt_indices(n_prompts: int, step: int, per_step: int, seed: int) -> list[int]:
    """Which prompts step ``step`` (0-based) trains on.

    Prompts are visited epoch by epoch, each epoch in its own seeded order, so
    the data position after ``s`` steps is ``s * per_step`` prompts and a
    resumed run picks up exactly where the killed one stopped.

    >>> sorted(step_prompt_indices(4, 0, 2, seed=0) + step_prompt_indices(4, 1, 2, seed=0))  # one epoch
    [0, 1, 2, 3]
    >>> step_prompt_indices(4, 1, 2, seed=0) == step_prompt_indices(4, 1, 2, seed=0)
    True
    """
    if n_prompts < 1 or per_step < 1 or step < 0:
        raise ValueError(f"step_prompt_indices: n_prompts={n_prompts}, per_step={per_step}, step={step}")
    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        out.append(order[offset])
    return out


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Rank ``rank``'s contiguous share of ``items`` (which divide evenly).

    >>> shard(list(range(6)), 1, 3)
    [2, 3]
    """
    if len(items) % world_size:
        raise ValueError(f"shard: {len(items)} items do not split over {world_size} workers")
    size = len(items) // world_size
    return list(items[rank * size : (rank + 1) * size])
