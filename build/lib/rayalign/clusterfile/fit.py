"""Either kind of cluster file: validate it, compute the most it can offer, and
check that a config's stages fit it at max scale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rayalign._yaml import load_yaml
from rayalign.clusterfile.kuberay import kuberay_clusters
from rayalign.clusterfile.launcher import launcher_groups, validate_launcher
from rayalign.clusterfile.nodes import Capacity, line_at, load_documents, sum_groups
from rayalign.config_tree import Config
from rayalign.errors import ConfigError
from rayalign.resource_plan import Demand, resource_units, stage_demands, total


def _is_kuberay(docs: list[Any]) -> bool:
    return bool(docs) and isinstance(docs[0], dict) and "apiVersion" in docs[0]


def validate_cluster_file(path: str | Path) -> dict | list[dict]:
    """Validate a launcher YAML or a KubeRay manifest, whichever ``path`` holds."""
    docs, file = load_documents(path), str(path)
    if _is_kuberay(docs):
        kuberay_clusters(docs, file)
        return docs
    return validate_launcher(docs[0] if len(docs) == 1 else None, file)


def capacity(path: str | Path) -> Capacity:
    """The most a cluster file offers at once: the head plus every worker type at its maximum.

    Launcher: head + sum of max_workers x the type's ``resources``. KubeRay:
    head + sum of maxReplicas x what one pod offers (rayStartParams num-cpus,
    num-gpus and resources, else the container's cpu and nvidia.com/gpu
    limits). E.g. a CPU-0 head plus 2 nodes of {CPU: 8, GPU: 1, judge: 1}
    gives Capacity(cpus=16, gpus=2, resources={"judge": 2}).
    """
    docs, file = load_documents(path), str(path)
    if not _is_kuberay(docs):
        raw = docs[0] if len(docs) == 1 else None
        return sum_groups(launcher_groups(validate_launcher(raw, file), raw, file))
    clusters = kuberay_clusters(docs, file)
    if len(clusters) != 1:
        message = f"capacity needs one cluster spec; the file holds {len(clusters)}"
        raise ConfigError(message, file=file, line=1)
    return sum_groups(clusters[0])


# ------------------------------------------------------------ config vs cluster file


def check_config_fits(cfg: Config, cluster_path: str | Path) -> Capacity:
    """Refuse a config whose stages could never be placed on a cluster file at max scale.

    For each stage of :func:`rayalign.resource_plan.stage_demands`: (1) each actor
    fits on a node type offering its custom resource; (2) the stage's
    custom-resource units, CPUs and GPUs fit the cluster's totals; (3) the
    actors pinned to a custom resource fit the CPUs and GPUs of the node
    types offering it. Errors name the config file, the line and the key to
    change (e.g. ``judge.replicas``). Returns the capacity checked against.
    """
    cap = capacity(cluster_path)
    where = str(cluster_path)
    for stage, demands in stage_demands(cfg).items():
        for d in demands:
            _check_actor(d, cap, where, cfg)
        _check_stage(stage, demands, cap, where, cfg)
    return cap


def _fail(cfg: Config, key: str, message: str) -> None:
    """Raise at ``key`` of the config file (the line where it, or its section, is written)."""
    line = None
    if Path(cfg.source).is_file():
        line = line_at(load_yaml(cfg.source, ConfigError), key.split("."))
    raise ConfigError(message, file=cfg.source, line=line, field=key)


def _check_actor(d: Demand, cap: Capacity, where: str, cfg: Config) -> None:
    offering = [g for g in cap.groups if g.count > 0 and (not d.resource or g.resources.get(d.resource, 0) >= 1)]
    if not offering:
        offered = ", ".join(sorted(cap.resources)) or "none"
        message = f"no node type in {where} offers custom resource {d.resource!r} (offered: {offered})"
        _fail(cfg, f"{d.section}.resource", message)
    if any(g.cpus >= d.cpus and g.gpus >= d.gpus for g in offering):
        return
    kind = "CPUs" if d.gpus <= max(g.gpus for g in offering) else "GPUs"
    sizes = ", ".join(f"{g.name}: {g.cpus:g} CPUs + {g.gpus:g} GPUs" for g in offering)
    message = (
        f"one {d.section} actor asks {d.cpus:g} CPUs + {d.gpus:g} GPUs, more than any node of "
        f"{where} that may take it has ({sizes}): it could never be placed"
    )
    _fail(cfg, d.per_key(kind), message)


def _check_stage(stage: str, demands: list[Demand], cap: Capacity, where: str, cfg: Config) -> None:
    units = resource_units(demands)
    for name, need in units.items():
        have = cap.resources.get(name, 0)
        if need > have:
            key = next(d.count_key for d in demands if d.resource == name)
            message = (
                f"stage {stage} needs {need} units of custom resource {name!r} at once, "
                f"but {where} offers at most {have:g}"
            )
            _fail(cfg, key, message)
    _check_sum(stage, demands, cap.cpus, cap.gpus, where, cfg)
    for name in units:
        # Actors that ask a custom resource can only use the nodes offering it.
        pinned = [d for d in demands if d.resource == name]
        nodes = [g for g in cap.groups if g.resources.get(name, 0) > 0]
        cpus, gpus = sum(g.count * g.cpus for g in nodes), sum(g.count * g.gpus for g in nodes)
        _check_sum(stage, pinned, cpus, gpus, f"the nodes of {where} offering {name!r}", cfg)


def _check_sum(stage: str, demands: list[Demand], cpus: float, gpus: float, where: str, cfg: Config) -> None:
    """The CPUs, then the GPUs, of ``demands`` against what ``where`` offers."""
    for kind, have in (("CPUs", cpus), ("GPUs", gpus)):
        need = total(demands, kind)
        if need.exceeds(have):
            message = f"stage {stage} runs {need.describe()} at once, but {where} offers at most {have:g}"
            _fail(cfg, need.key, message)
