"""One config tree: frozen dataclasses loaded from one YAML plus dotted overrides.

    cfg = load_config("configs/quickstart.yaml", ["--rl.lr=1e-6"])

The tree lives in :mod:`rayalign.config_tree` and is re-exported here, so
``from rayalign.config import Config, RLConfig, load_config`` is the one import
a stage needs. Every field has a docstring (``rayalign config explain`` prints
them). Loading validates keys, types, ranges, paths and the resource plan
(:mod:`rayalign.resource_plan`), and each error names the file, line and key,
before anything starts Ray.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from rayalign._yaml import Node, load_yaml
from rayalign.config_tree import (
    ClusterConfig,
    Config,
    DataConfig,
    EvalConfig,
    FilterConfig,
    GenerateConfig,
    JudgeConfig,
    LearnerConfig,
    ModelConfig,
    ProbeConfig,
    ReferenceConfig,
    RLConfig,
    RolloutConfig,
    SFTConfig,
    SpecConfig,
    TrackingConfig,
    bounded,
    field_docs,
    path_field,
)
from rayalign.errors import ConfigError, did_you_mean
from rayalign.resource_plan import check_resource_plan

__all__ = [
    "ClusterConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "FilterConfig",
    "GenerateConfig",
    "JudgeConfig",
    "LearnerConfig",
    "ModelConfig",
    "ProbeConfig",
    "ReferenceConfig",
    "RLConfig",
    "RolloutConfig",
    "SFTConfig",
    "SpecConfig",
    "TrackingConfig",
    "bounded",
    "explain",
    "field_docs",
    "load_config",
    "parse_override",
    "path_field",
    "spec_dir",
    "to_dict",
]

BUILTIN_SPECS = {"builtin:default": "specs"}
"""Spec names -> their folder in the package (``rayalign/specs`` links the repo's ``specs/``; package data)."""


# ------------------------------------------------------------------ loading

_Origin = tuple[str, int | None]  # (file or "command line", line)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, fail) -> Any:
    """Check ``value`` against a field type; ints widen to floats, lists become tuples."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            fail(f"must be {_type_name(tp)}; got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), fail)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            fail(f"must be a list; got {value!r}")
        return tuple(_coerce(v, args[0], fail) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            fail(f"must be a mapping; got {value!r}")
        return {_coerce(str(k), args[0], fail): _coerce(v, args[1], fail) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-6 (no dot) as a string
            return float(value)
        except ValueError:
            fail(f"must be float; got {value!r}")
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        fail(f"must be {_type_name(tp)}; got {value!r}")
    if not isinstance(value, tp):
        fail(f"must be {_type_name(tp)}; got {value!r}")
    return value


def _check_range(value: Any, meta: dict, fail) -> None:
    if meta.get("ge") is not None and value < meta["ge"]:
        fail(f"must be >= {meta['ge']}; got {value}")
    if meta.get("gt") is not None and value <= meta["gt"]:
        fail(f"must be > {meta['gt']}; got {value}")
    if meta.get("le") is not None and value > meta["le"]:
        fail(f"must be <= {meta['le']}; got {value}")


def spec_dir(path: str | Path) -> Path:
    """The spec directory ``path`` names: ``builtin:default`` is the default spec inside the
    installed package (any install, any working directory); anything else is a path as given.

    >>> (spec_dir("builtin:default") / "spec.yaml").is_file(), spec_dir("my/specs").as_posix()
    (True, 'my/specs')
    """
    text = str(path)
    if not text.startswith("builtin:"):
        return Path(text)
    if text not in BUILTIN_SPECS:
        raise ConfigError(f"unknown built-in spec {text!r}; built in: {', '.join(BUILTIN_SPECS)}", field="spec.path")
    return (Path(__file__).parent / BUILTIN_SPECS[text]).resolve()


def _resolve_spec(cfg: Config, origins: dict[str, _Origin]) -> Config:
    """``spec.path`` as a directory, so every stage reads ``cfg.spec.path`` as a path."""
    file, line = origins.get("spec.path", ("<defaults>", None))
    try:
        path = spec_dir(cfg.spec.path)
    except ConfigError as e:
        raise ConfigError(e.message, file=file, line=line, field="spec.path") from None
    if not path.is_dir():
        raise ConfigError(f"built-in spec {cfg.spec.path} is missing from the install: {path}", field="spec.path")
    return dataclasses.replace(cfg, spec=dataclasses.replace(cfg.spec, path=str(path)))


def _check_path(value: str, meta: dict, fail) -> None:
    if meta.get("path") and value and not value.startswith("builtin:") and not Path(value).exists():
        fail(f"no such file or directory: {value}")


def _unknown_key_hint(cls: type, key: str, names: list[str], prefix: str) -> str:
    """A suggestion for an unknown key: a subsection holding it (``sft.zero_stage`` ->
    ``sft.learner.zero_stage``), else the closest key of this section."""
    hints = typing.get_type_hints(cls)
    for name in names:
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and key in {f.name for f in dataclasses.fields(tp)}:
            return f"; did you mean {f'{prefix}{name}.{key}'!r}?"
    return did_you_mean(key, names)


def _section_default(f: dataclasses.Field, tp: type) -> Any:
    """A subsection's default: the stage's own (sft.learner and rl.learner differ), else the class's."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else tp()


def _build(cls: type, raw: dict, origins: dict[str, _Origin], prefix: str, base: Any = None) -> Any:
    """``base`` (else ``cls()``) with the keys of ``raw`` replaced, checked and coerced."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        file, line = origins.get(dotted, ("<config>", None))

        def fail(message: str, dotted=dotted, file=file, line=line):
            raise ConfigError(message, file=file, line=line, field=dotted)

        if key not in names:
            fail(f"unknown key{_unknown_key_hint(cls, str(key), names, prefix)} allowed: {', '.join(names)}")
        f = next(f for f in dataclasses.fields(cls) if f.name == key)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                fail(f"must be a mapping of {tp.__name__} fields")
            kwargs[key] = _build(tp, value, origins, f"{dotted}.", _section_default(f, tp))
            continue
        kwargs[key] = _coerce(value, tp, fail)
        if isinstance(kwargs[key], (int, float)):
            _check_range(kwargs[key], f.metadata, fail)
        if isinstance(kwargs[key], dict):
            for v in kwargs[key].values():
                _check_range(v, f.metadata, fail)
        if isinstance(kwargs[key], str):
            _check_path(kwargs[key], f.metadata, fail)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _record_origins(node: Any, file: str, prefix: str, out: dict[str, _Origin]) -> None:
    if not isinstance(node, Node):
        return
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        out[dotted] = (file, node.line_of(str(key)))
        _record_origins(value, file, f"{dotted}.", out)


def parse_override(arg: str) -> tuple[str, Any]:
    """``--rl.lr=1e-6`` -> ("rl.lr", 1e-06); values are read as YAML scalars.

    >>> parse_override("--rollout.n=8")
    ('rollout.n', 8)
    """
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body:
        raise ConfigError(f"override {arg!r} must look like --section.key=value", file="command line")
    key, text = body.split("=", 1)
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _apply_override(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{part} is not a section", file="command line", field=key)
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Load a config file plus ``--a.b=value`` overrides, validated.

    Raises :class:`ConfigError` naming the file, line and key at fault.
    """
    source = str(path) if path else "<defaults>"
    raw: Any = load_yaml(path, ConfigError) if path else {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of sections", file=source, line=1)
    origins: dict[str, _Origin] = {}
    _record_origins(raw, source, "", origins)
    raw = _to_plain(raw)
    for arg in overrides:
        key, value = parse_override(arg)
        _apply_override(raw, key, value)
        origins[key] = ("command line", None)
        for i in range(1, key.count(".") + 1):
            origins.setdefault(".".join(key.split(".")[:i]), ("command line", None))
    cfg = _resolve_spec(dataclasses.replace(_build(Config, raw, origins, ""), source=source), origins)
    check_resource_plan(cfg, origins)
    return cfg


def _to_plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_plain(v) for v in node]
    return node


def to_dict(cfg: Any) -> dict:
    """A config (or section) as plain data, e.g. for W&B or ``config show``."""
    out = dataclasses.asdict(cfg)
    out.pop("source", None)
    return out


# ----------------------------------------------------------------- explain


def explain(cls: type = Config, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per config key: dotted name, type, default, doc."""
    lines = []
    hints = typing.get_type_hints(cls)
    defaults = cls() if defaults is None else defaults
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"[{prefix}{f.name}] {field_docs(cls).get(f.name, '')}")
            lines += explain(tp, f"{prefix}{f.name}.", getattr(defaults, f.name))
            continue
        default = getattr(defaults, f.name)
        lines.append(f"  {prefix}{f.name}: {_type_name(tp)} = {default!r}  # {field_docs(cls).get(f.name, '')}")
    return lines
