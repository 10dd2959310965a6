"""YAML loading that remembers where each value came from.

Mappings load as :class:`Node` dicts that know the line of each key, so
callers can report ``file:line: field`` for any value they reject.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from rayalign.errors import LocatedError


class Node(dict):
    """A YAML mapping: a plain dict plus the 1-based line of each key."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


class Seq(list):
    """A YAML sequence: a plain list plus the 1-based line of each item."""

    line: int = 0
    item_lines: list[int]

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if index < len(self.item_lines) else self.line


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> Node:
    out = Node()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise LocatedError(f"duplicate key {key!r}", line=key_node.start_mark.line + 1, field=str(key))
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[str(key)] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> Seq:
    out = Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml(path: str | Path, error: type[LocatedError] = LocatedError) -> Any:
    """Load one YAML file; syntax errors and duplicate keys name file and line."""
    return _load(Path(path), error, lambda text: yaml.load(text, Loader=_LineLoader))  # noqa: S506 (SafeLoader)


def load_yaml_documents(path: str | Path, error: type[LocatedError] = LocatedError) -> list[Any]:
    """Every non-empty document of a multi-document YAML file, errors located as in :func:`load_yaml`."""
    docs = _load(path, error, lambda text: list(yaml.load_all(text, Loader=_LineLoader)))  # noqa: S506
    return [d for d in docs if d is not None]


def _load(path: str | Path, error: type[LocatedError], parse: Callable[[str], Any]) -> Any:
    """Read and parse ``path``; errors name it as ``str(path)``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"cannot read: {e.strerror}", file=file) from None
    try:
        return parse(text)
    except LocatedError as e:
        raise error(e.message, file=file, line=e.line, field=e.field) from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise error(f"invalid YAML: {e.problem}", file=file, line=line) from None


def line_of(container: Any, key: str | int) -> int | None:
    """Line of ``key`` inside a loaded mapping or sequence, if known."""
    if isinstance(container, Node) and isinstance(key, str):
        return container.line_of(key)
    if isinstance(container, Seq) and isinstance(key, int):
        return container.line_of(key)
    return getattr(container, "line", None)
