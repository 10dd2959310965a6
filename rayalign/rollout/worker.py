"""A sampler process: one engine, the chat template, typed rollouts, versioned weights.

``RolloutWorker`` is plain Python so Ray Data UDFs and tests can hold one
directly; :class:`rayalign.rollout.pool.RolloutPool` runs it as a Ray actor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rayalign.errors import RayalignError
from rayalign.models import chat_prompt, load_tokenizer
from rayalign.rollout.engine import EngineConfig, build_backend, prompt_seed
from rayalign.rollout.weight_sync import Bucket, GroupAddress, LoraSync
from rayalign.types import Prompt, Rollout, SamplingSettings


@dataclass(frozen=True)
class WorkerInfo:
    backend: str
    policy_version: int
    pid: int


class PromptTooLongError(RayalignError):
    """A prompt that leaves no room for the completion within max_model_len."""


class RolloutWorker:
    def __init__(self, config: EngineConfig):
        if config.device == "cpu":
            import torch

            torch.set_num_threads(config.threads)
        self.config = config
        self.backend = build_backend(config)
        # One tokenizer for both engines, so token ids and log-probs line up.
        self.tokenizer = load_tokenizer(config.model)
        self.policy_version = 0

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.backend.name, self.policy_version, os.getpid())

    def encode(self, prompt: Prompt) -> list[int]:
        text = chat_prompt(self.tokenizer, prompt.messages) + prompt.prefill
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts: Sequence[Prompt], settings: SamplingSettings) -> list[Rollout]:
        """``settings.n`` rollouts per prompt, grouped by prompt in input order."""
        if not prompts:
            return []
        token_ids = [self.encode(p) for p in prompts]
        for prompt, ids in zip(prompts, token_ids):
            if len(ids) + settings.max_new_tokens > self.config.max_model_len:
                raise PromptTooLongError(
                    f"prompt {prompt.id!r} is {len(ids)} tokens; with max_new_tokens "
                    f"{settings.max_new_tokens} it exceeds model.max_model_len {self.config.max_model_len}"
                )
        seeds = [prompt_seed(settings.seed, p.id) for p in prompts]
        start = time.perf_counter()
        samples = self.backend.generate(token_ids, settings, seeds)
        seconds = time.perf_counter() - start
        return [
            Rollout(
                prompt_id=prompt.id,
                sample_index=j,
                text=s.text,
                prompt_token_ids=tuple(ids),
                token_ids=s.token_ids,
                logprobs=s.logprobs,
                finish_reason=s.finish_reason,
                policy_version=self.policy_version,
                backend=self.backend.name,
                seconds=seconds,
            )
            for prompt, ids, group in zip(prompts, token_ids, samples)
            for j, s in enumerate(group)
        ]

    def update_weights(self, state: Mapping, version: int) -> int:
        """Load new weights (HF tensor names) and tag later rollouts with ``version``."""
        self.backend.load_weights(state)
        self.policy_version = version
        return version

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        self.backend.join_weight_group(address, rank_offset)

    def receive_weights(self, buckets: Sequence[Bucket], version: int, lora: LoraSync | None = None) -> int:
        """Take one bucketed broadcast of new weights (or LoRA adapters); tag later rollouts with ``version``."""
        self.backend.receive_weights(buckets, lora)
        self.policy_version = version
        return version
