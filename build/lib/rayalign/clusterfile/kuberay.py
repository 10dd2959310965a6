"""KubeRay RayCluster and RayJob manifests, checked offline: what the operator
would refuse on apply, or silently get wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from rayalign._yaml import line_of
from rayalign.clusterfile.nodes import BUILTIN_RESOURCES, NodeGroup, dotted, error_in, load_documents
from rayalign.errors import ConfigError

_KINDS = ("RayCluster", "RayJob")
_CPU_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_EXAMPLE = r"""'"{\"judge\": 1}"'"""  # rayStartParams.resources as KubeRay's docs write it


def _need(node: Any, key: str, path: list, file: str, kind: type | tuple = dict, what: str = "a mapping") -> Any:
    """``node[key]`` if present and of ``kind``; else an error naming file, line and field."""
    if not isinstance(node, dict) or node.get(key) in (None, ""):
        raise error_in("missing", file, node, key, path)
    value = node[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise error_in(f"must be {what}; got {value!r}", file, node, key, path)
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
    docs = load_documents(path)
    kuberay_clusters(docs, str(path))
    return docs


def kuberay_clusters(docs: list[Any], file: str) -> list[list[NodeGroup]]:
    """Check every document; return the node groups of each cluster spec."""
    if not docs:
        raise ConfigError("holds no YAML document", file=file, line=1)
    clusters = []
    for doc in docs:
        if not isinstance(doc, dict):
            message = "must be a mapping (a Kubernetes object)"
            raise ConfigError(message, file=file, line=getattr(doc, "line", None))
        if _need(doc, "apiVersion", [], file, str, "a string") != "ray.io/v1":
            raise error_in(f"must be ray.io/v1; got {doc['apiVersion']!r}", file, doc, "apiVersion", [])
        kind = _need(doc, "kind", [], file, str, "a string")
        if kind not in _KINDS:
            raise error_in(f"must be one of {', '.join(_KINDS)}; got {kind!r}", file, doc, "kind", [])
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
            raise error_in("must be a mapping", file, workers, i, gpath[:-1])
        name = _need(group, "groupName", gpath, file, str, "a string")
        if name in {g.name for g in groups[1:]}:
            raise error_in(f"{name!r} names two worker groups", file, group, "groupName", gpath)
        groups.append(_pod_group(name, _most_pods(group, gpath, file), group, gpath, file))
    return groups


def _most_pods(group: dict, path: list, file: str) -> int:
    """Check minReplicas <= replicas <= maxReplicas; return maxReplicas x numOfHosts."""
    low = _need(group, "minReplicas", path, file, int, "a whole number")
    high = _need(group, "maxReplicas", path, file, int, "a whole number")
    replicas, hosts = group.get("replicas", low), group.get("numOfHosts", 1)
    if low < 0:
        raise error_in(f"must be >= 0; got {low}", file, group, "minReplicas", path)
    if high < low:
        raise error_in(f"{high} is below minReplicas ({low})", file, group, "maxReplicas", path)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not low <= replicas <= high:
        message = f"must be a whole number from minReplicas ({low}) to maxReplicas ({high}); got {replicas!r}"
        raise error_in(message, file, group, "replicas", path)
    if not isinstance(hosts, int) or isinstance(hosts, bool) or hosts < 1:
        raise error_in(f"must be a whole number >= 1; got {hosts!r}", file, group, "numOfHosts", path)
    return high * hosts


def _pod_group(name: str, count: int, group: dict, path: list, file: str) -> NodeGroup:
    """Check one head or worker group; return what one of its pods offers Ray."""
    params = _need(group, "rayStartParams", path, file)
    ppath = [*path, "rayStartParams"]
    for key, value in params.items():
        if not isinstance(value, str):
            # The CRD types rayStartParams as strings: an unquoted 0 is refused on apply.
            raise error_in(f"must be a string (quote it); got {value!r}", file, params, key, ppath)
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
        raise error_in(f"must be a number >= 0; got {node[key]!r}", file, node, key, path)
    return value


def _cpu_quantity(limits: dict, path: list, file: str) -> float:
    """A Kubernetes CPU quantity in CPUs: "8" -> 8.0, "500m" -> 0.5."""
    match = _CPU_QUANTITY.match(str(limits["cpu"]))
    if not match:
        message = f"must be a CPU quantity such as 8 or 500m; got {limits['cpu']!r}"
        raise error_in(message, file, limits, "cpu", path)
    return float(match[1]) / (1000 if match[2] else 1)


def _custom_resources(params: dict, path: list, file: str) -> dict[str, float]:
    r"""Parse rayStartParams.resources: quoted JSON as KubeRay documents it, or plain JSON.

    >>> _custom_resources({"resources": '"{\\"judge\\": 1}"'}, [], "f.yaml")
    {'judge': 1.0}
    """
    message = f"must be a JSON object of numbers such as {_EXAMPLE}; got {params['resources']!r}"
    bad = error_in(message, file, params, "resources", path)
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
    if BUILTIN_RESOURCES & set(value):
        message = "CPU and GPU belong in num-cpus / num-gpus or the container limits"
        raise error_in(message, file, params, "resources", path)
    return {k: float(v) for k, v in value.items()}


def _job_runs_own_cluster(spec: dict, path: list, file: str) -> bool:
    """Check a RayJob spec; False when it runs on an existing cluster (clusterSelector)."""
    _need(spec, "entrypoint", path, file, str, "a command")
    if not isinstance(spec.get("shutdownAfterJobFinishes", False), bool):
        raise error_in("must be true or false", file, spec, "shutdownAfterJobFinishes", path)
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
    field_name = dotted([*path, "runtimeEnvYAML"])
    try:
        env = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        # The block starts on the line after the key.
        line = key_line + e.problem_mark.line + 1 if key_line and e.problem_mark else key_line
        message = f"invalid YAML: {e.problem}"
        raise ConfigError(message, file=file, line=line, field=field_name) from None
    if not isinstance(env, dict):
        message = "must be a mapping (working_dir, pip, env_vars, ...)"
        raise error_in(message, file, spec, "runtimeEnvYAML", path)
    working_dir = env.get("working_dir")
    if working_dir is not None and "://" not in str(working_dir):
        message = (
            f"{working_dir!r} is a local path, but a RayJob has no local files to upload: "
            "use a remote URI (https://.../archive/<ref>.zip, s3://, gs://)"
        )
        raise ConfigError(message, file=file, line=key_line, field=f"{field_name}.working_dir")
