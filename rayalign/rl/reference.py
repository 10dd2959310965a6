"""The frozen reference model off the learners (``rl.reference.placement: engine``).

One actor beside the samplers holds the reference and scores each step's
completions while rank 0 prepares the step (under ``rl.overlap``, while the
learners train the previous one), so the learners hold only the policy and
run only its forward and backward. It batches and pads exactly as a learner
does (``rl.micro_batch_size`` in order, :func:`rayalign.rl.batch.pad_experiences`)
and runs the same forward, so its numbers are the learner's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from rayalign.head import check_plain_head
from rayalign.models import mixed_precision
from rayalign.rl.batch import pad_experiences, reference_logprobs
from rayalign.types import Experience


def load_reference(model_path: str, device) -> torch.nn.Module:
    """The frozen reference, float32, in eval mode, no gradients."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device).eval()
    reference.requires_grad_(False)
    return reference


class ReferenceScorer:
    """Plain Python, so tests can hold one; :func:`rayalign.rl.train` runs it as a Ray actor."""

    def __init__(
        self,
        model_path: str,
        micro_batch_size: int,
        pad_id: int,
        *,
        threads: int,
        device: str = "cpu",
        dtype: str = "float32",
        logprob_chunk: int = 0,
    ):
        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = load_reference(model_path, self.device)
        self.micro_batch_size, self.pad_id = micro_batch_size, pad_id
        # model.dtype, resolved on this actor's node as the learners resolve it on theirs: autocast when they
        # train in bf16 mixed precision
        self.bf16 = mixed_precision(dtype, device)
        self.logprob_chunk = logprob_chunk  # rl.logprob_chunk: the head in chunks, as the learners run it
        if logprob_chunk:
            check_plain_head(self.model, "rl.logprob_chunk")

    def score(self, experiences: Sequence[Experience]) -> list[tuple[float, ...]]:
        """(T,) reference log-probs of each experience's completion, in order."""
        scores: list[tuple[float, ...]] = []
        for i in range(0, len(experiences), self.micro_batch_size):
            chunk = experiences[i : i + self.micro_batch_size]
            batch = pad_experiences(chunk, self.pad_id)
            logp = reference_logprobs(self.model, batch, self.device, bf16=self.bf16, chunk=self.logprob_chunk)
            scores += [tuple(logp[j, : len(e.token_ids)].tolist()) for j, e in enumerate(chunk)]
        return scores


def with_reference(experiences: Sequence[Experience], scores: Sequence[tuple[float, ...]]) -> list[Experience]:
    """The experiences carrying their reference log-probs."""
    if len(scores) != len(experiences):
        raise ValueError(f"{len(scores)} reference scores for {len(experiences)} experiences")
    return [dataclasses.replace(e, ref_logprobs=tuple(s)) for e, s in zip(experiences, scores)]
