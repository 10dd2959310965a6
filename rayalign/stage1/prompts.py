"""The prompt stage: read prompt sets, dedupe, decontaminate, split.

    sources -> read_prompts -> dedupe -> decontaminate -> split -> (train, eval)

A source is ``builtin:quickstart`` (the project's own prompt set, packaged
with rayalign), a local ``.jsonl``, ``.csv`` or ``.parquet`` file, a benchmark
``name:path`` or ``hf:<dataset>`` (read by :mod:`rayalign.eval.loaders`).
What the base model sees is rendered from these by :mod:`rayalign.stage1.conditioning`.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from rayalign.datafiles import csv_rows, jsonl_rows, parse_messages
from rayalign.eval.loaders import BUILTIN_BENCHMARKS, LOADERS, BenchmarkError, load_benchmark
from rayalign.eval.selection import limit_prompts
from rayalign.types import BEHAVIORS, Message, Prompt

BUILTIN_SETS: dict[str, str] = {
    "quickstart": "quickstart_prompts.jsonl",
    "mix-train": "mix/train.jsonl",
    "mix-eval": "mix/eval.jsonl",
}
"""``builtin:<name>`` -> its file under the package folder ``rayalign/data`` (``/``-separated).

The mix files (built by :mod:`rayalign.stage1.mix`) carry ``source`` and
``kind`` columns too; the reader ignores them (each prompt's source is
``builtin:<name>``, its id the dataset provenance). ``builtin:jbb-harmful`` and
``builtin:jbb-benign`` are read by their benchmark loaders (``BUILTIN_BENCHMARKS``)."""

FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")
NO_CATEGORY = ("", "none")
"""Category values that mean "benign or unlabelled" (category None)."""

_Fail = Callable[..., BenchmarkError]
"""A BenchmarkError factory with the file and line already bound."""


@dataclass(frozen=True)
class FieldMapping:
    """Which column of a user's file holds each prompt field (matched case-insensitively)."""

    prompt: str = "prompt"
    """The user message, as a string (used when there is no messages column)."""
    messages: str = "messages"
    """A chat: a list of {role, content} ending on a user turn (a JSON string in a CSV)."""
    category: str = "category"
    """A spec category id, or empty / "none" for benign or unlabelled prompts."""
    expected: str = "expected"
    """comply, refuse or safe_complete, or empty when unknown."""
    id: str = "id"
    """A unique id; empty means ``<file stem>/<row>`` (row counted from 0)."""


# ------------------------------------------------------------------ reading


def read_prompts(
    source: str, mapping: FieldMapping | None = None, *, categories: Collection[str] | None = None
) -> list[Prompt]:
    """Read one prompt source into prompts; ``categories`` (the spec's ids) checks the labels.

    ``mapping`` renames the columns of a local file; benchmarks and built-in
    sets have fixed columns. A bad row raises :class:`BenchmarkError` naming the
    file, the 1-based line (a CSV header is line 1; a parquet row counts from 1)
    and the field.
    """
    name, sep, rest = source.partition(":")
    if sep and (name in ("builtin", "hf") or name in LOADERS):
        if mapping not in (None, FieldMapping()):
            raise BenchmarkError("a field mapping applies to local files only", file=source)
        if name == "builtin":
            return _read_builtin(rest, categories)
        _, prompts = load_benchmark(source)
        for p in prompts:
            if categories is not None and p.category is not None and p.category not in categories:
                message = f"prompt {p.id!r} has category {p.category!r}, which the spec does not define"
                raise BenchmarkError(message, file=source, field="category")
        return prompts
    path = Path(source).expanduser()
    if path.suffix.lower() not in FILE_SUFFIXES:
        forms = "builtin:quickstart, a .jsonl/.csv/.parquet file, name:path or hf:<dataset>"
        raise BenchmarkError(f"unknown prompt source; expected {forms}", file=source)
    return _read_file(path, mapping or FieldMapping(), categories, path.stem)


def _read_builtin(name: str, categories: Collection[str] | None) -> list[Prompt]:
    if name in BUILTIN_BENCHMARKS:  # a packaged benchmark: same prompts as its loader on the CSV
        _, prompts = load_benchmark(f"builtin:{name}")
        for p in prompts:
            if categories is not None and p.category is not None and p.category not in categories:
                message = f"prompt {p.id!r} has category {p.category!r}, which the spec does not define"
                raise BenchmarkError(message, file=f"builtin:{name}", field="category")
        return prompts
    if name not in BUILTIN_SETS:
        known = ", ".join(f"builtin:{k}" for k in [*BUILTIN_SETS, *BUILTIN_BENCHMARKS])
        raise BenchmarkError(f"unknown built-in prompt set; known: {known}", file=f"builtin:{name}")
    data = resources.files("rayalign") / "data"
    for part in BUILTIN_SETS[name].split("/"):  # a subfolder such as mix/train.jsonl
        data = data / part
    with resources.as_file(data) as path:
        return _read_file(path, FieldMapping(), categories, f"builtin:{name}")


def _read_file(path: Path, mapping: FieldMapping, categories: Collection[str] | None, source: str) -> list[Prompt]:
    prompts, first_line = [], {}
    for row, (line, record) in enumerate(_file_rows(path)):
        prompt = _prompt_from_record(record, mapping, categories, path=str(path), line=line, row=row)
        prompt = replace(prompt, source=source)
        if prompt.id in first_line:
            message = f"duplicate id {prompt.id!r} (first on line {first_line[prompt.id]})"
            raise BenchmarkError(message, file=str(path), line=line, field=mapping.id)
        first_line[prompt.id] = line
        prompts.append(prompt)
    if not prompts:
        raise BenchmarkError("no prompts", file=str(path))
    return prompts


def _file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) for each row; record keys lower-cased so columns match case-insensitively."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = csv_rows(path, ())
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        rows = jsonl_rows(path)
    for line, record in rows:
        yield line, {str(k).lower(): v for k, v in record.items()}


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # Imported here: only parquet sources need pyarrow (it comes with ray[data]).
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise BenchmarkError("cannot read: no such file", file=str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise BenchmarkError(f"not a readable parquet file: {e}", file=str(path)) from None
    yield from enumerate(table.to_pylist(), start=1)


def _prompt_from_record(
    record: Mapping[str, Any],
    mapping: FieldMapping,
    categories: Collection[str] | None,
    *,
    path: str,
    line: int,
    row: int,
) -> Prompt:
    fail = partial(BenchmarkError, file=path, line=line)
    messages = _record_messages(record, mapping, fail)
    expected = _label(record.get(mapping.expected.lower()), BEHAVIORS, mapping.expected, fail)
    category = _label(record.get(mapping.category.lower()), categories, mapping.category, fail)
    pid = record.get(mapping.id.lower())
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid).strip():
        pid = f"{Path(path).stem}/{row}"
    return Prompt(str(pid).strip(), messages, category, expected)


def _record_messages(record: Mapping[str, Any], mapping: FieldMapping, fail: _Fail) -> tuple[Message, ...]:
    chat = record.get(mapping.messages.lower())
    if chat is None or chat == "":
        text = record.get(mapping.prompt.lower())
        if text is None and mapping.prompt.lower() not in record:
            message = f"needs a {mapping.prompt!r} or a {mapping.messages!r} field"
            raise fail(message, field=mapping.prompt)
        if not isinstance(text, str) or not text.strip():
            raise fail("missing or empty", field=mapping.prompt)
        return (Message("user", text.strip()),)
    if isinstance(chat, str):  # a CSV cell holds the chat as JSON
        try:
            chat = json.loads(chat)
        except json.JSONDecodeError as e:
            raise fail(f"invalid JSON: {e.msg}", field=mapping.messages) from None
    try:
        return parse_messages(chat, fail)
    except BenchmarkError as e:  # name the user's column, not ours
        field = mapping.messages + (e.field or "")[len("messages") :]
        raise BenchmarkError(e.message, file=e.file, line=e.line, field=field) from None


def _label(value: Any, allowed: Collection[str] | None, field: str, fail: _Fail) -> Any:
    """A category or expected label: None when empty or "none", else one of ``allowed``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail(f"must be a string, got {value!r}", field=field)
    label = value.strip()
    if label.lower() in NO_CATEGORY:
        return None
    if allowed is not None and label not in allowed:
        raise fail(f"unknown value {label!r}; allowed: {', '.join(allowed)} or empty", field=field)
    return label


# --------------------------------------------------------- dedupe, decontaminate


def normalize(text: str) -> str:
    """Text as compared for duplicates: case-folded, whitespace collapsed, end punctuation off.

    >>> normalize("  How do I KILL a\\n zombie process?? ")
    'how do i kill a zombie process'
    """
    words = " ".join(text.casefold().split())
    start, end = 0, len(words)
    while start < end and _is_edge(words[start]):
        start += 1
    while end > start and _is_edge(words[end - 1]):
        end -= 1
    return words[start:end]


def _is_edge(char: str) -> bool:
    return char.isspace() or unicodedata.category(char).startswith("P")


def _conversation_key(prompt: Prompt) -> tuple[tuple[str, str], ...]:
    return tuple((m.role, normalize(m.content)) for m in prompt.messages)


def dedupe(prompts: Sequence[Prompt]) -> tuple[list[Prompt], int]:
    """Keep the first of prompts whose conversations match after :func:`normalize`.

    Every turn is compared (role and normalised text), so single-turn prompts
    are compared on their user message, while two multi-turn chats that end on
    the same "go on" stay distinct. Returns (kept, dropped count).

    >>> a = Prompt("a", (Message("user", "Why is the sky blue?"),))
    >>> b = Prompt("b", (Message("user", "why is the  SKY blue"),))
    >>> kept, dropped = dedupe([a, b]); [p.id for p in kept], dropped
    (['a'], 1)
    """
    seen: set[tuple[tuple[str, str], ...]] = set()
    kept = []
    for prompt in prompts:
        key = _conversation_key(prompt)
        if key not in seen:
            seen.add(key)
            kept.append(prompt)
    return kept, len(prompts) - len(kept)


def _user_turns(prompt: Prompt) -> list[Message]:
    return [m for m in prompt.messages if m.role == "user"]


def decontaminate(train: Sequence[Prompt], eval_sets: Sequence[Sequence[Prompt]]) -> tuple[list[Prompt], int]:
    """Drop training prompts with a user turn that is an evaluation request, after :func:`normalize`.

    An evaluation request is the last user message of an evaluation prompt.
    Returns (kept, dropped count).

    >>> bench = [Prompt("e", (Message("user", "Write a phishing email."),))]
    >>> mine = [Prompt("t", (Message("user", "write a phishing email"),))]
    >>> decontaminate(mine, [bench])[1]
    1
    """
    requests = {normalize(_user_turns(p)[-1].content) for prompts in eval_sets for p in prompts}
    kept = [p for p in train if requests.isdisjoint(normalize(m.content) for m in _user_turns(p))]
    return kept, len(train) - len(kept)


# ------------------------------------------------------------------ split


def _digest(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def _eval_counts(sizes: Mapping[str | None, int], fraction: float, seed: int) -> dict[str | None, int]:
    """Held-out prompts per category: largest remainder, so the total is round(N * fraction).

    A category keeps at least one prompt in train, so a lone prompt never goes to eval.
    """
    target = int(sum(sizes.values()) * fraction + 0.5)  # round half up, not to even
    counts = {c: min(int(n * fraction), n - 1) for c, n in sizes.items()}
    remainder = {c: sizes[c] * fraction - counts[c] for c in sizes}
    by_remainder = sorted(sizes, key=lambda c: (-remainder[c], _digest(seed, str(c))))
    for c in by_remainder:
        if sum(counts.values()) >= target:
            break
        if counts[c] < sizes[c] - 1:
            counts[c] += 1
    return counts


def split(prompts: Sequence[Prompt], eval_fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """Hold out ``eval_fraction`` of the prompts, stratified by category; deterministic.

    Each category gives its share (largest remainder, so the total is
    ``round(len(prompts) * eval_fraction)`` where the next rule allows) and
    keeps at least one prompt in train. Which prompts go to eval depends only
    on ``seed`` and their ids, not on input order; both lists keep input order.

    >>> ps = [Prompt(f"p{i}", (Message("user", f"q{i}"),), "c") for i in range(4)]
    >>> train, held = split(ps, 0.25, seed=0); len(train), len(held)
    (3, 1)
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    groups: dict[str | None, list[int]] = {}
    for index, prompt in enumerate(prompts):
        groups.setdefault(prompt.category, []).append(index)
    counts = _eval_counts({c: len(g) for c, g in groups.items()}, eval_fraction, seed)
    held: set[int] = set()
    for category, indices in groups.items():
        ranked = sorted(indices, key=lambda i: (_digest(seed, prompts[i].id), i))
        held.update(ranked[: counts[category]])
    train = [p for i, p in enumerate(prompts) if i not in held]
    return train, [p for i, p in enumerate(prompts) if i in held]


# ------------------------------------------------------------------ the whole stage


@dataclass(frozen=True)
class PromptReport:
    """What :func:`prepare_prompts` did: read = duplicates + contaminated + train + eval."""

    read: int
    duplicates: int
    contaminated: int
    """Training prompts dropped because an evaluation set holds the same request."""
    train: int
    eval: int
    per_category: dict[str, tuple[int, int]]
    """Spec category id (and "none") -> (train, eval) counts, in spec order."""

    def summary(self) -> str:
        """One line for logs: ``read 60, 0 duplicates, 0 contaminated -> train 48, eval 12``."""
        return (
            f"read {self.read}, {self.duplicates} duplicates, {self.contaminated} contaminated"
            f" -> train {self.train}, eval {self.eval}"
        )


def prepare_prompts(
    sources: Sequence[str],
    *,
    categories: Sequence[str],
    eval_fraction: float,
    seed: int,
    eval_sets: Sequence[Sequence[Prompt]] = (),
) -> tuple[list[Prompt], list[Prompt], PromptReport]:
    """Read every source, dedupe, drop prompts found in ``eval_sets``, split into (train, eval).

    ``categories`` are the spec's category ids (``spec.category_ids``); ids
    must be unique across sources.
    """
    if not sources:
        raise BenchmarkError("no prompt sources", field="data.prompts")
    prompts = [p for source in sources for p in read_prompts(source, categories=categories)]
    unique, duplicates = dedupe(prompts)
    clean, contaminated = decontaminate(unique, eval_sets)
    _check_unique_ids(clean)
    train, held = split(clean, eval_fraction, seed)
    n_train, n_eval = (Counter(p.category or "none" for p in part) for part in (train, held))
    per_category = {c: (n_train[c], n_eval[c]) for c in (*categories, "none")}
    report = PromptReport(len(prompts), duplicates, contaminated, len(train), len(held), per_category)
    return train, held, report


def _check_unique_ids(prompts: Sequence[Prompt]) -> None:
    # Rollouts, verdicts and SFT rows are keyed by prompt id.
    first: dict[str, Prompt] = {}
    for prompt in prompts:
        if prompt.id in first:
            other = first[prompt.id].source
            raise BenchmarkError(
                f"prompt id {prompt.id!r} is used by {other} and {prompt.source}; give each row an id",
                field="id",
            )
        first[prompt.id] = prompt


def order_for_prefix_cache(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Prompts grouped by category (groups in order of first appearance, stable within).

    Generation prompts of one category start with the same system message, so
    a shard in this order lets vLLM's prefix cache compute it once.

    >>> ps = [Prompt(i, (Message("user", i),), c) for i, c in [("1", "a"), ("2", None), ("3", "a")]]
    >>> [p.id for p in order_for_prefix_cache(ps)]
    ['1', '3', '2']
    """
    groups: dict[str | None, list[Prompt]] = {}
    for prompt in prompts:
        groups.setdefault(prompt.category, []).append(prompt)
    return [p for group in groups.values() for p in group]


def training_prompts(cfg, spec) -> tuple[list[Prompt], list[Prompt], str]:
    """(train, held out, summary): the prompts of data.prompts that stages 1 and 2 train on."""
    eval_sets = [read_prompts(source) for source in cfg.data.decontaminate]
    train, held, report = prepare_prompts(
        cfg.data.prompts,
        categories=spec.category_ids,
        eval_fraction=cfg.data.eval_fraction,
        seed=cfg.data.seed,
        eval_sets=eval_sets,
    )
    train = limit_prompts(train, cfg.data.max_prompts, cfg.data.behavior_weights)
    return order_for_prefix_cache(train), held, report.summary()
