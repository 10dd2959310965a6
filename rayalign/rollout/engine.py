"""What every sampler backend takes and returns, and how one is built."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from rayalign.rollout.format import format_regex
from rayalign.types import FinishReason, SamplingSettings

if TYPE_CHECKING:
    from rayalign.rollout.weight_sync import Bucket, GroupAddress, LoraSync


@dataclass(frozen=True)
class EngineConfig:
    """Everything a sampler process needs to build its engine (crosses actor boundaries)."""

    model: str
    """Model source (see rayalign.models)."""
    backend: Literal["vllm", "transformers"] = "vllm"
    dtype: str = "auto"
    max_model_len: int = 2048
    threads: int = 1
    device: str = "cpu"
    """cpu or cuda."""
    seed: int = 0
    kv_cache_gib: float = 1.0
    gpu_memory_utilization: float = 0.85
    tensor_parallel_size: int = 1

    @classmethod
    def from_config(cls, cfg, model: str | None = None) -> EngineConfig:
        """The sampler engine of a rayalign Config (policy model unless ``model`` given)."""
        r = cfg.rollout
        return cls(
            model=model or cfg.model.policy,
            backend=r.backend,
            dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_model_len,
            threads=cfg.model.threads,
            device="cuda" if r.gpus_per_worker > 0 else "cpu",
            seed=r.seed,
            kv_cache_gib=r.kv_cache_gib,
            gpu_memory_utilization=r.gpu_memory_utilization,
            tensor_parallel_size=r.tensor_parallel_size,
        )

    @classmethod
    def for_judge(cls, cfg) -> EngineConfig:
        """The local judge model's engine: ``judge.model`` (or the base policy) on the judge's threads and device."""
        j = cfg.judge
        return cls(
            model=j.model or cfg.model.policy,
            backend=j.engine,
            dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_model_len,
            threads=j.threads or cfg.model.threads,
            device="cuda" if j.gpus_per_replica > 0 else "cpu",
            kv_cache_gib=j.kv_cache_gib or cfg.rollout.kv_cache_gib,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        )


def sampling_settings(
    *,
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    enforce_format: bool,
    top_p: float = 1.0,
    opened: bool = False,
) -> SamplingSettings:
    """How a stage samples its policy; ``enforce_format`` constrains output to the reasoning format
    (``opened``: every prompt pre-fills the start of the think block).

    >>> sampling_settings(n=2, temperature=0.0, max_new_tokens=8, seed=1, enforce_format=False).regex
    ''
    """
    return SamplingSettings(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        regex=format_regex(max_new_tokens, opened=opened) if enforce_format else "",
    )


@dataclass(frozen=True)
class Sampled:
    """One completion as an engine returns it."""

    token_ids: tuple[int, ...]  # (T,)
    logprobs: tuple[float, ...]  # (T,)
    text: str
    finish_reason: FinishReason


class Backend(Protocol):
    name: str

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[list[Sampled]]:
        """``settings.n`` samples for each tokenised prompt, each prompt with its own seed."""

    def load_weights(self, state: Mapping) -> None:
        """Replace the engine's weights with a HF-named state dict."""

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Join the weight-sync group (rayalign.rollout.weight_sync) as rank ``rank_offset`` (+ worker rank)."""

    def receive_weights(self, buckets: Sequence[Bucket], lora: LoraSync | None = None) -> None:
        """Receive one bucketed broadcast of HF-named weights (``lora``: peft adapters, merged into the
        engine's starting weights) from the group's rank 0 and load it."""


def prompt_seed(base: int, prompt_id: str) -> int:
    """A per-prompt seed: the same prompt samples the same way on any worker.

    >>> prompt_seed(0, "a") == prompt_seed(0, "a") != prompt_seed(1, "a")
    True
    """
    digest = hashlib.sha256(f"{base}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def build_backend(config: EngineConfig) -> Backend:
    """The engine named by ``config.backend``; vLLM is imported only when chosen."""
    if config.backend == "vllm":
        from rayalign.rollout.vllm_backend import VLLMBackend

        return VLLMBackend(config)
    from rayalign.rollout.hf_backend import HFBackend

    return HFBackend(config)
