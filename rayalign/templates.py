"""Prompt templates are files: read and check them once, for the judge and for generation.

A template is ``string.Template`` text in ``specs/templates/``, optionally cut
into parts by lines ``<!-- section: NAME -->`` (the text before the first such
line is the part ``main``). Checking on load turns a typo in a placeholder into
an error naming the file and line instead of a failure at render time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from string import Template

from rayalign.errors import LocatedError

TEMPLATE_DIR = "templates"
MAIN = "main"
SECTION_LINE = re.compile(r"^<!-- section: ([a-z_]+) -->[ \t]*$")

Placeholders = Mapping[str, tuple[frozenset[str], frozenset[str]]]
"""part -> (placeholders allowed there, placeholders required there)."""


def template_dir(spec_dir: str | Path) -> Path:
    """``<spec_dir>/templates``; ``spec_dir`` may also be the spec's ``spec.yaml``."""
    root = Path(spec_dir)
    return (root.parent if root.is_file() else root) / TEMPLATE_DIR


def read_template(path: Path, error: type[LocatedError], kind: str) -> tuple[bytes, str]:
    """A template's bytes (to hash) and text; a missing file or bad UTF-8 raises ``error``."""
    if not path.is_file():
        raise error(f"{kind} prompt template not found", file=str(path))
    data = path.read_bytes()
    try:
        return data, data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error("not valid UTF-8", file=str(path), line=line) from None


def content_hash(*files: bytes) -> str:
    """``sha256:`` + 16 hex digits over the files, length-prefixed so no two file lists collide.

    >>> content_hash(b"ab", b"c") != content_hash(b"a", b"bc")
    True
    """
    digest = hashlib.sha256()
    for data in files:
        digest.update(len(data).to_bytes(8, "big") + data)
    return f"sha256:{digest.hexdigest()[:16]}"


def check_starts_with_spec(text: str, file: str, error: type[LocatedError], why: str) -> None:
    """A system template must open with ``$spec``: prompts of one category then share a prefix."""
    if not re.match(r"\$(spec\b|\{spec\})", text):
        raise error(f"must start with $spec, so that {why} share a prompt prefix", file=file, line=1)


def split_sections(
    text: str, file: str, parts: Sequence[str], error: type[LocatedError], optional: Sequence[str] = ()
) -> dict[str, tuple[int, str]]:
    """Split a template into its parts: name -> (first line number, raw body).

    ``parts[0]`` names the text before the first section line; every other
    name in ``parts`` must appear exactly once as a section, and each name in
    ``optional`` at most once (absent ones are absent from the result).

    >>> split_sections("a\\n<!-- section: x -->\\nb", "f", ("main", "x"), LocatedError)
    {'main': (1, 'a'), 'x': (3, 'b')}
    """
    found: dict[str, tuple[int, list[str]]] = {parts[0]: (1, [])}
    current = parts[0]
    for number, line in enumerate(text.split("\n"), start=1):
        match = SECTION_LINE.match(line)
        if not match:
            found[current][1].append(line)
            continue
        current = match.group(1)
        if current not in (*parts[1:], *optional):
            known = ", ".join((*parts[1:], *optional))
            raise error(f"unknown section {current!r}; known: {known}", file=file, line=number)
        if current in found:
            raise error(f"section {current!r} appears twice", file=file, line=number)
        found[current] = (number + 1, [])
    missing = [p for p in parts if p not in found]
    if missing:
        raise error(f"missing section(s): {', '.join(missing)}", file=file)
    return {name: (first, "\n".join(lines)) for name, (first, lines) in found.items()}


def check_placeholders(
    body: str,
    first_line: int,
    file: str,
    part: str,
    placeholders: Placeholders,
    error: type[LocatedError],
) -> None:
    """Every ``$name`` in ``body`` is allowed in ``part`` and every required one is used."""
    allowed, required = placeholders[part]
    seen: set[str] = set()
    for match in Template.pattern.finditer(body):
        line = first_line + body.count("\n", 0, match.start())
        if match.group("invalid") is not None:
            raise error("stray '$'; write $$ for a literal dollar sign", file=file, line=line)
        name = match.group("named") or match.group("braced")
        if name is None:
            continue  # $$, an escaped dollar
        if name not in allowed:
            known = ", ".join(f"${n}" for n in sorted(allowed))
            message = f"unknown placeholder in {part}; allowed there: {known}"
            raise error(message, file=file, line=line, field=f"${name}")
        seen.add(name)
    missing = sorted(required - seen)
    if missing:
        raise error(f"{part} must use this placeholder", file=file, field=f"${missing[0]}")
