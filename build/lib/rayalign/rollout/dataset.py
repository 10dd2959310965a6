"""Large offline generation on Ray Data: batches of prompts over a pool of sampler actors.

A row holds a batch of prompts as a JSON list of :class:`~rayalign.types.Prompt`
records in its ``prompts`` column; the sampler adds a ``rollouts`` column with
the batch's :class:`~rayalign.types.Rollout` records, and every other column
passes through. Stage 1 makes one row per shard (the unit of resume), so the
next operator sees a whole shard at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import ray

from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.pool import PoolResources
from rayalign.rollout.vllm_backend import engine_env
from rayalign.rollout.worker import RolloutWorker
from rayalign.types import Prompt, Rollout, SamplingSettings, from_dict, to_dict


class _SampleRows:
    """Ray Data UDF: one engine per actor, built once."""

    def __init__(self, engine: EngineConfig, settings: SamplingSettings):
        self.worker, self.settings = RolloutWorker(engine), settings

    def __call__(self, batch: dict) -> dict:
        rollouts = []
        for prompts_json in batch["prompts"]:
            prompts = decode_prompts(prompts_json)
            rollouts.append(json.dumps([to_dict(r) for r in self.worker.generate(prompts, self.settings)]))
        return {**batch, "rollouts": rollouts}


def encode_prompts(prompts: Sequence[Prompt]) -> str:
    return json.dumps([to_dict(p) for p in prompts], ensure_ascii=False)


def decode_prompts(text: str) -> list[Prompt]:
    return [from_dict(Prompt, p) for p in json.loads(text)]


def decode_rollouts(text: str) -> list[Rollout]:
    return [from_dict(Rollout, r) for r in json.loads(text)]


def prompts_dataset(batches: Iterable[Sequence[Prompt]], **columns: Sequence) -> ray.data.Dataset:
    """One row (and one block) per batch of prompts; ``columns`` add one value per batch."""
    batches = list(batches)
    rows = [
        {"prompts": encode_prompts(b), **{name: values[i] for name, values in columns.items()}}
        for i, b in enumerate(batches)
    ]
    return ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))


def sample_dataset(
    ds: ray.data.Dataset,
    engine: EngineConfig,
    resources: PoolResources,
    settings: SamplingSettings,
) -> ray.data.Dataset:
    """Map each row's ``prompts`` to ``rollouts`` on an actor pool of sampler engines.

    The pool has ``resources.num_workers`` actors, each asking for the same
    CPUs/GPUs/custom resource as a RolloutPool actor; rows stream through
    them, so a downstream operator sees each row as soon as it is sampled.
    """
    extra = {"resources": {resources.resource: 1}} if resources.resource else {}
    return ds.map_batches(
        _SampleRows,
        fn_constructor_kwargs={"engine": engine, "settings": settings},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=resources.num_workers),
        num_cpus=resources.cpus,
        num_gpus=resources.gpus or None,
        runtime_env={"env_vars": engine_env(engine)},
        **extra,
    )


def read_rollouts(rows: Iterable[dict]) -> list[Rollout]:
    """Typed rollouts from dataset rows (e.g. ``ds.take_all()``)."""
    return [r for row in rows for r in decode_rollouts(row["rollouts"])]
