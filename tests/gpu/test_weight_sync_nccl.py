"""Collective weight sync over NCCL: the learner's rank 0 on one GPU, a
transformers sampler on another; needs two GPUs (NCCL refuses two ranks on one)."""

import contextlib
import multiprocessing

import pytest
import torch

from rayalign.models import load_model
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.weight_sync import GroupAddress, create_store, join_group, layout, plan_buckets, send
from rayalign.rollout.worker import RolloutWorker
from rayalign.types import Message, Prompt, SamplingSettings

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")

PROMPTS = [Prompt(id=f"n{i}", messages=(Message("user", f"nccl question {i}"),)) for i in range(4)]
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)


def _sampler(model_path, port, buckets, queue):
    torch.cuda.set_device(1)
    worker = RolloutWorker(
        EngineConfig(model=model_path, backend="transformers", dtype="float32", device="cuda:1", max_model_len=512)
    )
    worker.join_weight_group(GroupAddress("127.0.0.1", port, 2, "nccl", "gpu-test", 120.0), 1)
    worker.receive_weights(buckets, version=5)
    queue.put([(r.policy_version, r.token_ids) for r in worker.generate(PROMPTS, GREEDY)])


def test_nccl_sync_gives_the_sampler_the_learners_weights(tiny_model):
    learner, _ = load_model(tiny_model, dtype="float32", device="cuda:0")
    torch.manual_seed(7)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    state = learner.state_dict()
    buckets = plan_buckets(layout(state), bucket_bytes=1 << 20)
    store = create_store("127.0.0.1", 2, timeout_s=120)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_sampler, args=(tiny_model, store.port, buckets, queue))
    child.start()
    group = join_group(GroupAddress("127.0.0.1", store.port, 2, "nccl", "gpu-test", 120.0), 0, store)
    send(group, buckets, lambda names: contextlib.nullcontext({n: state[n] for n in names}), device="cuda:0")
    got = queue.get(timeout=300)
    child.join(60)
    expected = RolloutWorker(
        EngineConfig(model=tiny_model, backend="transformers", dtype="float32", device="cuda:0", max_model_len=512)
    )
    expected.backend.model.load_state_dict(state)
    want = [r.token_ids for r in expected.generate(PROMPTS, GREEDY)]
    assert [v for v, _ in got] == [5] * len(PROMPTS)
    assert [t for _, t in got] == want
