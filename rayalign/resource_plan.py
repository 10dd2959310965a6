"""The resource plan: what each stage asks of Ray at once, checked before Ray starts.

A Ray task asking for more than the cluster can ever offer stays pending
forever without an error, so every stage's demand is summed up front and
refused with the keys to change. The same arithmetic checks a config against
``cluster.*`` (:func:`check_resource_plan`, on load) and against a cluster
file at max scale (:func:`rayalign.clusterfile.check_config_fits`).

Imports only the config tree, so the config loader and the cluster-file
checks can both use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rayalign.config_tree import ClusterConfig, Config, LearnerConfig
from rayalign.errors import ConfigError


@dataclass(frozen=True)
class Demand:
    """What one group of actors asks of Ray."""

    section: str
    """Config section holding the actors' keys, e.g. rollout or rl.learner."""
    count: int
    cpus: float
    gpus: float
    resource: str
    count_key: str
    """The config key that sets ``count``."""

    def per_actor(self, kind: str) -> float:
        """CPUs or GPUs one actor asks."""
        return self.cpus if kind == "CPUs" else self.gpus

    def per_key(self, kind: str) -> str:
        """The config key that sets :meth:`per_actor`.

        >>> Demand("judge", 2, 0.5, 0.0, "", "judge.replicas").per_key("GPUs")
        'judge.gpus_per_replica'
        """
        unit = kind.lower()
        return f"judge.{unit}_per_replica" if self.section == "judge" else f"{self.section}.{unit}_per_worker"

    def describe(self, kind: str) -> str:
        """``rollout 2 x 1 (rollout.num_workers x rollout.cpus_per_worker)``."""
        return f"{self.section} {self.count} x {self.per_actor(kind):g} ({self.count_key} x {self.per_key(kind)})"


@dataclass(frozen=True)
class Total:
    """CPUs or GPUs a group of demands asks at once."""

    kind: str
    need: float
    used: tuple[Demand, ...]
    """The demands that ask any of ``kind``."""

    def exceeds(self, have: float) -> bool:
        return self.need > have + 1e-9

    def describe(self) -> str:
        """``rollout 1 x 1 (...) + judge 1 x 0.5 (...) = 1.5 CPUs``."""
        return f"{' + '.join(d.describe(self.kind) for d in self.used)} = {self.need:g} {self.kind}"

    @property
    def key(self) -> str:
        """The count key to lower first: the first demand's."""
        return self.used[0].count_key


def total(demands: list[Demand], kind: str) -> Total:
    """Sum ``count x per-actor`` of ``kind`` over ``demands``.

    >>> ds = [Demand("rollout", 2, 1.0, 0.0, "", "rollout.num_workers"),
    ...       Demand("judge", 1, 0.5, 0.0, "", "judge.replicas")]
    >>> total(ds, "CPUs").need, total(ds, "GPUs").used
    (2.5, ())
    """
    used = tuple(d for d in demands if d.per_actor(kind) > 0)
    return Total(kind, sum(d.count * d.per_actor(kind) for d in used), used)


def resource_units(demands: list[Demand]) -> dict[str, int]:
    """Units of each custom resource asked at once (one per actor).

    >>> resource_units([Demand("rollout", 2, 1, 0, "gpu", "rollout.num_workers"),
    ...                 Demand("judge", 1, 1, 0, "gpu", "judge.replicas")])
    {'gpu': 3}
    """
    units: dict[str, int] = {}
    for d in demands:
        if d.resource:
            units[d.resource] = units.get(d.resource, 0) + d.count
    return units


def _learners(stage: str, learner: LearnerConfig) -> Demand:
    """A training stage's Ray Train workers, keyed ``<stage>.learner.*``."""
    section = f"{stage}.learner"
    return Demand(
        section,
        learner.num_workers,
        learner.cpus_per_worker,
        learner.gpus_per_worker,
        learner.resource,
        f"{section}.num_workers",
    )


def stage_demands(cfg: Config) -> dict[str, list[Demand]]:
    """The actors each stage runs at the same time."""
    r, j = cfg.rollout, cfg.judge
    rollout = Demand("rollout", r.num_workers, r.cpus_per_worker, r.gpus_per_worker, r.resource, "rollout.num_workers")
    judge = Demand(
        "judge", max(j.replicas, j.max_replicas), j.cpus_per_replica, j.gpus_per_replica, j.resource, "judge.replicas"
    )
    sft, learn = (_learners(stage, getattr(cfg, stage).learner) for stage in ("sft", "rl"))
    ref = cfg.rl.reference
    scorer = [
        Demand("rl.reference", 1, ref.cpus_per_worker, ref.gpus_per_worker, ref.resource, "rl.reference.placement")
    ]
    rl = [rollout, judge, learn, *(scorer if ref.placement == "engine" else [])]
    return {"generate": [rollout, judge], "sft": [sft], "rl": rl, "eval": [rollout, judge]}


# ------------------------------------------------------- config vs cluster.*


def _fail(message: str, key: str, origins: dict) -> None:
    file, line = origins.get(key, (None, None))
    raise ConfigError(message, file=file, line=line, field=key)


def _offered(c: ClusterConfig) -> tuple[tuple[str, float, str], ...]:
    """(kind, amount, config key) of the CPUs and GPUs ``cluster.*`` offers."""
    return ("CPUs", c.num_cpus, "cluster.num_cpus"), ("GPUs", c.num_gpus, "cluster.num_gpus")


def _check_single_actors(cfg: Config, origins: dict) -> None:
    for demands in stage_demands(cfg).values():
        for d in demands:
            for kind, have, have_key in _offered(cfg.cluster):
                if d.per_actor(kind) > have:
                    message = (
                        f"one actor asks {d.per_actor(kind):g} {kind} but {have_key} is {have:g}: "
                        "it could never be placed"
                    )
                    _fail(message, d.per_key(kind), origins)
    r = cfg.rollout
    if r.gpus_per_worker > 0 and r.gpus_per_worker != r.tensor_parallel_size:
        _fail(
            f"must equal rollout.tensor_parallel_size ({r.tensor_parallel_size}) on GPU",
            "rollout.gpus_per_worker",
            origins,
        )
    if r.gpus_per_worker == 0 and r.tensor_parallel_size > 1:
        _fail("tensor parallelism needs GPUs: set rollout.gpus_per_worker", "rollout.tensor_parallel_size", origins)
    if cfg.judge.backend == "local" and cfg.judge.concurrent_batches > 1:
        message = "a local judge engine takes one batch at a time: use 1, or raise judge.max_batch_size"
        _fail(message, "judge.concurrent_batches", origins)


def _check_learners(cfg: Config, origins: dict) -> None:
    """Learner layouts that cannot run: an RL batch that does not split over the
    learners' micro-batches, several GPUs per learner, LoRA under ZeRO-3, LoRA RL without
    collective sync."""
    r = cfg.rl
    batch = r.prompts_per_step * r.group_size
    if batch % (r.learner.num_workers * r.micro_batch_size):
        _fail(
            f"rl.prompts_per_step x rl.group_size = {batch} completions per step must split evenly over "
            f"rl.learner.num_workers ({r.learner.num_workers}) x rl.micro_batch_size ({r.micro_batch_size})",
            "rl.micro_batch_size",
            origins,
        )
    for stage in ("sft", "rl"):
        if getattr(cfg, stage).learner.gpus_per_worker > 1:
            _fail("one GPU per learner at most; add learners instead", f"{stage}.learner.gpus_per_worker", origins)
    for stage in ("sft", "rl"):
        section = getattr(cfg, stage)
        if section.lora_rank > 0 and section.learner.strategy == "deepspeed" and section.learner.zero_stage == 3:
            message = f"LoRA with ZeRO-3 is not supported; use {stage}.learner.zero_stage <= 2 or {stage}.lora_rank=0"
            _fail(message, f"{stage}.lora_rank", origins)
    s = cfg.sft
    if s.loss_chunk > 0 and s.learner.strategy == "deepspeed" and s.learner.zero_stage == 3:
        _fail("sft.loss_chunk needs the whole LM head on each learner: ZeRO-3 shards it", "sft.loss_chunk", origins)
    if r.logprob_chunk > 0 and r.learner.strategy == "deepspeed" and r.learner.zero_stage == 3:
        _fail("rl.logprob_chunk needs the whole LM head on each learner: ZeRO-3 shards it", "rl.logprob_chunk", origins)
    if r.lora_rank > 0 and r.sync != "collective":
        _fail("LoRA RL syncs the adapters only, by collective broadcast: use rl.sync: collective", "rl.sync", origins)


def _check_totals(stage: str, demands: list[Demand], cfg: Config, origins: dict) -> None:
    for kind, have, key in _offered(cfg.cluster):
        need = total(demands, kind)
        if need.exceeds(have):
            _fail(
                f"stage {stage} runs {need.describe()} at once, but {key} is {have:g}: "
                f"Ray would wait forever. Lower those or raise {key}.",
                need.key,
                origins,
            )
    for name, units in resource_units(demands).items():
        have = cfg.cluster.resources.get(name, 0)
        if units > have:
            _fail(
                f"stage {stage} needs {units} units of custom resource {name!r}, but cluster.resources offers {have:g}",
                f"{next(d.section for d in demands if d.resource == name)}.resource",
                origins,
            )


def check_resource_plan(cfg: Config, origins: dict | None = None) -> None:
    """Refuse a config whose stages cannot all be placed on the cluster, or
    whose learners cannot be laid out as asked.

    ``origins`` maps dotted keys to (file, line) for the error message.

    >>> check_resource_plan(Config())  # the defaults fit 2 CPUs
    """
    origins = origins or {}
    _check_single_actors(cfg, origins)
    _check_learners(cfg, origins)
    for stage, demands in stage_demands(cfg).items():
        _check_totals(stage, demands, cfg, origins)
