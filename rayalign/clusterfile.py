"""Cluster files, checked offline: Ray cluster-launcher YAMLs and KubeRay manifests.

``ray up`` has no dry run and a KubeRay manifest is only checked once applied,
so rayalign checks both on this machine, computes the most a cluster file can
ever offer (:func:`capacity`), and refuses a config whose stages could not be
placed on it (:func:`check_config_fits`): a Ray request that can never be
placed waits forever without an error. Nothing here contacts a cloud.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Ray's own launcher schema; a private module, so this file is its one user.
from ray.autoscaler._private.util import prepare_config, validate_config

from rayalign._yaml import Node, _LineLoader, line_of, load_yaml
from rayalign.cluster import Demand, stage_demands
from rayalign.config import Config
from rayalign.errors import ConfigError, LocatedError

# Ray resource names that are not custom resources.
_BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


@dataclass(frozen=True)
class NodeGroup:
    """One node type (launcher) or group (KubeRay) at its largest."""

    name: str
    count: int
    """Most nodes of this type at once (the head counts once)."""
    cpus: float
    gpus: float
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources per node, e.g. {"learner": 8}."""


@dataclass(frozen=True)
class Capacity:
    """The most a cluster file can offer at once, summed over its nodes at max scale."""

    cpus: float
    gpus: float
    resources: dict[str, float]
    """Custom resources, e.g. {"rollout": 2, "judge": 2, "learner": 8}."""
    groups: tuple[NodeGroup, ...] = ()
    """The node types summed, to check that each actor fits on one node."""


def _total(groups: list[NodeGroup]) -> Capacity:
    """Sum node groups into a capacity.

    >>> _total([NodeGroup("head", 1, 0, 0), NodeGroup("gpu", 2, 8, 1, {"judge": 1})]).resources
    {'judge': 2}
    """
    resources: dict[str, float] = {}
    for g in groups:
        for name, per_node in g.resources.items():
            resources[name] = resources.get(name, 0) + g.count * per_node
    cpus = sum(g.count * g.cpus for g in groups)
    gpus = sum(g.count * g.gpus for g in groups)
    return Capacity(cpus=cpus, gpus=gpus, resources=resources, groups=tuple(groups))


# ------------------------------------------------------------ shared helpers


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def _dotted(path: list) -> str:
    """A key path as a field name.

    >>> _dotted(["spec", "workerGroupSpecs", 1, "groupName"])
    'spec.workerGroupSpecs[1].groupName'
    """
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_at(root: Any, path: list) -> int | None:
    """Line of the deepest key of ``path`` that exists in ``root``."""
    node, line = root, getattr(root, "line", None)
    for part in path:
        inside = isinstance(node, dict) and part in node
        inside = inside or (isinstance(node, list) and isinstance(part, int) and part < len(node))
        if not inside:
            break
        line, node = line_of(node, part) or line, node[part]
    return line


def _at(message: str, file: str, root: Any, path: list) -> ConfigError:
    """An error at ``path`` below ``root``: file, line of the deepest key found, dotted field."""
    return ConfigError(message, file=file, line=_line_at(root, path), field=_dotted(path) or None)


def _bad(message: str, file: str, node: Any, key: str | int, path: list) -> ConfigError:
    """An error at ``node[key]``, where ``path`` leads from the document to ``node``."""
    return ConfigError(message, file=file, line=line_of(node, key), field=_dotted([*path, key]))


def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _load_documents(path: str | Path) -> list[Any]:
    """Every non-empty YAML document of a file, mappings remembering their lines."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=file) from None
    try:
        docs = list(yaml.load_all(text, Loader=_LineLoader))  # noqa: S506 - SafeLoader subclass
    except LocatedError as e:
        raise ConfigError(e.message, file=file, line=e.line, field=e.field) from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise ConfigError(f"invalid YAML: {e.problem}", file=file, line=line) from None
    return [d for d in docs if d is not None]


# ------------------------------------------------------------ launcher YAMLs


def _prepare(raw: dict) -> dict:
    """Ray's prepare_config, except for a fake_multinode file, used as written.

    Ray 2.60's wheel lacks fake_multi_node/example.yaml, the defaults that
    prepare_config merges, so such a file must be complete (the autoscaler
    reads it raw).
    """
    if raw.get("provider", {}).get("type") == "fake_multinode":
        return raw
    return prepare_config(raw)


def validate_launcher_yaml(path: str | Path) -> dict:
    """Check a Ray cluster-launcher YAML with Ray's own schema, offline.

    Returns the config as ``ray up`` would use it, with Ray's provider defaults
    filled in. Raises :class:`ConfigError` naming file, line and key, e.g.
    ``cluster/aws.yaml:97: available_node_types.rollout.max_wokers: unknown
    key; did you mean 'max_workers'? (Ray cluster schema)``.
    """
    return _validate_launcher(load_yaml(path, ConfigError), str(path))


def _validate_launcher(raw: Any, file: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError("must be one mapping of launcher keys", file=file, line=1)
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not provider.get("type"):
        raise _at("missing; set it to aws, gcp, ...", file, raw, ["provider", "type"])
    try:
        # Only merges Ray's bundled provider defaults: no cloud call, no boto3.
        prepared = _prepare(_plain(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        raise _schema_error(e, raw, file) from None
    except NotImplementedError:
        message = f"Ray has no node provider {provider['type']!r}"
        raise _at(message, file, raw, ["provider", "type"]) from None
    except (ValueError, AssertionError, RuntimeError) as e:
        raise _rule_error(str(e), raw, file) from None
    _check_worker_counts(prepared, raw, file)
    return prepared


def _schema_error(e: jsonschema.ValidationError, raw: Node, file: str) -> ConfigError:
    """Turn a jsonschema error into one naming the key at fault."""
    path = list(e.absolute_path)
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        known = list(e.schema.get("properties", {}))
        patterns = list(e.schema.get("patternProperties", {}))
        unknown = [k for k in e.instance if k not in known and not any(re.search(p, k) for p in patterns)]
        if unknown:
            message = f"unknown key{_suggest(unknown[0], known)} (Ray cluster schema)"
            return _at(message, file, raw, [*path, unknown[0]])
    if e.validator == "required" and isinstance(e.instance, dict):
        missing = [k for k in e.validator_value if k not in e.instance]
        if missing:
            return _at("missing (Ray cluster schema)", file, raw, [*path, missing[0]])
    return _at(f"{e.message} (Ray cluster schema)", file, raw, path)


def _rule_error(ray_message: str, raw: Node, file: str) -> ConfigError:
    """Locate a rule Ray checks outside its schema; Ray's own words otherwise."""
    types = raw.get("available_node_types")
    if not isinstance(types, dict):
        return ConfigError(ray_message, file=file)
    head = raw.get("head_node_type")
    if head not in types:
        message = f"{head!r} is not one of available_node_types ({', '.join(types)})"
        return _at(message, file, raw, ["head_node_type"])
    mins = sum(t.get("min_workers", 0) for t in types.values() if isinstance(t, dict))
    if mins > raw.get("max_workers", mins):
        message = f"{raw['max_workers']} is below the sum of min_workers ({mins})"
        return _at(message, file, raw, ["max_workers"])
    return ConfigError(ray_message, file=file)


def _check_worker_counts(prepared: dict, raw: Node, file: str) -> None:
    """Per-type min <= max, and a global cap that lets every type reach its max.

    rayalign runs samplers, judges and learners at once, so a global
    max_workers below the per-type maxima would leave a stage unplaceable.
    """
    types = prepared["available_node_types"]
    for name, t in types.items():
        if t["min_workers"] > t["max_workers"]:
            message = f"{t['min_workers']} is above max_workers ({t['max_workers']})"
            raise _at(message, file, raw, ["available_node_types", name, "min_workers"])
    most = sum(t["max_workers"] for t in types.values())
    if prepared["max_workers"] < most:
        message = (
            f"{prepared['max_workers']} is below the sum of the node types' max_workers ({most}); "
            "rayalign runs every type at once, so the cluster could never reach them"
        )
        raise _at(message, file, raw, ["max_workers"])


def _launcher_groups(prepared: dict, raw: Node, file: str) -> list[NodeGroup]:
    groups = []
    for name, t in prepared["available_node_types"].items():
        res = t.get("resources", {})
        for kind in ("CPU", "GPU"):
            if kind not in res:
                message = f"declare {kind} (0 if none) so capacity is known offline, without asking the cloud"
                raise _at(message, file, raw, ["available_node_types", name, "resources", kind])
        count = t["max_workers"] + (1 if name == prepared["head_node_type"] else 0)
        custom = {k: float(v) for k, v in res.items() if k not in _BUILTIN_RESOURCES}
        groups.append(NodeGroup(name, count, float(res["CPU"]), float(res["GPU"]), custom))
    return groups


# ------------------------------------------------------------ KubeRay manifests

_KINDS = ("RayCluster", "RayJob")
_CPU_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_EXAMPLE = r"""'"{\"judge\": 1}"'"""  # rayStartParams.resources as KubeRay's docs write it


def _need(node: Any, key: str, path: list, file: str, kind: type | tuple = dict, what: str = "a mapping") -> Any:
    """``node[key]`` if present and of ``kind``; else an error naming file, line and field."""
    if not isinstance(node, dict) or node.get(key) in (None, ""):
        raise _bad("missing", file, node, key, path)
    value = node[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(f"must be {what}; got {value!r}", file, node, key, path)
    return value


def validate_kuberay(path: str | Path) -> list[dict]:
    """Check KubeRay RayCluster / RayJob manifests (one or more YAML documents).

    Checks what the operator would refuse or silently get wrong: apiVersion
    ray.io/v1, kind, metadata.name, rayStartParams (string values, parseable
    custom resources), each worker group's groupName and minReplicas <=
    replicas <= maxReplicas, each Ray container's image and resource limits,
    and a RayJob's entrypoint, runtime env and rayClusterSpec. Errors name
    file, line and field, e.g. ``raycluster.yaml:70:
    spec.workerGroupSpecs[1].groupName: missing``.
    """
    docs = _load_documents(path)
    _validate_kuberay(docs, str(path))
    return docs


def _validate_kuberay(docs: list[Any], file: str) -> list[list[NodeGroup]]:
    """Check every document; return the node groups of each cluster spec."""
    if not docs:
        raise ConfigError("holds no YAML document", file=file, line=1)
    clusters = []
    for doc in docs:
        if not isinstance(doc, dict):
            message = "must be a mapping (a Kubernetes object)"
            raise ConfigError(message, file=file, line=getattr(doc, "line", None))
        if _need(doc, "apiVersion", [], file, str, "a string") != "ray.io/v1":
            raise _bad(f"must be ray.io/v1; got {doc['apiVersion']!r}", file, doc, "apiVersion", [])
        kind = _need(doc, "kind", [], file, str, "a string")
        if kind not in _KINDS:
            raise _bad(f"must be one of {', '.join(_KINDS)}; got {kind!r}", file, doc, "kind", [])
        _need(_need(doc, "metadata", [], file), "name", ["metadata"], file, str, "a string")
        spec = _need(doc, "spec", [], file)
        if kind == "RayCluster":
            clusters.append(_cluster_groups(spec, ["spec"], file))
        elif _job_runs_own_cluster(spec, ["spec"], file):
            job_cluster = spec["rayClusterSpec"]
            clusters.append(_cluster_groups(job_cluster, ["spec", "rayClusterSpec"], file))
    return clusters


def _cluster_groups(spec: dict, path: list, file: str) -> list[NodeGroup]:
    """Check a RayCluster spec; return its head and worker groups at max scale."""
    head = _need(spec, "headGroupSpec", path, file)
    groups = [_pod_group("head", 1, head, [*path, "headGroupSpec"], file)]
    workers = _need(spec, "workerGroupSpecs", path, file, list, "a list of worker groups")
    for i, group in enumerate(workers):
        gpath = [*path, "workerGroupSpecs", i]
        if not isinstance(group, dict):
            raise _bad("must be a mapping", file, workers, i, gpath[:-1])
        name = _need(group, "groupName", gpath, file, str, "a string")
        if name in {g.name for g in groups[1:]}:
            raise _bad(f"{name!r} names two worker groups", file, group, "groupName", gpath)
        groups.append(_pod_group(name, _most_pods(group, gpath, file), group, gpath, file))
    return groups


def _most_pods(group: dict, path: list, file: str) -> int:
    """Check minReplicas <= replicas <= maxReplicas; return maxReplicas x numOfHosts."""
    low = _need(group, "minReplicas", path, file, int, "a whole number")
    high = _need(group, "maxReplicas", path, file, int, "a whole number")
    replicas, hosts = group.get("replicas", low), group.get("numOfHosts", 1)
    if low < 0:
        raise _bad(f"must be >= 0; got {low}", file, group, "minReplicas", path)
    if high < low:
        raise _bad(f"{high} is below minReplicas ({low})", file, group, "maxReplicas", path)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not low <= replicas <= high:
        message = f"must be a whole number from minReplicas ({low}) to maxReplicas ({high}); got {replicas!r}"
        raise _bad(message, file, group, "replicas", path)
    if not isinstance(hosts, int) or isinstance(hosts, bool) or hosts < 1:
        raise _bad(f"must be a whole number >= 1; got {hosts!r}", file, group, "numOfHosts", path)
    return high * hosts


def _pod_group(name: str, count: int, group: dict, path: list, file: str) -> NodeGroup:
    """Check one head or worker group; return what one of its pods offers Ray."""
    params = _need(group, "rayStartParams", path, file)
    ppath = [*path, "rayStartParams"]
    for key, value in params.items():
        if not isinstance(value, str):
            # The CRD types rayStartParams as strings: an unquoted 0 is refused on apply.
            raise _bad(f"must be a string (quote it); got {value!r}", file, params, key, ppath)
    pod = _need(_need(group, "template", path, file), "spec", [*path, "template"], file)
    containers = _need(pod, "containers", [*path, "template", "spec"], file, list, "a list of containers")
    cpath = [*path, "template", "spec", "containers", 0]  # KubeRay runs Ray in the first container
    _need(containers[0] if containers else None, "image", cpath, file, str, "an image name")
    limits = _need(_need(containers[0], "resources", cpath, file), "limits", [*cpath, "resources"], file)
    lpath = [*cpath, "resources", "limits"]
    for key in ("cpu", "memory"):
        _need(limits, key, lpath, file, (str, int, float), "a quantity")
    cpus = _number(params, "num-cpus", ppath, file) if "num-cpus" in params else _cpu_quantity(limits, lpath, file)
    gpu_source, gpu_key, gpu_path = (
        (params, "num-gpus", ppath) if "num-gpus" in params else (limits, "nvidia.com/gpu", lpath)
    )
    gpus = _number(gpu_source, gpu_key, gpu_path, file) if gpu_key in gpu_source else 0.0
    custom = _custom_resources(params, ppath, file) if "resources" in params else {}
    return NodeGroup(name, count, cpus, gpus, custom)


def _number(node: dict, key: str, path: list, file: str) -> float:
    try:
        value = float(node[key])
    except (TypeError, ValueError):
        value = -1.0
    if value < 0:
        raise _bad(f"must be a number >= 0; got {node[key]!r}", file, node, key, path)
    return value


def _cpu_quantity(limits: dict, path: list, file: str) -> float:
    """A Kubernetes CPU quantity in CPUs: "8" -> 8.0, "500m" -> 0.5."""
    match = _CPU_QUANTITY.match(str(limits["cpu"]))
    if not match:
        message = f"must be a CPU quantity such as 8 or 500m; got {limits['cpu']!r}"
        raise _bad(message, file, limits, "cpu", path)
    return float(match[1]) / (1000 if match[2] else 1)


def _custom_resources(params: dict, path: list, file: str) -> dict[str, float]:
    r"""Parse rayStartParams.resources: quoted JSON as KubeRay documents it, or plain JSON.

    >>> _custom_resources({"resources": '"{\\"judge\\": 1}"'}, [], "f.yaml")
    {'judge': 1.0}
    """
    message = f"must be a JSON object of numbers such as {_EXAMPLE}; got {params['resources']!r}"
    bad = _bad(message, file, params, "resources", path)
    try:
        value = json.loads(params["resources"])
        value = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        raise bad from None
    numbers = isinstance(value, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value.values()
    )
    if not numbers:
        raise bad
    if _BUILTIN_RESOURCES & set(value):
        message = "CPU and GPU belong in num-cpus / num-gpus or the container limits"
        raise _bad(message, file, params, "resources", path)
    return {k: float(v) for k, v in value.items()}


def _job_runs_own_cluster(spec: dict, path: list, file: str) -> bool:
    """Check a RayJob spec; False when it runs on an existing cluster (clusterSelector)."""
    _need(spec, "entrypoint", path, file, str, "a command")
    if not isinstance(spec.get("shutdownAfterJobFinishes", False), bool):
        raise _bad("must be true or false", file, spec, "shutdownAfterJobFinishes", path)
    if "runtimeEnvYAML" in spec:
        _check_runtime_env(spec, path, file)
    if "clusterSelector" in spec:
        return False
    _need(spec, "rayClusterSpec", path, file)
    return True


def _check_runtime_env(spec: dict, path: list, file: str) -> None:
    """runtimeEnvYAML must parse as a mapping; a working_dir must be a remote URI."""
    text = _need(spec, "runtimeEnvYAML", path, file, str, "a YAML block (runtimeEnvYAML: |)")
    key_line = line_of(spec, "runtimeEnvYAML")
    field_name = _dotted([*path, "runtimeEnvYAML"])
    try:
        env = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        # The block starts on the line after the key.
        line = key_line + e.problem_mark.line + 1 if key_line and e.problem_mark else key_line
        message = f"invalid YAML: {e.problem}"
        raise ConfigError(message, file=file, line=line, field=field_name) from None
    if not isinstance(env, dict):
        message = "must be a mapping (working_dir, pip, env_vars, ...)"
        raise _bad(message, file, spec, "runtimeEnvYAML", path)
    working_dir = env.get("working_dir")
    if working_dir is not None and "://" not in str(working_dir):
        message = (
            f"{working_dir!r} is a local path, but a RayJob has no local files to upload: "
            "use a remote URI (https://.../archive/<ref>.zip, s3://, gs://)"
        )
        raise ConfigError(message, file=file, line=key_line, field=f"{field_name}.working_dir")


# ------------------------------------------------------------ either kind


def _is_kuberay(docs: list[Any]) -> bool:
    return bool(docs) and isinstance(docs[0], dict) and "apiVersion" in docs[0]


def validate_cluster_file(path: str | Path) -> dict | list[dict]:
    """Validate a launcher YAML or a KubeRay manifest, whichever ``path`` holds."""
    docs, file = _load_documents(path), str(path)
    if _is_kuberay(docs):
        _validate_kuberay(docs, file)
        return docs
    return _validate_launcher(docs[0] if len(docs) == 1 else None, file)


def capacity(path: str | Path) -> Capacity:
    """The most a cluster file offers at once: the head plus every worker type at its maximum.

    Launcher: head + sum of max_workers x the type's ``resources``. KubeRay:
    head + sum of maxReplicas x what one pod offers (rayStartParams num-cpus,
    num-gpus and resources, else the container's cpu and nvidia.com/gpu
    limits). E.g. a CPU-0 head plus 2 nodes of {CPU: 8, GPU: 1, judge: 1}
    gives Capacity(cpus=16, gpus=2, resources={"judge": 2}).
    """
    docs, file = _load_documents(path), str(path)
    if not _is_kuberay(docs):
        raw = docs[0] if len(docs) == 1 else None
        return _total(_launcher_groups(_validate_launcher(raw, file), raw, file))
    clusters = _validate_kuberay(docs, file)
    if len(clusters) != 1:
        message = f"capacity needs one cluster spec; the file holds {len(clusters)}"
        raise ConfigError(message, file=file, line=1)
    return _total(clusters[0])


# ------------------------------------------------------------ config vs cluster file


def check_config_fits(cfg: Config, cluster_path: str | Path) -> Capacity:
    """Refuse a config whose stages could never be placed on a cluster file at max scale.

    For each stage of :func:`rayalign.cluster.stage_demands`: (1) each actor
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
        line = _line_at(load_yaml(cfg.source, ConfigError), key.split("."))
    raise ConfigError(message, file=cfg.source, line=line, field=key)


def _check_actor(d: Demand, cap: Capacity, where: str, cfg: Config) -> None:
    offering = [g for g in cap.groups if g.count > 0 and (not d.resource or g.resources.get(d.resource, 0) >= 1)]
    if not offering:
        offered = ", ".join(sorted(cap.resources)) or "none"
        message = f"no node type in {where} offers custom resource {d.resource!r} (offered: {offered})"
        _fail(cfg, f"{d.section}.resource", message)
    if any(g.cpus >= d.cpus and g.gpus >= d.gpus for g in offering):
        return
    unit = "cpus" if d.gpus <= max(g.gpus for g in offering) else "gpus"
    per_key = f"judge.{unit}_per_replica" if d.section == "judge" else f"{d.section}.{unit}_per_worker"
    sizes = ", ".join(f"{g.name}: {g.cpus:g} CPUs + {g.gpus:g} GPUs" for g in offering)
    message = (
        f"one {d.section} actor asks {d.cpus:g} CPUs + {d.gpus:g} GPUs, more than any node of "
        f"{where} that may take it has ({sizes}): it could never be placed"
    )
    _fail(cfg, per_key, message)


def _check_stage(stage: str, demands: list[Demand], cap: Capacity, where: str, cfg: Config) -> None:
    units: dict[str, int] = {}
    for d in demands:
        if d.resource:
            units[d.resource] = units.get(d.resource, 0) + d.count
    for name, need in units.items():
        if need > cap.resources.get(name, 0):
            key = next(d.count_key for d in demands if d.resource == name)
            have = cap.resources.get(name, 0)
            message = f"stage {stage} needs {need} units of custom resource {name!r} at once, but {where} offers at most {have:g}"
            _fail(cfg, key, message)
    _check_sum(stage, "CPUs", demands, cap.cpus, where, cfg)
    _check_sum(stage, "GPUs", demands, cap.gpus, where, cfg)
    for name in units:
        # Actors that ask a custom resource can only use the nodes offering it.
        pinned = [d for d in demands if d.resource == name]
        nodes = [g for g in cap.groups if g.resources.get(name, 0) > 0]
        inside = f"the nodes of {where} offering {name!r}"
        _check_sum(stage, "CPUs", pinned, sum(g.count * g.cpus for g in nodes), inside, cfg)
        _check_sum(stage, "GPUs", pinned, sum(g.count * g.gpus for g in nodes), inside, cfg)


def _check_sum(stage: str, kind: str, demands: list[Demand], have: float, where: str, cfg: Config) -> None:
    used = [d for d in demands if (d.cpus if kind == "CPUs" else d.gpus) > 0]
    need = sum(d.count * (d.cpus if kind == "CPUs" else d.gpus) for d in used)
    if need > have + 1e-9:
        parts = " + ".join(d.describe(kind) for d in used)
        message = f"stage {stage} runs {parts} = {need:g} {kind} at once, but {where} offers at most {have:g}"
        _fail(cfg, used[0].count_key, message)
