"""The spec as a living document: what changed between two versions, and what it makes stale.

``diff_specs(old, new)`` lists rules, style rules, principles and categories
added, removed and changed (by id, with a word-level diff and the file and
line of each), and, what matters for training, which categories'
``spec(category)`` changed. Their hashes (:func:`category_hash`) leave out the
version line that every ``spec(category)`` starts with, so an edit to one
category changes that category's hash only; an edit to what every
``spec(category)`` renders (the summaries, principles, global style, preamble)
changes all of them, and the diff says so. Stage 1 records the hash on every
sample (``Decision.spec_category_hash``) and a re-run regenerates only the
prompts whose hash changed (:func:`regeneration_reason`).

Pure: the spec loader and the standard library (git only to read a revision).
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rayalign.errors import SpecError
from rayalign.spec import Category, Spec, load_spec, render_for

NONE = "none"
"""How prompts without a category (their spec(category) is the summaries only) are named."""


def category_hash(spec: Spec, category: str | None) -> str:
    """``sha256:`` + 16 hex digits of ``render_for(spec, category)`` without its version line.

    The version line names the spec version and hash, which any edit changes;
    left in, every edit would change every category's hash.

    >>> spec = load_spec("specs")
    >>> category_hash(spec, "privacy") == category_hash(dataclasses.replace(spec, version="9", hash="x"), "privacy")
    True
    >>> category_hash(spec, "privacy") != category_hash(spec, None)
    True
    """
    text = render_for(dataclasses.replace(spec, version="", hash=""), category)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def word_diff(old: str, new: str) -> str:
    """The new text with removed words in ``[-...-]`` and added ones in ``{+...+}`` (git's --word-diff=plain).

    >>> word_diff("Never give dosing advice.", "Never give lethal dosing advice.")
    'Never give {+lethal+} dosing advice.'
    >>> word_diff("a b c", "a x c")
    'a [-b-] {+x+} c'
    """
    a, b = old.split(), new.split()
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out += a[i1:i2]
            continue
        if i2 > i1:
            out.append("[-" + " ".join(a[i1:i2]) + "-]")
        if j2 > j1:
            out.append("{+" + " ".join(b[j1:j2]) + "+}")
    return " ".join(out)


# ------------------------------------------------------------------ the diff


@dataclass(frozen=True)
class Change:
    """One item added, removed or changed between two specs."""

    kind: str
    """added, removed or changed."""
    what: str
    """rule, style rule, principle, category or spec."""
    id: str
    """The rule id, the category id, or the spec field (title, preamble, ...)."""
    category: str | None = None
    """The category whose full text holds it; None for spec-wide items."""
    old_at: str = ""
    """``file:line`` in the old spec, relative to its directory (empty when added)."""
    new_at: str = ""
    details: tuple[str, ...] = ()
    """``field: word diff`` lines."""
    everywhere: bool = False
    """Rendered in every spec(category) (summaries, principles, global style, preamble)."""


@dataclass(frozen=True)
class SpecDiff:
    old_hash: str
    new_hash: str
    old_version: str
    new_version: str
    changes: tuple[Change, ...]
    spec_category: tuple[tuple[str, str], ...]
    """(category or ``none``, changed | unchanged | added | removed), by :func:`category_hash`."""

    @property
    def changed(self) -> bool:
        return self.old_hash != self.new_hash

    @property
    def everywhere(self) -> tuple[Change, ...]:
        """The changes that change every spec(category)."""
        return tuple(c for c in self.changes if c.everywhere)

    def categories(self, status: str) -> tuple[str, ...]:
        return tuple(c for c, s in self.spec_category if s == status)


def diff_specs(old: Spec, new: Spec) -> SpecDiff:
    """Everything that differs between ``old`` and ``new`` (see :class:`SpecDiff`)."""
    changes = [
        *_spec_changes(old, new),
        *_category_changes(old, new),
        *_item_changes(_principles(old), _principles(new), "principle"),
        *_item_changes(_style(old), _style(new), "style rule"),
        *_item_changes(_rules(old), _rules(new), "rule"),
    ]
    return SpecDiff(old.hash, new.hash, old.version, new.version, tuple(changes), _spec_category(old, new))


def _at(item: Any) -> str:
    return f"{item.file}:{item.line}" if getattr(item, "file", "") else ""


def _spec_changes(old: Spec, new: Spec) -> list[Change]:
    out = []
    for name in ("title", "preamble", "name", "version"):
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            out.append(
                Change(
                    "changed",
                    "spec",
                    name,
                    None,
                    "spec.yaml",
                    "spec.yaml",
                    (f"{name}: {word_diff(a, b)}",),
                    everywhere=name in ("title", "preamble"),
                )
            )
    if [c for c in old.category_ids if c in new.category_ids] != [c for c in new.category_ids if c in old.category_ids]:
        detail = f"order: {' '.join(old.category_ids)} -> {' '.join(new.category_ids)}"
        out.append(Change("changed", "spec", "categories", None, "spec.yaml", "spec.yaml", (detail,), everywhere=True))
    return out


def _category_at(c: Category) -> str:
    return f"{c.file}:{c.summary_line}" if c.file else ""


def _category_changes(old: Spec, new: Spec) -> list[Change]:
    before, after = {c.id: c for c in old.categories}, {c.id: c for c in new.categories}
    out = []
    for cid, c in after.items():
        if cid not in before:
            out.append(Change("added", "category", cid, cid, new_at=_category_at(c), everywhere=True))
            continue
        a = before[cid]
        details = [
            f"{f}: {word_diff(getattr(a, f), getattr(c, f))}"
            for f in ("title", "summary")
            if getattr(a, f) != getattr(c, f)
        ]
        headline = bool(details)
        if a.definitions != c.definitions:
            details.append("definitions: " + word_diff(_definitions(a), _definitions(c)))
        if details:
            out.append(
                Change("changed", "category", cid, cid, _category_at(a), _category_at(c), tuple(details), headline)
            )
    out += [
        Change("removed", "category", cid, cid, old_at=_category_at(a), everywhere=True)
        for cid, a in before.items()
        if cid not in after
    ]
    return out


def _definitions(c: Category) -> str:
    return " | ".join(f"{d.term}: {d.meaning}" for d in c.definitions)


def _principles(spec: Spec) -> dict[str, tuple[Any, str | None]]:
    return {p.id: (p, None) for p in spec.principles}


def _style(spec: Spec) -> dict[str, tuple[Any, str | None]]:
    out: dict[str, tuple[Any, str | None]] = {s.id: (s, None) for s in spec.style}
    return out | {s.id: (s, c.id) for c in spec.categories for s in c.style}


def _rules(spec: Spec) -> dict[str, tuple[Any, str | None]]:
    return {r.id: (r, c.id) for c in spec.categories for r in c.rules}


_COMPARED = ("behavior", "applies_to", "title", "text", "examples")


def _item_changes(before: dict, after: dict, what: str) -> list[Change]:
    """Added, changed, then removed items (rules, style rules or principles), in spec order."""
    out = []
    for rid, (item, category) in after.items():
        if rid not in before:
            out.append(
                Change(
                    "added", what, rid, category, new_at=_at(item), details=_describe(item), everywhere=category is None
                )
            )
            continue
        old = before[rid][0]
        details = tuple(
            _field_diff(name, getattr(old, name), getattr(item, name))
            for name in _COMPARED
            if hasattr(item, name) and getattr(old, name) != getattr(item, name)
        )
        if details:
            out.append(Change("changed", what, rid, category, _at(old), _at(item), details, category is None))
    for rid, (item, category) in before.items():
        if rid not in after:
            out.append(
                Change(
                    "removed",
                    what,
                    rid,
                    category,
                    old_at=_at(item),
                    details=_describe(item),
                    everywhere=category is None,
                )
            )
    return out


def _field_diff(name: str, old: Any, new: Any) -> str:
    if isinstance(old, tuple):
        old, new = " | ".join(old), " | ".join(new)
    if name in ("behavior", "applies_to"):
        return f"{name}: {old} -> {new}"
    return f"{name}: {word_diff(old, new)}"


def _describe(item: Any) -> tuple[str, ...]:
    kind = getattr(item, "behavior", None) or getattr(item, "applies_to", None)
    return ((f"({kind}) " if kind else "") + item.text,)


def _spec_category(old: Spec, new: Spec) -> tuple[tuple[str, str], ...]:
    ids = [*new.category_ids, *(c for c in old.category_ids if c not in new.category_ids)]
    out = []
    for cid in [*ids, None]:
        in_old, in_new = cid is None or cid in old.category_ids, cid is None or cid in new.category_ids
        if not in_old or not in_new:
            status = "added" if in_new else "removed"
        else:
            status = "unchanged" if category_hash(old, cid) == category_hash(new, cid) else "changed"
        out.append((cid or NONE, status))
    return tuple(out)


# ------------------------------------------------------------------ the text


_SECTIONS = (
    ("spec", "spec"),
    ("category", "categories"),
    ("principle", "principles"),
    ("style rule", "style rules"),
    ("rule", "rules"),
)


def format_diff(diff: SpecDiff, old_label: str, new_label: str) -> str:
    """The diff as text: item changes by section, then what changed for training.

    Positions are shown under the labels (``HEAD~1:specs/categories/privacy.yaml:26``).
    """
    lines = [f"spec diff {old_label} -> {new_label}"]
    lines.append(f"  spec {diff.old_version} ({diff.old_hash}) -> {diff.new_version} ({diff.new_hash})")
    if not diff.changed:
        return "\n".join([*lines, "", "no change: same spec hash (layout changes and moved lines do not count)"]) + "\n"
    for what, title in _SECTIONS:
        group = [c for c in diff.changes if c.what == what]
        if group:
            lines += ["", f"{title} ({len(group)}):"]
            lines += [line for c in group for line in _change_lines(c, old_label, new_label)]
    return "\n".join([*lines, "", *_training_lines(diff)]) + "\n"


def _located(label: str, at: str) -> str:
    return f"{label.rstrip('/')}/{at}" if at else ""


def _change_lines(c: Change, old_label: str, new_label: str) -> list[str]:
    old_at, new_at = _located(old_label, c.old_at), _located(new_label, c.new_at)
    where = f"{old_at} -> {new_at}" if old_at and new_at and c.kind == "changed" else new_at or old_at
    scope = "every spec(category)" if c.everywhere else (f"spec({c.category})" if c.category else "")
    head = f"  {c.kind:<8} {c.id}" + (f"  [{scope}]" if scope else "") + (f"  {where}" if where else "")
    return [head, *(f"           {d}" for d in c.details)]


def _training_lines(diff: SpecDiff) -> list[str]:
    lines = ["spec(category), what stage 1 generates with and the judge reads (hashes leave out the version line):"]
    if diff.everywhere:
        why = "; ".join(_name(c) for c in diff.everywhere)
        lines.append(
            "  EVERY spec(category) changed: each one starts with the spec's header (title, preamble, principles, "
            f"global style and every category's summary), and in it this changed: {why}."
        )
    reasons = collections.defaultdict(list)
    for c in diff.changes:
        if c.category and not c.everywhere:
            reasons[c.category].append(c.id if c.what != "category" else "definitions")
    for status in ("changed", "added", "removed", "unchanged"):
        names = diff.categories(status)
        if names:
            shown = [f"{n} ({', '.join(reasons[n])})" if reasons.get(n) and status == "changed" else n for n in names]
            lines.append(f"  {status} ({len(names)}): {', '.join(shown)}")
    touched = (*diff.categories("changed"), *diff.categories("added"))
    if diff.everywhere:
        lines.append("  rayalign generate regenerates every prompt")
    elif touched:
        lines.append(f"  rayalign generate regenerates the prompts of {', '.join(touched)} and reuses the rest")
    else:
        lines.append("  rayalign generate reuses every prompt (no spec(category) changed)")
    return lines


def _name(c: Change) -> str:
    if c.what == "category" and c.kind == "changed":
        fields = [d.split(":")[0] for d in c.details if d.startswith(("title:", "summary:"))]
        return f"the {' and '.join(fields)} of category {c.id}"
    if c.what == "category":
        return f"category {c.id} {c.kind}"
    if c.what == "spec":
        return f"the spec's {c.id}"
    return f"{c.what} {c.id} {c.kind}"


# ------------------------------------------------------------------ reading a revision


def load_spec_source(source: str, workdir: str | Path) -> Spec:
    """A spec from a directory, or from a git revision ``REV:PATH`` (``HEAD~1:specs``).

    A revision is read with ``git archive`` (in the current directory's
    repository) into ``workdir``; positions are relative to the spec directory
    either way. A missing revision or path raises :class:`SpecError`.
    """
    if Path(source).exists() or ":" not in source:
        return load_spec(source)
    try:
        done = subprocess.run(["git", "archive", "--format=tar", source], capture_output=True, check=False)
    except OSError as e:
        raise SpecError(f"cannot run git to read a revision: {e.strerror}", file=source) from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        raise SpecError(f"not a directory, and git cannot read it: {' '.join(message[-1:])}", file=source)
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(workdir, filter="data")
    return load_spec(workdir)


def diff_sources(old: str, new: str) -> SpecDiff:
    """:func:`diff_specs` of two directories or git revisions (see :func:`load_spec_source`)."""
    with tempfile.TemporaryDirectory() as old_dir, tempfile.TemporaryDirectory() as new_dir:
        return diff_specs(load_spec_source(old, old_dir), load_spec_source(new, new_dir))


# ------------------------------------------------------------------ stage-1 reuse

REUSED = "reused"


def regeneration_reason(decision: Any, category_hash_now: str, template_hash_now: str, *, full: bool = False) -> str:
    """Why stage 1 must generate a prompt again, or ``reused``.

    ``decision`` is the prompt's earlier ``stage1.filter.Decision`` (None: none yet).

    >>> from types import SimpleNamespace as D
    >>> regeneration_reason(D(spec_category_hash="sha256:a", generation_template_hash="t"), "sha256:a", "t")
    'reused'
    >>> regeneration_reason(D(spec_category_hash="sha256:a", generation_template_hash="t"), "sha256:b", "t")
    'spec(category) changed'
    >>> regeneration_reason(None, "sha256:a", "t"), regeneration_reason(D(), "sha256:a", "t", full=True)
    ('new', 'forced (--full)')
    """
    if full:
        return "forced (--full)"
    if decision is None:
        return "new"
    if decision.spec_category_hash != category_hash_now:
        return "spec(category) changed" if decision.spec_category_hash else "no spec(category) hash recorded"
    if decision.generation_template_hash != template_hash_now:
        return "generation templates changed"
    return REUSED


@dataclass(frozen=True)
class PromptReuse:
    """What a stage-1 run did with one prompt."""

    prompt_id: str
    category: str
    """The category id, or ``none``."""
    shard: int
    reason: str
    """``reused`` or why it was regenerated (:func:`regeneration_reason`)."""


@dataclass(frozen=True)
class Regeneration:
    """A stage-1 run's reuse: per prompt, and the shard files it left alone or rewrote."""

    spec_hash: str
    generation_template_hash: str
    full: bool
    prompts: tuple[PromptReuse, ...]
    shards_untouched: tuple[int, ...]
    shards_rewritten: tuple[int, ...]

    def by_category(self) -> dict[str, collections.Counter]:
        """Category -> Counter of reasons (``reused`` included), categories in first-seen order.

        >>> r = Regeneration("s", "t", False, (PromptReuse("a", "privacy", 0, "reused"),
        ...                                     PromptReuse("b", "privacy", 0, "new")), (), (0,))
        >>> dict(r.by_category()["privacy"])
        {'reused': 1, 'new': 1}
        """
        out: dict[str, collections.Counter] = {}
        for p in self.prompts:
            out.setdefault(p.category, collections.Counter())[p.reason] += 1
        return out

    @property
    def regenerated(self) -> int:
        return sum(p.reason != REUSED for p in self.prompts)


def format_regeneration(r: Regeneration) -> str:
    """The reuse report (``stage1/regeneration.md``): per category, prompts reused and regenerated, and why."""
    lines = [
        "# Stage-1 regeneration",
        "",
        f"spec {r.spec_hash}, generation templates {r.generation_template_hash}" + (", --full" if r.full else ""),
        f"{len(r.prompts)} prompts: {len(r.prompts) - r.regenerated} reused as they were, {r.regenerated} "
        f"generated and judged again; shards untouched: {len(r.shards_untouched)}, written: {len(r.shards_rewritten)}",
        "",
        "| category | prompts | reused | regenerated | why |",
        "|---|---:|---:|---:|---|",
    ]
    for category, reasons in r.by_category().items():
        why = ", ".join(f"{k}: {n}" for k, n in sorted(reasons.items()) if k != REUSED) or "-"
        total = sum(reasons.values())
        lines.append(f"| {category} | {total} | {reasons[REUSED]} | {total - reasons[REUSED]} | {why} |")
    lines += ["", "Reused rows keep their provenance (the spec hash they were made under): their spec(category)"]
    lines += ["is unchanged. Other changes (model, sampling, judge, filter) are not detected: use --full."]
    return "\n".join(lines) + "\n"


def regenerated_categories(prompts: Sequence[PromptReuse]) -> list[str]:
    """Categories with at least one regenerated prompt, in first-seen order.

    >>> regenerated_categories([PromptReuse("a", "privacy", 0, "reused"), PromptReuse("b", "none", 1, "new")])
    ['none']
    """
    return list(dict.fromkeys(p.category for p in prompts if p.reason != REUSED))
