"""Samplers on CUDA: log-probs match a forward pass; vLLM when CUDA vLLM is installed."""

import importlib.util

import pytest
import torch

from rayalign.models import load_model
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.worker import RolloutWorker
from rayalign.types import Message, Prompt, SamplingSettings

PROMPTS = [Prompt(id=f"g{i}", messages=(Message("user", f"gpu question {i}"),)) for i in range(8)]


def _check_logprobs(rollouts, dtype):
    model, _ = load_model("builtin:tiny", dtype=dtype, device="cuda")
    for r in rollouts:
        ids = torch.tensor([list(r.prompt_token_ids) + list(r.token_ids)], device="cuda")
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        start = len(r.prompt_token_ids) - 1
        tgt = torch.tensor(r.token_ids, device="cuda")[:, None]
        expected = logprobs[start : start + len(r.token_ids)].gather(-1, tgt).sum().item()
        assert sum(r.logprobs) == pytest.approx(expected, abs=1e-2 * len(r.token_ids))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_transformers_backend_on_cuda(tiny_model, dtype):
    worker = RolloutWorker(
        EngineConfig(model=tiny_model, backend="transformers", dtype=dtype, device="cuda", max_model_len=512)
    )
    rollouts = worker.generate(PROMPTS, SamplingSettings(n=4, temperature=1.0, max_new_tokens=24, seed=0))
    assert len(rollouts) == 32 and all(len(r.token_ids) == len(r.logprobs) > 0 for r in rollouts)
    _check_logprobs(rollouts[::7], dtype)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="CUDA vLLM not installed")
def test_vllm_backend_on_cuda_with_weight_update(tiny_model):
    worker = RolloutWorker(
        EngineConfig(
            model=tiny_model,
            backend="vllm",
            dtype="float32",
            device="cuda",
            max_model_len=512,
            gpu_memory_utilization=0.3,
        )
    )
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12)
    before = worker.generate(PROMPTS[:2], greedy)
    _check_logprobs(before, "float32")
    other, _ = load_model("builtin:tiny", dtype="float32")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    worker.update_weights(other.state_dict(), version=1)
    after = worker.generate(PROMPTS[:2], greedy)
    assert [r.token_ids for r in after] != [r.token_ids for r in before]
