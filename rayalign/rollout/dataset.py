"""Large offline generation on Ray Data: prompts sharded over a pool of sampler actors.

Rows carry typed records as JSON (``prompt`` in, ``rollout`` out), so a
dataset written to disk reads back as :class:`~rayalign.types.Rollout`.
"""

from __future__ import annotations

from collections.abc import Iterable

import ray

from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.pool import PoolResources
from rayalign.rollout.vllm_backend import engine_env
from rayalign.rollout.worker import RolloutWorker
from rayalign.types import Prompt, Rollout, SamplingSettings, from_json, to_json


class _SampleBatch:
    """Ray Data UDF: one engine per actor, built once."""

    def __init__(self, engine: EngineConfig, settings: SamplingSettings):
        self.worker, self.settings = RolloutWorker(engine), settings

    def __call__(self, batch: dict) -> dict:
        prompts = [from_json(Prompt, text) for text in batch["prompt"]]
        rollouts = self.worker.generate(prompts, self.settings)
        return {"prompt_id": [r.prompt_id for r in rollouts], "rollout": [to_json(r) for r in rollouts]}


def prompts_dataset(prompts: Iterable[Prompt]) -> ray.data.Dataset:
    """A dataset with one JSON-encoded :class:`Prompt` per row."""
    return ray.data.from_items([{"prompt_id": p.id, "prompt": to_json(p)} for p in prompts])


def sample_dataset(
    ds: ray.data.Dataset,
    engine: EngineConfig,
    resources: PoolResources,
    settings: SamplingSettings,
    batch_size: int = 8,
) -> ray.data.Dataset:
    """Map ``ds`` (rows with a ``prompt`` column) to rows of rollouts on an actor pool.

    The pool has ``resources.num_workers`` actors, each asking for the same
    CPUs/GPUs/custom resource as a RolloutPool actor; batches stream through
    them, so writing the result writes as generation goes.
    """
    extra = {"resources": {resources.resource: 1}} if resources.resource else {}
    return ds.map_batches(
        _SampleBatch,
        fn_constructor_kwargs={"engine": engine, "settings": settings},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=resources.num_workers),
        num_cpus=resources.cpus,
        num_gpus=resources.gpus or None,
        runtime_env={"env_vars": engine_env(engine)},
        **extra,
    )


def read_rollouts(rows: Iterable[dict]) -> list[Rollout]:
    """Typed rollouts from dataset rows (e.g. ``ds.take_all()``)."""
    return [from_json(Rollout, row["rollout"]) for row in rows]
