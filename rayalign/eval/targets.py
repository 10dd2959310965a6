"""What an eval compares: named checkpoints, and their spec-in-context variants."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rayalign.errors import EvalError

SPEC_SUFFIX = "+spec"
"""Name suffix of a target's spec-in-context variant: ``base`` -> ``base+spec``."""
_TARGET_NAME = re.compile(r"^[A-Za-z0-9_.-]+(\+spec)?$")


@dataclass(frozen=True)
class EvalTarget:
    """One thing to evaluate: a checkpoint, optionally with the spec in its prompt."""

    name: str
    """Row name in the report, e.g. base, sft, rl, base+spec."""
    model: str
    """Model source (builtin:<name>, a local HF directory, a .gguf file, a HF id)."""
    spec_in_context: bool = False
    """Show spec(category) and the stage-1 instructions at inference time (no training)."""


def parse_checkpoints(text: str) -> list[EvalTarget]:
    """Targets from ``name=source`` items separated by commas.

    ``name+spec=source`` is a spec-in-context target; a bare ``name+spec``
    adds the spec-in-context variant of the target ``name`` listed before it.

    >>> [(t.name, t.model, t.spec_in_context) for t in parse_checkpoints("base=builtin:tiny,base+spec")]
    [('base', 'builtin:tiny', False), ('base+spec', 'builtin:tiny', True)]
    """
    targets: list[EvalTarget] = []
    for i, item in enumerate(part.strip() for part in text.split(",")):
        field = f"checkpoints[{i}]"
        name, sep, source = (s.strip() for s in item.partition("="))
        if not _TARGET_NAME.match(name):
            raise EvalError(f"expected name=source or name+spec, got {item!r}", field=field)
        if sep and not source:
            raise EvalError(f"{name!r} has no model source after '='", field=field)
        if not sep and not name.endswith(SPEC_SUFFIX):
            raise EvalError(f"{name!r} needs a model source: {name}=<source>", field=field)
        if sep:
            target = EvalTarget(name, source, spec_in_context=name.endswith(SPEC_SUFFIX))
        else:
            target = _spec_variant(targets, name.removesuffix(SPEC_SUFFIX), field)
        targets = _append_unique(targets, target, field)
    return targets


def add_spec_in_context(targets: Sequence[EvalTarget], names: Iterable[str]) -> list[EvalTarget]:
    """``targets`` plus the spec-in-context variant (``<name>+spec``) of each named one.

    >>> base = EvalTarget("base", "builtin:tiny")
    >>> [t.name for t in add_spec_in_context([base], ["base"])]
    ['base', 'base+spec']
    """
    out = list(targets)
    for i, name in enumerate(names):
        field = f"spec_in_context[{i}]"
        out = _append_unique(out, _spec_variant(out, name, field), field)
    return out


def _spec_variant(targets: Sequence[EvalTarget], name: str, field: str) -> EvalTarget:
    base = next((t for t in targets if t.name == name and not t.spec_in_context), None)
    if base is None:
        known = ", ".join(t.name for t in targets) or "none"
        raise EvalError(f"no target {name!r} listed before it to add the spec to; targets: {known}", field=field)
    return EvalTarget(name + SPEC_SUFFIX, base.model, spec_in_context=True)


def _append_unique(targets: list[EvalTarget], target: EvalTarget, field: str) -> list[EvalTarget]:
    if any(t.name == target.name for t in targets):
        raise EvalError(f"target {target.name!r} is listed twice", field=field)
    return [*targets, target]
