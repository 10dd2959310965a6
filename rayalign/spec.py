"""The safety specification: parse ``specs/``, validate, hash, render.

A spec is a directory holding ``spec.yaml`` (name, version, category order,
general principles, global style) and ``categories/<id>.yaml`` (definitions,
rules with stable ids, category style). ``render_for(spec, category)`` is the
paper's ``spec(category)``: summaries of every category plus the full text of
one, so a long spec fits in a prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayalign._yaml import Node, Seq, line_of, load_yaml
from rayalign.errors import SpecError
from rayalign.types import BEHAVIORS, Behavior

RULE_LETTER: dict[Behavior, str] = {"comply": "A", "refuse": "D", "safe_complete": "S"}
BEHAVIOR_HEADINGS: dict[Behavior, str] = {
    "comply": "Allowed (comply)",
    "refuse": "Disallowed (refuse)",
    "safe_complete": "Requires a safe completion",
}
GLOBAL_STYLE_LETTER: dict[Behavior, str] = {"comply": "C", "refuse": "R", "safe_complete": "S"}
STYLE_HEADINGS: dict[Behavior, str] = {
    "comply": "When complying",
    "refuse": "When refusing",
    "safe_complete": "When safe-completing",
}
_CATEGORY_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def _position(default):
    """A field saying where an item is written: not compared, not hashed (layout is not content)."""
    return field(default=default, compare=False, repr=False, metadata={"hashed": False})


@dataclass(frozen=True)
class Definition:
    term: str
    meaning: str


@dataclass(frozen=True)
class Rule:
    """A content rule: requests it covers get ``behavior``."""

    id: str
    behavior: Behavior
    text: str
    examples: tuple[str, ...] = ()
    file: str = _position("")
    """Where it is written, relative to the spec directory (``categories/self_harm.yaml``)."""
    line: int = _position(0)
    """1-based line of its ``- id:`` item in ``file``."""


@dataclass(frozen=True)
class StyleRule:
    """How to write a response of type ``applies_to``."""

    id: str
    applies_to: Behavior
    text: str
    file: str = _position("")
    line: int = _position(0)


@dataclass(frozen=True)
class Principle:
    """A general helpfulness principle (guards against over-refusal)."""

    id: str
    title: str
    text: str
    examples: tuple[str, ...] = ()
    file: str = _position("")
    line: int = _position(0)


@dataclass(frozen=True)
class Category:
    id: str
    title: str
    summary: str
    definitions: tuple[Definition, ...]
    rules: tuple[Rule, ...]
    style: tuple[StyleRule, ...]
    file: str = _position("")
    summary_line: int = _position(0)
    """1-based line of the ``summary:`` key in ``file``."""


@dataclass(frozen=True)
class Spec:
    name: str
    version: str
    title: str
    preamble: str
    categories: tuple[Category, ...]
    principles: tuple[Principle, ...]
    style: tuple[StyleRule, ...]
    hash: str = field(default="", compare=False, metadata={"hashed": False})
    """Content hash of everything above (``sha256:`` + 16 hex digits)."""

    def category(self, category_id: str) -> Category:
        for c in self.categories:
            if c.id == category_id:
                return c
        known = ", ".join(c.id for c in self.categories)
        raise SpecError(f"unknown category {category_id!r}; the spec has: {known}")

    @property
    def category_ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.categories)

    def rule_ids(self) -> frozenset[str]:
        """Every citable id: rules, style rules and principles."""
        ids = {p.id for p in self.principles} | {s.id for s in self.style}
        for c in self.categories:
            ids |= {r.id for r in c.rules} | {s.id for s in c.style}
        return frozenset(ids)

    def style_behaviors(self) -> dict[str, Behavior]:
        """Each global style rule's id (``style.C1``, ``style.R2``, ...) and the response type it is for."""
        return {s.id: s.applies_to for s in self.style}


# ---------------------------------------------------------------- parsing


class _Reader:
    """Typed field access on a loaded YAML mapping, with located errors."""

    def __init__(self, node: Any, file: Path, where: str, label: str = ""):
        self.file, self.where = file, where
        self.label = label or file.name
        """The file as positions name it: relative to the spec directory."""
        if not isinstance(node, Node):
            self.fail(f"expected a mapping, got {type(node).__name__}", line_of(node, 0))
        self.node = node

    def fail(self, message: str, line: int | None = None, key: str | None = None):
        field_name = f"{self.where}.{key}" if self.where and key else (key or self.where or None)
        raise SpecError(message, file=str(self.file), line=line, field=field_name)

    def check_keys(self, required: set[str], optional: set[str] = frozenset()) -> None:
        for key in self.node:
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                self.fail(f"unknown key; allowed: {allowed}", self.node.line_of(key), key)
        for key in sorted(required - set(self.node)):
            self.fail("missing required key", self.node.line, key)

    def text(self, key: str) -> str:
        value = self.node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. an unquoted version: 1.0
        if not isinstance(value, str) or not value.strip():
            self.fail("must be a non-empty string", self.node.line_of(key), key)
        return " ".join(value.split())

    def seq(self, key: str, required: bool = True) -> Seq:
        value = self.node.get(key, Seq() if not required else None)
        if not isinstance(value, list) or (required and not value):
            self.fail("must be a non-empty list", self.node.line_of(key), key)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        items = self.seq(key, required=False)
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                self.fail("must be a non-empty string", line_of(items, i), f"{key}[{i}]")
        return tuple(" ".join(s.split()) for s in items)

    def child(self, key: str, index: int | None = None) -> _Reader:
        value = self.node[key] if index is None else self.node[key][index]
        suffix = key if index is None else f"{key}[{index}]"
        where = f"{self.where}.{suffix}" if self.where else suffix
        return _Reader(value, self.file, where, self.label)

    def behavior(self, key: str) -> Behavior:
        value = self.node.get(key)
        if value not in BEHAVIORS:
            self.fail(f"must be one of {', '.join(BEHAVIORS)}; got {value!r}", self.node.line_of(key), key)
        return value


class _IdRegistry:
    """Rejects a second use of any id, pointing at both places."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def add(self, reader: _Reader, rule_id: str) -> None:
        line = reader.node.line_of("id")
        if rule_id in self.seen:
            reader.fail(f"duplicate rule id {rule_id!r} (first defined at {self.seen[rule_id]})", line, "id")
        self.seen[rule_id] = f"{reader.file}:{line}"


def _parse_rule(r: _Reader, category_id: str, ids: _IdRegistry) -> Rule:
    r.check_keys({"id", "behavior", "text"}, {"examples"})
    rule_id, behavior = r.text("id"), r.behavior("behavior")
    pattern = rf"^{re.escape(category_id)}\.{RULE_LETTER[behavior]}[1-9][0-9]*$"
    if not re.match(pattern, rule_id):
        r.fail(
            f"rule id {rule_id!r} must look like {category_id}.{RULE_LETTER[behavior]}<n> "
            f"(letter {RULE_LETTER[behavior]} for behavior {behavior})",
            r.node.line_of("id"),
            "id",
        )
    ids.add(r, rule_id)
    return Rule(rule_id, behavior, r.text("text"), r.strings("examples"), r.label, r.node.line)


def _parse_style_rule(r: _Reader, prefix: str, ids: _IdRegistry, applies_to: Behavior | None) -> StyleRule:
    keys = {"id", "text"} if applies_to else {"id", "text", "applies_to"}
    r.check_keys(keys)
    behavior = applies_to or r.behavior("applies_to")
    rule_id = r.text("id")
    if not re.match(rf"^{re.escape(prefix)}[1-9][0-9]*$", rule_id):
        r.fail(f"style id {rule_id!r} must look like {prefix}<n>", r.node.line_of("id"), "id")
    ids.add(r, rule_id)
    return StyleRule(rule_id, behavior, r.text("text"), r.label, r.node.line)


def _parse_category(path: Path, expected_id: str, ids: _IdRegistry) -> Category:
    r = _Reader(load_yaml(path, SpecError), path, "", f"categories/{path.name}")
    r.check_keys({"id", "title", "summary", "definitions", "rules", "style"})
    cid = r.text("id")
    if cid != expected_id:
        r.fail(f"id {cid!r} does not match the file name {expected_id!r}", r.node.line_of("id"), "id")
    definitions = []
    for i in range(len(r.seq("definitions"))):
        d = r.child("definitions", i)
        d.check_keys({"term", "meaning"})
        definitions.append(Definition(d.text("term"), d.text("meaning")))
    rules = [_parse_rule(r.child("rules", i), cid, ids) for i in range(len(r.seq("rules")))]
    style = [_parse_style_rule(r.child("style", i), f"{cid}.Y", ids, None) for i in range(len(r.seq("style")))]
    for behavior in ("comply", "refuse"):
        if not any(rule.behavior == behavior for rule in rules):
            r.fail(f"category needs at least one {behavior} rule", r.node.line_of("rules"), "rules")
    summary_at = {"file": r.label, "summary_line": r.node.line_of("summary")}
    return Category(
        cid, r.text("title"), r.text("summary"), tuple(definitions), tuple(rules), tuple(style), **summary_at
    )


def _parse_global_style(r: _Reader, ids: _IdRegistry) -> tuple[StyleRule, ...]:
    s = r.child("style")
    s.check_keys(set(BEHAVIORS))
    out = []
    for behavior in BEHAVIORS:
        prefix = f"style.{GLOBAL_STYLE_LETTER[behavior]}"
        for i in range(len(s.seq(behavior))):
            out.append(_parse_style_rule(s.child(behavior, i), prefix, ids, behavior))
    return tuple(out)


def load_spec(path: str | Path) -> Spec:
    """Load and validate a spec directory (or its ``spec.yaml``).

    Every problem raises :class:`SpecError` naming file, line and field.
    Rules, style rules and principles carry their ``file`` (relative to the
    spec directory) and ``line``, categories their summary's; positions are
    neither compared nor hashed, so moving an item changes nothing.
    """
    root = Path(path)
    manifest = root if root.is_file() else root / "spec.yaml"
    if not manifest.exists():
        raise SpecError("no spec.yaml here; a spec is a directory with spec.yaml and categories/", file=str(root))
    root = manifest.parent
    r = _Reader(load_yaml(manifest, SpecError), manifest, "")
    r.check_keys({"name", "version", "title", "preamble", "categories", "principles", "style"})
    ids = _IdRegistry()
    principles = []
    for i in range(len(r.seq("principles"))):
        p = r.child("principles", i)
        p.check_keys({"id", "title", "text"}, {"examples"})
        pid = p.text("id")
        if not re.match(r"^general\.P[1-9][0-9]*$", pid):
            p.fail(f"principle id {pid!r} must look like general.P<n>", p.node.line_of("id"), "id")
        ids.add(p, pid)
        principles.append(Principle(pid, p.text("title"), p.text("text"), p.strings("examples"), p.label, p.node.line))
    style = _parse_global_style(r, ids)
    categories = _parse_categories(r, root, ids)
    spec = Spec(
        name=r.text("name"),
        version=r.text("version"),
        title=r.text("title"),
        preamble=r.text("preamble"),
        categories=categories,
        principles=tuple(principles),
        style=style,
    )
    return Spec(**{**spec.__dict__, "hash": spec_hash(spec)})


def _parse_categories(r: _Reader, root: Path, ids: _IdRegistry) -> tuple[Category, ...]:
    listed = r.strings("categories")
    if not listed:
        r.fail("must list at least one category", r.node.line_of("categories"), "categories")
    seq = r.node["categories"]
    out = []
    for i, cid in enumerate(listed):
        if not _CATEGORY_ID.match(cid):
            r.fail(f"category id {cid!r} must be lower_snake_case", line_of(seq, i), f"categories[{i}]")
        if cid in listed[:i]:
            r.fail(f"category {cid!r} listed twice", line_of(seq, i), f"categories[{i}]")
        path = root / "categories" / f"{cid}.yaml"
        if not path.exists():
            r.fail(f"unknown category {cid!r}: no file {path}", line_of(seq, i), f"categories[{i}]")
        out.append(_parse_category(path, cid, ids))
    for extra in sorted((root / "categories").glob("*.yaml")):
        if extra.stem not in listed:
            raise SpecError(f"category file is not listed in {r.file.name} categories", file=str(extra))
    return tuple(out)


def spec_hash(spec: Spec) -> str:
    """Content hash of a spec: stable across whitespace and YAML layout changes.

    Any change to a rule's wording, id or behaviour changes it; where an item
    is written (file and line) does not.
    """
    digest = hashlib.sha256(json.dumps(_content(spec), sort_keys=True).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def _content(value: Any) -> Any:
    """``dataclasses.asdict`` without the fields marked ``hashed: False`` (positions, the hash itself).

    >>> _content(Rule("a.D1", "refuse", "No.", file="categories/a.yaml", line=7))
    {'id': 'a.D1', 'behavior': 'refuse', 'text': 'No.', 'examples': []}
    """
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return {f.name: _content(getattr(value, f.name)) for f in fields if f.metadata.get("hashed", True)}
    if isinstance(value, (list, tuple)):
        return [_content(v) for v in value]
    return value


# -------------------------------------------------------------- rendering


def _render_header(spec: Spec) -> list[str]:
    lines = [f"# {spec.title}", f"Version {spec.version} ({spec.hash})", "", spec.preamble, ""]
    lines += ["## General principles"]
    lines += [f"- [{p.id}] {p.title}: {p.text}" for p in spec.principles]
    lines += ["", "## Style guidelines"]
    for behavior in BEHAVIORS:
        lines += [f"### {STYLE_HEADINGS[behavior]}"]
        lines += [f"- [{s.id}] {s.text}" for s in spec.style if s.applies_to == behavior]
    lines += ["", "## Categories (summaries)"]
    lines += [f"- {c.id} ({c.title}): {c.summary}" for c in spec.categories]
    return lines


def render_category(category: Category) -> str:
    """The full text of one category: definitions, rules by behaviour, style."""
    lines = [f"## Category: {category.title} ({category.id})", "", category.summary, "", "### Definitions"]
    lines += [f"- {d.term}: {d.meaning}" for d in category.definitions]
    for behavior in BEHAVIORS:
        rules = [r for r in category.rules if r.behavior == behavior]
        if not rules:
            continue
        lines += ["", f"### {BEHAVIOR_HEADINGS[behavior]}"]
        for rule in rules:
            examples = "; ".join(f'"{e}"' for e in rule.examples)
            lines += [f"- [{rule.id}] {rule.text}" + (f" Examples: {examples}" if examples else "")]
    lines += ["", "### Style for this category"]
    lines += [f"- [{s.id}] ({s.applies_to}) {s.text}" for s in category.style]
    return "\n".join(lines)


def render_for(spec: Spec, category: str | None) -> str:
    """The paper's ``spec(category)``: every summary plus one category in full.

    ``category=None`` (a benign or unlabelled prompt) renders the summaries only.
    The output depends only on the spec and the category, so prompts of one
    category share it as a prefix.
    """
    lines = _render_header(spec)
    if category is not None:
        lines += ["", render_category(spec.category(category))]
    return "\n".join(lines) + "\n"


def render_full(spec: Spec) -> str:
    """The whole spec with every category in full."""
    parts = ["\n".join(_render_header(spec))] + [render_category(c) for c in spec.categories]
    return "\n\n".join(parts) + "\n"
