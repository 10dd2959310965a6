"""The one place that reads and writes data files: JSONL, CSV and typed records.

JSONL is split on ``\\n`` only. Records are written with ``ensure_ascii=False``,
so a completion may hold raw U+2028, U+2029 or NEL (U+0085); ``str.splitlines()``
would cut a record at those, so nothing here uses it. Every reader names the
file, the 1-based line and the field of a malformed row; every writer replaces
its file atomically, so a reader sees all of it or none of it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from rayalign.errors import LocatedError
from rayalign.types import Message, from_dict, to_json

T = TypeVar("T")


class DataFileError(LocatedError):
    """A data file, row or field that cannot be read."""


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (a leading BOM, as Excel writes, is dropped)."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataFileError(f"cannot read: {e.strerror}", file=str(path)) from None
    except UnicodeDecodeError:
        raise DataFileError("not UTF-8 text", file=str(path)) from None


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line, line) for each non-blank JSONL line, split on ``\\n`` only.

    >>> [n for n, _ in jsonl_lines('{"a": "x\\u2028y"}\\n\\n{"b": 1}\\n')]
    [1, 3]
    """
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield number, line


def jsonl_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each JSONL row; anything but a JSON object is an error."""
    for line, text in jsonl_lines(read_text(path)):
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(f"invalid JSON: {e.msg}", file=str(path), line=line) from None
        if not isinstance(record, dict):
            raise DataFileError("expected a JSON object", file=str(path), line=line)
        yield line, record


def read_records(path: str | Path, cls: type[T]) -> list[T]:
    """Typed records (see :mod:`rayalign.types`) from a JSONL file written by :func:`write_records`."""
    out = []
    for line, record in jsonl_rows(path):
        try:
            out.append(from_dict(cls, record))
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise DataFileError(f"not a {cls.__name__} record: {e}", file=str(path), line=line) from None
    return out


def write_atomic(path: str | Path, lines: Iterable[str]) -> None:
    """Write lines so that readers see all of the file or none of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_records(path: str | Path, records: Iterable[Any]) -> None:
    """Typed records as JSONL, atomically."""
    write_atomic(path, (to_json(r) for r in records))


def csv_rows(path: str | Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line, row) with lower-cased column names; line is the row's first line."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    fail = partial(DataFileError, file=str(path))
    header = [h.strip().lower() for h in next(reader, [])]
    for column in required:
        if column not in header:
            raise fail(f"missing column; the header has: {', '.join(header)}", line=1, field=column)
    line = reader.line_num
    for values in reader:
        start, line = line + 1, reader.line_num  # a quoted field may span lines
        if not any(v.strip() for v in values):
            continue
        if len(values) > len(header):
            raise fail(f"{len(values)} fields but the header has {len(header)}", line=start)
        yield start, dict(zip(header, values + [""] * (len(header) - len(values))))


def parse_messages(value: Any, fail: Callable[..., LocatedError]) -> tuple[Message, ...]:
    """A ``messages`` field: a non-empty list of chat turns ending on a user turn."""
    if not isinstance(value, list) or not value:
        raise fail("must be a non-empty list", field="messages")
    messages = []
    for i, turn in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant"):
            raise fail("needs role system, user or assistant", field=where)
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            raise fail("missing or empty", field=f"{where}.content")
        messages.append(Message(turn["role"], content.strip()))
    if messages[-1].role != "user":
        raise fail("must end on a user turn", field="messages")
    return tuple(messages)
