"""Ray cluster-launcher YAMLs, checked offline with Ray's own schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema

# Ray's own launcher schema; a private module, so this file is its one user.
from ray.autoscaler._private.util import prepare_config, validate_config

from rayalign._yaml import Node, load_yaml
from rayalign.clusterfile.nodes import BUILTIN_RESOURCES, NodeGroup, error_at, plain
from rayalign.errors import ConfigError, did_you_mean


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
    return validate_launcher(load_yaml(path, ConfigError), str(path))


def validate_launcher(raw: Any, file: str) -> dict:
    """:func:`validate_launcher_yaml` on an already loaded document (``file`` names it in errors)."""
    if not isinstance(raw, dict):
        raise ConfigError("must be one mapping of launcher keys", file=file, line=1)
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not provider.get("type"):
        raise error_at("missing; set it to aws, gcp, ...", file, raw, ["provider", "type"])
    try:
        # Only merges Ray's bundled provider defaults: no cloud call, no boto3.
        prepared = _prepare(plain(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        raise _schema_error(e, raw, file) from None
    except NotImplementedError:
        message = f"Ray has no node provider {provider['type']!r}"
        raise error_at(message, file, raw, ["provider", "type"]) from None
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
            message = f"unknown key{did_you_mean(unknown[0], known)} (Ray cluster schema)"
            return error_at(message, file, raw, [*path, unknown[0]])
    if e.validator == "required" and isinstance(e.instance, dict):
        missing = [k for k in e.validator_value if k not in e.instance]
        if missing:
            return error_at("missing (Ray cluster schema)", file, raw, [*path, missing[0]])
    return error_at(f"{e.message} (Ray cluster schema)", file, raw, path)


def _rule_error(ray_message: str, raw: Node, file: str) -> ConfigError:
    """Locate a rule Ray checks outside its schema; Ray's own words otherwise."""
    types = raw.get("available_node_types")
    if not isinstance(types, dict):
        return ConfigError(ray_message, file=file)
    head = raw.get("head_node_type")
    if head not in types:
        message = f"{head!r} is not one of available_node_types ({', '.join(types)})"
        return error_at(message, file, raw, ["head_node_type"])
    mins = sum(t.get("min_workers", 0) for t in types.values() if isinstance(t, dict))
    if mins > raw.get("max_workers", mins):
        message = f"{raw['max_workers']} is below the sum of min_workers ({mins})"
        return error_at(message, file, raw, ["max_workers"])
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
            raise error_at(message, file, raw, ["available_node_types", name, "min_workers"])
    most = sum(t["max_workers"] for t in types.values())
    if prepared["max_workers"] < most:
        message = (
            f"{prepared['max_workers']} is below the sum of the node types' max_workers ({most}); "
            "rayalign runs every type at once, so the cluster could never reach them"
        )
        raise error_at(message, file, raw, ["max_workers"])


def launcher_groups(prepared: dict, raw: Node, file: str) -> list[NodeGroup]:
    """Each node type at its max_workers (the head type counts one more); CPU and GPU must be declared."""
    groups = []
    for name, t in prepared["available_node_types"].items():
        res = t.get("resources", {})
        for kind in ("CPU", "GPU"):
            if kind not in res:
                message = f"declare {kind} (0 if none) so capacity is known offline, without asking the cloud"
                raise error_at(message, file, raw, ["available_node_types", name, "resources", kind])
        count = t["max_workers"] + (1 if name == prepared["head_node_type"] else 0)
        custom = {k: float(v) for k, v in res.items() if k not in BUILTIN_RESOURCES}
        groups.append(NodeGroup(name, count, float(res["CPU"]), float(res["GPU"]), custom))
    return groups
