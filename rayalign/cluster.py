"""The Ray cluster: the resource plan of each stage, checked before Ray starts,
and starting or joining Ray.

A Ray task asking for more than the cluster can ever offer stays pending
forever without an error, so every stage's demand is summed up front and
refused with the keys to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rayalign.config import ClusterConfig, Config
from rayalign.errors import ConfigError


@dataclass(frozen=True)
class Demand:
    """What one group of actors asks of Ray."""

    section: str
    """Config section, e.g. rollout."""
    count: int
    cpus: float
    gpus: float
    resource: str
    count_key: str
    """The config key that sets ``count``."""

    def describe(self, kind: str) -> str:
        per = self.cpus if kind == "CPUs" else self.gpus
        unit = "cpus" if kind == "CPUs" else "gpus"
        per_key = {"judge": f"judge.{unit}_per_replica"}.get(self.section, f"{self.section}.{unit}_per_worker")
        return f"{self.section} {self.count} x {per:g} ({self.count_key} x {per_key})"


def stage_demands(cfg: Config) -> dict[str, list[Demand]]:
    """The actors each stage runs at the same time."""
    r, j = cfg.rollout, cfg.judge
    rollout = Demand("rollout", r.num_workers, r.cpus_per_worker, r.gpus_per_worker, r.resource, "rollout.num_workers")
    judge = Demand(
        "judge", max(j.replicas, j.max_replicas), j.cpus_per_replica, j.gpus_per_replica, j.resource, "judge.replicas"
    )
    s, rl = cfg.sft, cfg.rl
    sft = Demand("sft", s.num_workers, s.cpus_per_worker, s.gpus_per_worker, s.resource, "sft.num_workers")
    learn = Demand("rl", rl.num_workers, rl.cpus_per_worker, rl.gpus_per_worker, rl.resource, "rl.num_workers")
    return {"generate": [rollout, judge], "sft": [sft], "rl": [rollout, judge, learn], "eval": [rollout, judge]}


def _fail(message: str, key: str, origins: dict) -> None:
    file, line = origins.get(key, (None, None))
    raise ConfigError(message, file=file, line=line, field=key)


def _check_single_actors(cfg: Config, origins: dict) -> None:
    c = cfg.cluster
    for demands in stage_demands(cfg).values():
        for d in demands:
            per_cpu_key = "judge.cpus_per_replica" if d.section == "judge" else f"{d.section}.cpus_per_worker"
            per_gpu_key = per_cpu_key.replace("cpus", "gpus")
            if d.cpus > c.num_cpus:
                _fail(
                    f"one actor asks {d.cpus:g} CPUs but cluster.num_cpus is {c.num_cpus:g}: it could never be placed",
                    per_cpu_key,
                    origins,
                )
            if d.gpus > c.num_gpus:
                _fail(
                    f"one actor asks {d.gpus:g} GPUs but cluster.num_gpus is {c.num_gpus:g}: it could never be placed",
                    per_gpu_key,
                    origins,
                )
    r = cfg.rollout
    if r.gpus_per_worker > 0 and r.gpus_per_worker != r.tensor_parallel_size:
        _fail(
            f"must equal rollout.tensor_parallel_size ({r.tensor_parallel_size}) on GPU",
            "rollout.gpus_per_worker",
            origins,
        )
    if r.gpus_per_worker == 0 and r.tensor_parallel_size > 1:
        _fail("tensor parallelism needs GPUs: set rollout.gpus_per_worker", "rollout.tensor_parallel_size", origins)


def _check_learners(cfg: Config, origins: dict) -> None:
    """Learner layouts that cannot run: an RL batch that does not split over the
    learners' micro-batches, several GPUs per learner, LoRA under ZeRO-3."""
    s, r = cfg.sft, cfg.rl
    batch = r.prompts_per_step * r.group_size
    if batch % (r.num_workers * r.micro_batch_size):
        _fail(
            f"rl.prompts_per_step x rl.group_size = {batch} completions per step must split evenly over "
            f"rl.num_workers ({r.num_workers}) x rl.micro_batch_size ({r.micro_batch_size})",
            "rl.micro_batch_size",
            origins,
        )
    for section in ("sft", "rl"):
        if getattr(cfg, section).gpus_per_worker > 1:
            _fail("one GPU per learner at most; add learners instead", f"{section}.gpus_per_worker", origins)
    if s.lora_rank > 0 and s.strategy == "deepspeed" and s.zero_stage == 3:
        _fail("LoRA with ZeRO-3 is not supported; use sft.zero_stage <= 2 or sft.lora_rank=0", "sft.lora_rank", origins)


def _check_totals(stage: str, demands: list[Demand], cfg: Config, origins: dict) -> None:
    c = cfg.cluster
    for kind, have, key in (("CPUs", c.num_cpus, "cluster.num_cpus"), ("GPUs", c.num_gpus, "cluster.num_gpus")):
        used = [d for d in demands if (d.cpus if kind == "CPUs" else d.gpus) > 0]
        need = sum(d.count * (d.cpus if kind == "CPUs" else d.gpus) for d in used)
        if need > have + 1e-9:
            parts = " + ".join(d.describe(kind) for d in used)
            _fail(
                f"stage {stage} runs {parts} = {need:g} {kind} at once, but {key} is {have:g}: "
                f"Ray would wait forever. Lower those or raise {key}.",
                used[0].count_key,
                origins,
            )
    by_resource: dict[str, int] = {}
    for d in demands:
        if d.resource:
            by_resource[d.resource] = by_resource.get(d.resource, 0) + d.count
    for name, need in by_resource.items():
        have = c.resources.get(name, 0)
        if need > have:
            _fail(
                f"stage {stage} needs {need} units of custom resource {name!r}, but cluster.resources offers {have:g}",
                f"{next(d.section for d in demands if d.resource == name)}.resource",
                origins,
            )


def check_resource_plan(cfg: Config, origins: dict | None = None) -> None:
    """Refuse a config whose stages cannot all be placed on the cluster, or
    whose learners cannot be laid out as asked.

    >>> check_resource_plan(Config())  # the defaults fit 2 CPUs
    """
    origins = origins or {}
    _check_single_actors(cfg, origins)
    _check_learners(cfg, origins)
    for stage, demands in stage_demands(cfg).items():
        _check_totals(stage, demands, cfg, origins)


# ----------------------------------------------------------- starting Ray

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(cluster: ClusterConfig, *, runtime_env: dict | None = None):
    """Start a private local Ray (``address: local``) or join an existing one.

    ``address: local`` never attaches to a ``ray start`` cluster that happens
    to run on the machine.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray
    if cluster.address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            address="local",
            num_cpus=cluster.num_cpus,
            num_gpus=cluster.num_gpus,
            resources=dict(cluster.resources) or None,
            object_store_memory=cluster.object_store_mib << 20,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    else:
        ray.init(address=cluster.address, runtime_env=runtime_env)
    return ray
