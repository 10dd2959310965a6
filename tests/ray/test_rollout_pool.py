"""Sampler actors on a real local Ray with the vLLM backend and the tiny model."""

import collections
import contextlib
import threading
import time

import pytest
import ray
import torch

from rayalign.learners import module_layout
from rayalign.models import load_model, with_lora
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.pool import PoolResources, RolloutPool, WeightSource
from rayalign.rollout.weight_sync import LoraSync, layout, plan_buckets, total_bytes
from rayalign.types import Message, Prompt, SamplingSettings

ENGINE = EngineConfig(model="builtin:tiny", backend="vllm", dtype="float32", max_model_len=512)


def _prompts(k: int) -> list[Prompt]:
    return [Prompt(id=f"p{i}", messages=(Message("user", f"question {i}: why?"),)) for i in range(k)]


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_model):
    pool = RolloutPool(ENGINE, PoolResources(num_workers=2, cpus=1.0, max_restarts=2))
    infos = pool.wait_ready()
    assert len({i.pid for i in infos}) == 2
    yield pool
    pool.shutdown()


def _reference_logprob_sum(model, prompt_ids, token_ids) -> float:
    ids = torch.tensor([list(prompt_ids) + list(token_ids)])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    start = len(prompt_ids) - 1
    picked = logprobs[start : start + len(token_ids)].gather(-1, torch.tensor(token_ids)[:, None])
    return picked.sum().item()


def test_pool_samples_n_per_prompt_with_matching_logprobs(pool):
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=16, seed=3)
    rollouts = pool.generate(_prompts(6), settings)
    assert [r.prompt_id for r in rollouts] == [f"p{i}" for i in range(6) for _ in range(4)]
    assert [r.sample_index for r in rollouts[:4]] == [0, 1, 2, 3]
    assert len({r.token_ids for r in rollouts[:4]}) > 1  # n distinct samples, not copies
    reference, _ = load_model("builtin:tiny", dtype="float32")
    for r in rollouts[::5]:
        assert len(r.token_ids) == len(r.logprobs) > 0
        assert r.backend == "vllm" and r.finish_reason in ("stop", "length")
        assert sum(r.logprobs) == pytest.approx(
            _reference_logprob_sum(reference, r.prompt_token_ids, r.token_ids), abs=1e-3
        )


def test_same_prompt_samples_the_same_on_any_worker(pool):
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=11)
    a = pool.generate(_prompts(4), settings, chunk_size=1)
    b = pool.generate(list(reversed(_prompts(4))), settings, chunk_size=3)
    by_id = {(r.prompt_id, r.sample_index): r.token_ids for r in b}
    assert all(by_id[(r.prompt_id, r.sample_index)] == r.token_ids for r in a)


def test_killing_an_actor_mid_batch_loses_and_duplicates_nothing(pool):
    prompts = _prompts(16)
    # Long enough (the random tiny model rarely stops early) that the kill lands mid-chunk.
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=256, seed=5)
    retries_before = pool.retries
    victim = pool.actors[0]

    def kill_soon():
        time.sleep(0.5)
        ray.kill(victim, no_restart=False)  # dies; Ray restarts it (max_restarts)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    rollouts = pool.generate(prompts, settings, chunk_size=1)
    killer.join()
    counts = collections.Counter(r.prompt_id for r in rollouts)
    assert counts == {p.id: 2 for p in prompts}
    assert len({(r.prompt_id, r.sample_index) for r in rollouts}) == len(rollouts)
    assert pool.retries > retries_before, "the kill did not hit a running chunk"


def _greedy(model, tokenizer, prompt_ids, n_tokens) -> list[int]:
    ids = torch.tensor([list(prompt_ids)])
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return out[0, ids.shape[1] :].tolist()


def test_weight_update_switches_samplers_to_the_new_model(pool):
    original, tokenizer = load_model("builtin:tiny", dtype="float32")
    other, _ = load_model("builtin:tiny", dtype="float32")
    torch.manual_seed(1234)
    with torch.no_grad():  # same shapes, clearly different weights
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    prompts = _prompts(4)
    before = pool.generate(prompts, greedy)
    pool.update_weights(other.state_dict(), version=7)
    after = pool.generate(prompts, greedy)
    assert all(r.policy_version == 7 for r in after)
    for r in after:
        assert list(r.token_ids) == _greedy(other, tokenizer, r.prompt_token_ids, len(r.token_ids))
    assert [r.token_ids for r in after] != [r.token_ids for r in before]
    pool.update_weights(original.state_dict(), version=8)
    restored = pool.generate(prompts, greedy)
    assert [r.token_ids for r in restored] == [r.token_ids for r in before]


@contextlib.contextmanager
def _named(state, names):
    yield {n: state[n] for n in names}


def _source(model, bucket_bytes: int = 64 << 10) -> WeightSource:
    state = model.state_dict()
    buckets = plan_buckets(layout(state), bucket_bytes)
    return WeightSource(buckets, lambda names: _named(state, names), "gloo", "cpu", resendable=True)


def test_collective_sync_switches_samplers_and_a_restarted_one_rejoins(pool):
    original, tokenizer = load_model("builtin:tiny", dtype="float32")
    other, _ = load_model("builtin:tiny", dtype="float32")
    torch.manual_seed(4321)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    prompts = _prompts(4)
    before = pool.generate(prompts, greedy)

    source = _source(other)
    assert len(source.buckets) > 3  # the tiny model in many small buckets
    assert pool.broadcast_weights(source, version=11) == total_bytes(source.buckets)
    after = pool.generate(prompts, greedy)
    assert all(r.policy_version == 11 for r in after)
    for r in after:
        assert list(r.token_ids) == _greedy(other, tokenizer, r.prompt_token_ids, len(r.token_ids))
    assert [r.token_ids for r in after] != [r.token_ids for r in before]

    pool.broadcast_weights(_source(original), version=12)
    assert [r.token_ids for r in pool.generate(prompts, greedy)] == [r.token_ids for r in before]

    # A sampler dies: restarted with its initial weights, it rejoins a rebuilt group
    # and gets the current ones (``other``, version 13) before any more work.
    pool.broadcast_weights(_source(other), version=13)
    ray.kill(pool.actors[1], no_restart=False)
    again = pool.generate(prompts, greedy, chunk_size=1)
    assert all(r.policy_version == 13 for r in again)
    assert [r.token_ids for r in again] == [r.token_ids for r in after]
    # Back from its restart, it gets the weights before its next work, whichever call that is.
    _until_restarted(pool.actors[1])
    assert [r.policy_version for r in pool.generate(_prompts(8), greedy, chunk_size=1)] == [13] * 8
    assert {i.policy_version for i in pool.wait_ready()} == {13} and not pool.stale


def _until_restarted(actor, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(actor.info.remote(), timeout=5)
            return
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_lora_sync_sends_only_adapters_and_samplers_match_the_merged_model(pool):
    original, tokenizer = load_model("builtin:tiny", dtype="float32")
    pool.broadcast_weights(_source(original), version=20)  # every tensor back to the starting weights
    full_bytes = sum(t.nbytes for t in original.state_dict().values())
    policy = with_lora(original, 4, 8.0)
    torch.manual_seed(99)
    with torch.no_grad():  # B starts at zero: give both adapters weight, as training would
        for name, p in policy.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    state = policy.state_dict()
    buckets = plan_buckets(module_layout(policy, trainable_only=True), 16 << 10)
    assert all(".lora_" in s.name for b in buckets for s in b.slots)
    source = WeightSource(buckets, lambda names: _named(state, names), "gloo", "cpu", True, LoraSync(8.0 / 4))
    sent = pool.broadcast_weights(source, version=21)
    print(f"LoRA sync: {sent} bytes of adapters vs {full_bytes} bytes of weights")
    assert sent == total_bytes(buckets) < full_bytes / 20

    merged = policy.merge_and_unload()
    greedy = SamplingSettings(n=1, temperature=0.0, max_new_tokens=12, seed=0)
    after = pool.generate(_prompts(4), greedy)
    assert all(r.policy_version == 21 for r in after)
    for r in after:
        assert list(r.token_ids) == _greedy(merged, tokenizer, r.prompt_token_ids, len(r.token_ids))
