"""What the cluster-file checks share: node groups, capacity, and errors that
name a file, line and field inside a loaded YAML document."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayalign._yaml import line_of, load_yaml_documents
from rayalign.errors import ConfigError

# Ray resource names that are not custom resources.
BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


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


def sum_groups(groups: list[NodeGroup]) -> Capacity:
    """Sum node groups into a capacity.

    >>> sum_groups([NodeGroup("head", 1, 0, 0), NodeGroup("gpu", 2, 8, 1, {"judge": 1})]).resources
    {'judge': 2}
    """
    resources: dict[str, float] = {}
    for g in groups:
        for name, per_node in g.resources.items():
            resources[name] = resources.get(name, 0) + g.count * per_node
    cpus = sum(g.count * g.cpus for g in groups)
    gpus = sum(g.count * g.gpus for g in groups)
    return Capacity(cpus=cpus, gpus=gpus, resources=resources, groups=tuple(groups))


# ------------------------------------------------------------ located errors


def plain(node: Any) -> Any:
    """A loaded document as plain dicts and lists (what Ray's schema check expects)."""
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


def dotted(path: list) -> str:
    """A key path as a field name.

    >>> dotted(["spec", "workerGroupSpecs", 1, "groupName"])
    'spec.workerGroupSpecs[1].groupName'
    """
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_at(root: Any, path: list) -> int | None:
    """Line of the deepest key of ``path`` that exists in ``root``."""
    node, line = root, getattr(root, "line", None)
    for part in path:
        inside = isinstance(node, dict) and part in node
        inside = inside or (isinstance(node, list) and isinstance(part, int) and part < len(node))
        if not inside:
            break
        line, node = line_of(node, part) or line, node[part]
    return line


def error_at(message: str, file: str, root: Any, path: list) -> ConfigError:
    """An error at ``path`` below ``root``: file, line of the deepest key found, dotted field."""
    return ConfigError(message, file=file, line=line_at(root, path), field=dotted(path) or None)


def error_in(message: str, file: str, node: Any, key: str | int, path: list) -> ConfigError:
    """An error at ``node[key]``, where ``path`` leads from the document to ``node``."""
    return ConfigError(message, file=file, line=line_of(node, key), field=dotted([*path, key]))


def load_documents(path: str | Path) -> list[Any]:
    """Every non-empty YAML document of a file, mappings remembering their lines."""
    return load_yaml_documents(path, ConfigError)
