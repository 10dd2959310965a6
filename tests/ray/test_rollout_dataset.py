"""Ray Data generation over an actor pool of samplers, written to disk as it goes."""

import collections

import ray

from rayalign.rollout.dataset import prompts_dataset, read_rollouts, sample_dataset
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.pool import PoolResources
from rayalign.types import Message, Prompt, SamplingSettings


def test_sample_dataset_over_two_actors_writes_every_prompt(ray_cluster, tiny_model, tmp_path):
    prompts = [Prompt(id=f"q{i}", messages=(Message("user", f"item {i}"),), category="privacy") for i in range(12)]
    engine = EngineConfig(model=tiny_model, backend="vllm", dtype="float32", max_model_len=512)
    settings = SamplingSettings(n=2, temperature=1.0, max_new_tokens=8, seed=0)
    batches = [prompts[i : i + 4] for i in range(0, len(prompts), 4)]  # a row per batch, as stage 1 has per shard
    ds = sample_dataset(
        prompts_dataset(batches, shard=[0, 1, 2]), engine, PoolResources(num_workers=2, cpus=1.0), settings
    )
    out = tmp_path / "rollouts"
    ds.write_json(str(out))
    rows = ray.data.read_json(str(out)).take_all()
    rollouts = read_rollouts(rows)
    assert collections.Counter(r.prompt_id for r in rollouts) == {p.id: 2 for p in prompts}
    assert all(len(r.token_ids) == len(r.logprobs) > 0 for r in rollouts)
    assert sorted(row["shard"] for row in rows) == [0, 1, 2]  # other columns pass through
    assert len(list(out.iterdir())) >= 2  # one file per block: written as batches finish
