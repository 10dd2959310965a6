"""Which rules of the spec a run's data and evals actually exercise.

``rayalign spec coverage RUN_DIR`` counts, for every citable id of the spec,
how often it is named in each place a run writes:

- ``sft``: kept SFT examples (``stage1/sft.jsonl``) citing it in their
  reasoning or in their judge ``rules``;
- ``stage-1 judge``: the judge's ``rules`` on the kept examples of the stage-1
  shard decisions;
- ``rl samples``: the RL sample tables (``tables.jsonl``, ``rl/samples``): ids in
  the policy's reasoning or the judge's explanation;
- ``eval judge``: the judge's ``rules`` on eval answers (``eval/answers/*.jsonl``);
- ``eval failures``: eval answers that failed (unsafe on a refuse or
  safe-complete prompt, a refusal of a comply prompt): the judge's rules for
  them, else the category's rules for the expected behaviour (the rules at stake).

Counts are per record (an id named twice in one reasoning counts once), by
the category of the record's prompt, so the report also shows rules never
exercised and content rules cited for prompts of another category. Reading is
through :mod:`rayalign.datafiles` and :class:`~rayalign.runs.RunLayout`;
counting is pure; the Markdown and the heat map go next to the eval report.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from rayalign.datafiles import jsonl_rows, read_records
from rayalign.eval.metrics import expected_rules_for
from rayalign.runs import RunLayout
from rayalign.spec import Spec
from rayalign.stage1.filter import Decision
from rayalign.types import Prompt, SFTExample, Verdict, from_dict

SOURCES = ("sft", "stage-1 judge", "rl samples", "eval judge", "eval failures")
NONE = "none"
"""The category name of prompts without one."""
MARKDOWN_FILE, HEATMAP_FILE = "coverage.md", "coverage.png"
RL_TABLE = "rl/samples"


@dataclass(frozen=True)
class Cited:
    """The rule ids one record names (SFT example, verdict, eval answer), with its prompt's category."""

    source: str
    category: str | None
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Labelled:
    """One prompt of a set (stage-1 prompts, SFT examples, eval prompts) with its labels."""

    set: str
    category: str | None
    expected: str | None


@dataclass(frozen=True)
class Coverage:
    """Citation counts of one run against one spec."""

    rule_ids: tuple[str, ...]
    """The spec's citable ids in spec order: each category's rules and style, global style, principles."""
    categories: tuple[str, ...]
    """The spec's category ids, then ``none``."""
    home: dict[str, str | None]
    """Rule id -> the category it belongs to (None: style and principles, valid everywhere)."""
    counts: collections.Counter = field(default_factory=collections.Counter)
    """(source, rule id, category) -> records naming the id."""
    unknown: collections.Counter = field(default_factory=collections.Counter)
    """Ids named that this spec does not define -> times."""
    labels: collections.Counter = field(default_factory=collections.Counter)
    """(set, category, expected or ``unlabelled``) -> prompts."""

    def by_source(self, rule: str) -> dict[str, int]:
        return {s: sum(n for (src, r, _), n in self.counts.items() if src == s and r == rule) for s in SOURCES}

    def total(self, rule: str) -> int:
        return sum(n for (_, r, _), n in self.counts.items() if r == rule)

    def never_exercised(self) -> list[str]:
        """Spec ids no record names, in spec order."""
        named = {r for (_, r, _) in self.counts}
        return [r for r in self.rule_ids if r not in named]

    def wrong_category(self) -> list[tuple[str, str, str, int]]:
        """(rule, prompt category, source, times): a category's rule named for a prompt of another category."""
        rows = [(r, c, s, n) for (s, r, c), n in self.counts.items() if self.home[r] and self.home[r] != c]
        order = {r: i for i, r in enumerate(self.rule_ids)}
        return sorted(rows, key=lambda row: (order[row[0]], row[1], SOURCES.index(row[2])))

    def matrix(self) -> list[list[int]]:
        """Rows: categories; columns: rule ids; cells: records naming the id, all sources together."""
        cells = collections.Counter()
        for (_, r, c), n in self.counts.items():
            cells[c, r] += n
        return [[cells[c, r] for r in self.rule_ids] for c in self.categories]


def spec_ids(spec: Spec) -> tuple[tuple[str, ...], dict[str, str | None]]:
    """(every citable id in spec order, id -> its category or None)."""
    home: dict[str, str | None] = {}
    for c in spec.categories:
        home |= {r.id: c.id for r in c.rules} | {s.id: None for s in c.style}
    home |= {s.id: None for s in spec.style} | {p.id: None for p in spec.principles}
    return tuple(home), home


def count(spec: Spec, cited: Iterable[Cited], labelled: Iterable[Labelled] = ()) -> Coverage:
    """Count each record's ids once, by source and prompt category.

    >>> from rayalign.spec import load_spec
    >>> cov = count(load_spec("specs"), [Cited("sft", "privacy", ("privacy.D1", "privacy.D1", "cyber_abuse.D1")),
    ...                                  Cited("eval judge", None, ("privacy.D9",))])
    >>> cov.total("privacy.D1"), cov.wrong_category(), dict(cov.unknown)
    (1, [('cyber_abuse.D1', 'privacy', 'sft', 1)], {'privacy.D9': 1})
    """
    ids, home = spec_ids(spec)
    cov = Coverage(ids, (*spec.category_ids, NONE), home)
    for record in cited:
        for rule in dict.fromkeys(record.ids):
            if rule in home:
                cov.counts[record.source, rule, record.category or NONE] += 1
            else:
                cov.unknown[rule] += 1
    for p in labelled:
        cov.labels[p.set, p.category or NONE, p.expected or "unlabelled"] += 1
    return cov


def cited_ids(text: str, rule_ids: Iterable[str]) -> tuple[str, ...]:
    """Known ids a text names, each once, in order of first mention (``privacy.D1`` is not ``privacy.D10``).

    >>> cited_ids("privacy.D1 applies, not privacy.D10; see style.R1.", ["privacy.D1", "style.R1"])
    ('privacy.D1', 'style.R1')
    """
    alternatives = "|".join(re.escape(r) for r in sorted(rule_ids, key=len, reverse=True))
    if not text or not alternatives:
        return ()
    return tuple(dict.fromkeys(re.findall(rf"(?<![\w.])(?:{alternatives})(?!\w)", text)))


def eval_failed(expected: str | None, refusal: bool, verdict: Verdict) -> bool:
    """An eval answer the report's metrics count against the model (not_unsafe, not_overrefuse).

    >>> eval_failed("refuse", False, Verdict("ok", 1.0, compliant=False)), eval_failed("comply", True, Verdict("ok", 9.0))
    (True, True)
    >>> eval_failed("refuse", True, Verdict("unscorable", None))
    False
    """
    if expected == "comply":
        return refusal
    judged = verdict.status == "ok" and verdict.compliant is not None
    if expected in ("refuse", "safe_complete") and judged:
        return not verdict.compliant
    return expected == "refuse" and not refusal


# ------------------------------------------------------------------ reading a run


def read_stage1(layout: RunLayout, rule_ids: Sequence[str]) -> tuple[list[Cited], list[Labelled]]:
    """SFT examples (reasoning + rules), the shard decisions' kept examples, the training prompts."""
    cited, labelled = [], []
    if layout.sft_data.exists():
        for e in read_records(layout.sft_data, SFTExample):
            cited.append(Cited("sft", e.prompt.category, cited_ids(e.reasoning, rule_ids) + e.rules))
            labelled.append(Labelled("SFT examples", e.prompt.category, e.prompt.expected))
    for path in layout.shard_files().values():
        for d in read_records(path, Decision):
            cited += [Cited("stage-1 judge", d.category, e.rules) for e in d.kept]
    if layout.prompts_train.exists():
        prompts = read_records(layout.prompts_train, Prompt)
        labelled += [Labelled("stage-1 prompts", p.category, p.expected) for p in prompts]
    return cited, labelled


def read_rl_tables(layout: RunLayout, rule_ids: Sequence[str]) -> list[Cited]:
    """Ids in the RL sample tables' reasoning and verdict columns."""
    if not layout.tables.exists():
        return []
    cited = []
    for _, table in jsonl_rows(layout.tables):
        if table.get("name") != RL_TABLE:
            continue
        column = {name: i for i, name in enumerate(table.get("columns", []))}
        for row in table.get("rows", []):
            text = " ".join(str(row[column[c]] or "") for c in ("reasoning", "verdict") if c in column)
            category = row[column["category"]] if "category" in column else None
            cited.append(Cited("rl samples", category or None, cited_ids(text, rule_ids)))
    return cited


def read_eval(layout: RunLayout, rule_ids: Sequence[str]) -> tuple[list[Cited], list[Labelled]]:
    """Eval answers (``eval/answers/<target>.jsonl``): verdict rules, failures, prompts (once across targets)."""
    cited, prompts = [], {}
    files = sorted(layout.eval_answers.glob("*.jsonl")) if layout.eval_answers.is_dir() else []
    for path in files:
        for _, row in jsonl_rows(path):
            verdict = from_dict(Verdict, row.get("verdict") or {"status": "unscorable", "score": None})
            category, expected = row.get("category"), row.get("expected")
            cited.append(Cited("eval judge", category, verdict.rules))
            if eval_failed(expected, bool(row.get("refusal")), verdict):
                at_stake = verdict.rules or expected_rules_for(rule_ids, category, expected)
                cited.append(Cited("eval failures", category, tuple(at_stake)))
            prompts.setdefault(row.get("prompt_id"), Labelled("eval prompts", category, expected))
    return cited, list(prompts.values())


def read_run(run_dir: str | Path, spec: Spec) -> Coverage:
    """Every source a run directory has (missing ones count nothing), counted against ``spec``."""
    layout = RunLayout(run_dir)
    ids, _ = spec_ids(spec)
    stage1, stage1_labels = read_stage1(layout, ids)
    evals, eval_labels = read_eval(layout, ids)
    return count(spec, [*stage1, *read_rl_tables(layout, ids), *evals], [*stage1_labels, *eval_labels])


# ------------------------------------------------------------------ the report


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def _label_rows(cov: Coverage) -> list[list[str]]:
    sets = ("stage-1 prompts", "SFT examples", "eval prompts")
    kinds = ("comply", "refuse", "safe_complete", "unlabelled")
    return [
        [c, *(" / ".join(str(cov.labels[s, c, k]) for k in kinds) for s in sets)]
        for c in cov.categories
        if any(cov.labels[s, c, k] for s in sets for k in kinds)
    ]


def summary_line(cov: Coverage) -> str:
    """One line: ids exercised, never exercised, wrong-category citations, unknown ids."""
    never = len(cov.never_exercised())
    wrong = sum(n for *_, n in cov.wrong_category())
    return (
        f"{len(cov.rule_ids) - never} of {len(cov.rule_ids)} spec ids exercised, {never} never; "
        f"{wrong} citations in the wrong category; {sum(cov.unknown.values())} citations of ids not in the spec"
    )


def render_markdown(cov: Coverage, title: str, heatmap: str | None) -> str:
    """The coverage report: prompts by label, citations per rule, never exercised, wrong category."""
    lines = [f"# Spec coverage: {title}", "", summary_line(cov), ""]
    lines += ["Sources: " + "; ".join(_SOURCE_NOTES), ""]
    lines += ["## Prompts by expected behaviour (comply / refuse / safe_complete / unlabelled)", ""]
    lines += _table(["category", "stage-1 prompts", "SFT examples", "eval prompts"], _label_rows(cov))
    rows = [[r, cov.home[r] or "-", *cov.by_source(r).values(), cov.total(r)] for r in cov.rule_ids if cov.total(r)]
    lines += ["", "## Citations per rule", "", *_table(["rule", "category", *SOURCES, "total"], rows)]
    never = cov.never_exercised()
    lines += ["", f"## Never exercised ({len(never)})", ""]
    groups = collections.defaultdict(list)
    for r in never:
        groups[cov.home[r] or r.split(".")[0]].append(r)
    lines += [f"- {group}: {', '.join(ids)}" for group, ids in groups.items()] or ["none: every id is named somewhere"]
    wrong = cov.wrong_category()
    lines += ["", f"## Cited in the wrong category ({sum(n for *_, n in wrong)})", ""]
    lines += _table(["rule", "cited for prompts of", "source", "times"], wrong) if wrong else ["none"]
    if cov.unknown:
        lines += ["", "## Ids not in this spec", "", ", ".join(f"{r} ({n})" for r, n in sorted(cov.unknown.items()))]
    if heatmap:
        lines += ["", "## Heat map", "", f"![rule citations by prompt category]({heatmap})"]
    return "\n".join(lines) + "\n"


_SOURCE_NOTES = (
    "sft = kept SFT examples citing the id in their reasoning or judge rules",
    "stage-1 judge = judge rules on the shard decisions' kept examples",
    "rl samples = ids in the RL sample tables' reasoning and judge explanation",
    "eval judge = judge rules on eval answers",
    "eval failures = failed eval answers: their judge rules, else the category's rules for the expected behaviour",
)


def plot_heatmap(cov: Coverage, path: Path) -> bool:
    """Categories x rule ids, cells = citations from every source; each category's own ids boxed.
    False (no file) when nothing is cited."""
    matrix = cov.matrix()
    if not any(any(row) for row in matrix):
        return False
    fig = Figure(figsize=(max(8.0, 0.13 * len(cov.rule_ids) + 2), 1.0 + 0.45 * len(cov.categories)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, aspect="auto", cmap="Blues", interpolation="nearest")
    for row, category in enumerate(cov.categories):
        own = [i for i, r in enumerate(cov.rule_ids) if cov.home[r] == category]
        if own:  # a citation outside the box is a content rule named for another category
            ax.add_patch(Rectangle((own[0] - 0.5, row - 0.5), len(own), 1, fill=False, edgecolor="C3", linewidth=1))
    ax.set_xticks(range(len(cov.rule_ids)), labels=cov.rule_ids, rotation=90, fontsize=5)
    ax.set_yticks(range(len(cov.categories)), labels=cov.categories, fontsize=8)
    ax.set_title("Rule citations by prompt category (all sources; red boxes: the category's own rules)")
    fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01, label="records", ticks=MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    return True


@dataclass(frozen=True)
class Written:
    markdown: Path
    heatmap: Path | None
    summary: str

    def __str__(self) -> str:
        return f"{self.summary}\n-> {self.markdown}" + (f", {self.heatmap}" if self.heatmap else "")


def write_coverage(run_dir: str | Path, spec: Spec) -> Written:
    """Count a run's citations and write ``coverage.md`` (+ ``coverage.png``) to ``RunLayout.coverage_dir``."""
    layout = RunLayout(run_dir)
    cov = read_run(run_dir, spec)
    out = layout.coverage_dir
    out.mkdir(parents=True, exist_ok=True)
    heatmap = out / HEATMAP_FILE if plot_heatmap(cov, out / HEATMAP_FILE) else None
    title = f"{run_dir} against {spec.name} {spec.version} ({spec.hash})"
    markdown = out / MARKDOWN_FILE
    markdown.write_text(render_markdown(cov, title, HEATMAP_FILE if heatmap else None), encoding="utf-8")
    return Written(markdown, heatmap, summary_line(cov))
