"""The evaluation report: Markdown tables with 95% bootstrap intervals and PNG plots.

    write_report([TargetMetrics("base", metrics), ...], out_dir)
    -> out_dir/report.md, out_dir/pareto.png, out_dir/not_unsafe_by_category.png

Plots are drawn on a bare :class:`~matplotlib.figure.Figure` with the Agg
canvas, so no GUI backend or pyplot global state is involved. A plot with no
data to show is left out and the report says why. The report names the scorer
of every column: the judge, or string match when the eval ran without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rayalign.config_tree import JudgeConfig
from rayalign.eval.behaviour import BehaviourRow, behaviour_section
from rayalign.eval.metrics import OUTCOMES, MetricResult
from rayalign.tracking import Tracker

REPORT_FILE = "report.md"
PARETO_FILE = "pareto.png"
CATEGORY_FILE = "not_unsafe_by_category.png"
DPI = 120
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
SAMPLE_ROWS = 8
"""Answers per target in the tracker's sample table."""

METRIC_NOTES: dict[str, str] = {
    "not_unsafe": "share of must-refuse / safe-complete prompts answered without disallowed content (judge; a refusal when unjudged)",
    "not_overrefuse": "share of prompts that should be answered that were not refused (string-match detector)",
    "style_adherence": "share of judged answers that follow the style guideline for their behaviour (judge)",
    "citation_accuracy": "share of answers whose reasoning cites a rule of the prompt's category with the expected behaviour",
}


def judge_label(judge: JudgeConfig, policy: str) -> str:
    """Who judged, for the report: backend, model, k.

    >>> judge_label(JudgeConfig(k=2), "builtin:tiny")
    'local builtin:tiny (vllm), k=2'
    """
    who = {"local": f"{judge.model or policy} ({judge.engine})", "openai": judge.api_model, "function": judge.function}
    return f"{judge.backend} {who[judge.backend]}, k={judge.k}" + (", cascade first" if judge.cascade else "")


def scorers(judge: str | None) -> dict[str, str]:
    """Which scorer produced each metric: ``judge`` (its label), or string match when None.

    >>> scorers(None)["not_unsafe"]
    'string match: a refusal counts as safe (safe-complete prompts need the judge: not scored)'
    """
    if judge is None:
        return {
            "not_unsafe": "string match: a refusal counts as safe (safe-complete prompts need the judge: not scored)",
            "not_overrefuse": "string match (refusal detector)",
            "style_adherence": "not scored (needs the judge)",
            "citation_accuracy": "rule ids in the reasoning (string match)",
        }
    return {
        "not_unsafe": f"judge: {judge} (an unscorable verdict falls back to string match)",
        "not_overrefuse": "string match (refusal detector)",
        "style_adherence": f"judge: {judge}",
        "citation_accuracy": "rule ids in the reasoning (string match)",
    }


def _short(scorer: str) -> str:
    """A column tag: judge, string match, rule ids or not scored."""
    return next(tag for tag in ("judge", "string match", "rule ids", "not scored") if scorer.startswith(tag))


@dataclass(frozen=True)
class TargetMetrics:
    """One row of the report: a target's metrics and how its run went."""

    name: str
    metrics: tuple[MetricResult, ...]
    model: str = ""
    answers: int = 0
    malformed: int = 0
    """Off-format completions (a model that answers without reasoning counts)."""
    unscorable: int = 0
    seconds: float = 0.0
    """Sampling seconds (sampler start, answers, scoring); judging is one shared pass."""
    cascade: int = 0
    """Verdicts the judge cascade decided (behaviour mismatch) without a judge call."""

    def get(self, name: str) -> MetricResult | None:
        """The metric called ``name`` (e.g. ``not_unsafe/privacy``), or None."""
        return next((m for m in self.metrics if m.name == name), None)


# ------------------------------------------------------------------ Markdown


def format_ci(m: MetricResult | None) -> str:
    """A table cell: value, interval and count.

    >>> format_ci(MetricResult("not_unsafe", 0.8333, 0.5, 1.0, 6))
    '0.833 [0.500, 1.000] (n=6)'
    >>> format_ci(None)
    '–'
    """
    return "–" if m is None else f"{m.value:.3f} [{m.low:.3f}, {m.high:.3f}] (n={m.n})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> list[str]:
    align = align or "l" * len(header)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _groups(results: Sequence[TargetMetrics], metric: str) -> list[str]:
    """The suffixes after ``metric/`` that any target has, sorted: categories, expected=..."""
    prefix = metric + "/"
    return sorted({m.name[len(prefix) :] for r in results for m in r.metrics if m.name.startswith(prefix)})


def metric_section(results: Sequence[TargetMetrics], metric: str) -> list[str]:
    """``## metric``: one row per target (value, 95% CI, n), then its breakdowns."""
    rows = []
    for r in results:
        m = r.get(metric)
        cells = ["–", "–", "0"] if m is None else [f"{m.value:.3f}", f"[{m.low:.3f}, {m.high:.3f}]", str(m.n)]
        rows.append([r.name, *cells])
    lines = [f"## {metric}", "", METRIC_NOTES.get(metric, ""), ""]
    lines += _table(["target", "value", "95% CI", "n"], rows, "lrlr")
    groups = _groups(results, metric)
    by_behavior = [g for g in groups if g.startswith("expected=")]
    by_category = [g for g in groups if not g.startswith("expected=")]
    for title, keys in (("per category", by_category), ("per expected behaviour", by_behavior)):
        if keys:
            header = [title.split()[-1], *(r.name for r in results)]
            body = [
                [key.removeprefix("expected="), *(format_ci(r.get(f"{metric}/{key}")) for r in results)] for key in keys
            ]
            lines += ["", f"### {metric} {title}", "", *_table(header, body)]
    return lines + [""]


def render_markdown(
    results: Sequence[TargetMetrics],
    plots: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
    judge: str | None = "the judge",
    behaviour: Sequence[BehaviourRow] = (),
) -> str:
    """The report text; ``plots`` are (caption, file name) pairs next to report.md; ``judge``
    names the judge that scored, None when the eval ran without one (string match only);
    ``behaviour`` adds the per-benchmark section after the summary."""
    lines = [
        "# rayalign evaluation",
        "",
        "Values with 95% percentile-bootstrap intervals and the number of answers counted.",
        "",
    ]
    by = scorers(judge)
    runs = [
        [r.name, r.model or "–", str(r.answers), str(r.malformed)]
        + ([str(r.unscorable), str(r.cascade)] if judge is not None else ["–", "–"])  # no judge, no verdicts
        + [f"{r.seconds:.1f}"]
        for r in results
    ]
    header = ["target", "model", "answers", "off-format", "unscorable", "cascade", "sampling s"]
    lines += _table(header, runs, "llrrrrr")
    lines += ["", "cascade: verdicts the behaviour check decided without a judge call (judge.cascade)."]
    lines += _scorer_lines(by, judge)
    lines += ["", "## Summary", ""]
    summary = [[r.name, *(format_ci(r.get(metric)) for metric in OUTCOMES)] for r in results]
    lines += _table(["target", *(f"{metric} ({_short(by[metric])})" for metric in OUTCOMES)], summary)
    lines += ["", *behaviour_section(behaviour)]
    lines += [f"![{caption}]({file})" for caption, file in plots]
    lines += [f"- {note}" for note in notes] + [""]
    for metric in OUTCOMES:
        if any(r.get(metric) for r in results):
            lines += metric_section(results, metric)
    return "\n".join(lines).rstrip() + "\n"


def _scorer_lines(by: Mapping[str, str], judge: str | None) -> list[str]:
    what = "No judge ran (eval.judge: false / --judge none): string match only." if judge is None else ""
    lines = ["", "## Scorers", "", *([what, ""] if what else [])]
    return lines + _table(["metric", "scored by"], [[metric, by[metric]] for metric in OUTCOMES])


# ------------------------------------------------------------------ plots


def _new_figure(size: tuple[float, float]) -> tuple[Figure, object]:
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)  # the Agg canvas renders the PNG
    return fig, fig.add_subplot()


def _err(m: MetricResult) -> list[list[float]]:
    """Asymmetric error bar lengths (below, above) for one point."""
    return [[m.value - m.low], [m.high - m.value]]


def plot_pareto(results: Sequence[TargetMetrics], path: Path) -> bool:
    """Safety (not_unsafe, y) against helpfulness (not_overrefuse, x), one point per target
    with its 95% intervals on both axes; False (no file) when no target has both."""
    points = [(r.name, r.get("not_overrefuse"), r.get("not_unsafe")) for r in results]
    points = [(name, x, y) for name, x, y in points if x is not None and y is not None]
    if not points:
        return False
    fig, ax = _new_figure((7, 5))
    placed: list[tuple[float, float]] = []
    for i, (name, x, y) in enumerate(points):
        color = f"C{i % 10}"
        ax.errorbar(
            x.value, y.value, xerr=_err(x), yerr=_err(y), fmt=MARKERS[i % len(MARKERS)], color=color,
            markersize=9, markerfacecolor="none", markeredgewidth=2,  # hollow: coinciding points stay visible
            elinewidth=1.5, capsize=4, label=f"{name} (n={y.n} harmful, {x.n} benign)",
        )  # fmt: skip
        # Stack the labels of points that (nearly) coincide instead of overprinting them.
        near = sum(abs(px - x.value) < 0.06 and abs(py - y.value) < 0.06 for px, py in placed)
        placed.append((x.value, y.value))
        dx, ha = (-8, "right") if x.value > 0.85 else (8, "left")
        ax.annotate(name, (x.value, y.value), xytext=(dx, 8 - 14 * near), textcoords="offset points",
                    ha=ha, fontsize=10, color=color, fontweight="bold")  # fmt: skip
    ax.set(
        xlim=(-0.03, 1.03), ylim=(-0.03, 1.03), title="Safety vs over-refusal (upper right is better; 95% bootstrap CI)"
    )
    ax.set_xlabel("not_overrefuse: benign prompts answered (higher = more helpful)")
    ax.set_ylabel("not_unsafe: harmful prompts handled safely (higher = safer)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return True


def plot_categories(results: Sequence[TargetMetrics], path: Path, metric: str = "not_unsafe") -> bool:
    """Grouped bars of ``metric`` per category, one colour per target, with 95% intervals;
    False (no file) when no target has a per-category value."""
    categories = [c for c in _groups(results, metric) if not c.startswith("expected=")]
    if not categories:
        return False
    fig, ax = _new_figure((10, 5))
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        found = [(j, r.get(f"{metric}/{c}")) for j, c in enumerate(categories)]
        found = [(j, m) for j, m in found if m is not None]
        if not found:
            continue
        xs = [j + (i - (len(results) - 1) / 2) * width for j, _ in found]
        ms = [m for _, m in found]
        errors = [[m.value - m.low for m in ms], [m.high - m.value for m in ms]]
        ax.bar(xs, [m.value for m in ms], width * 0.95, yerr=errors, color=f"C{i % 10}", label=r.name,
               capsize=3, error_kw={"elinewidth": 1.2, "ecolor": "black"})  # fmt: skip
        for x, m in zip(xs, ms):  # a 0 bar is invisible: print every value, beside the error bar
            ax.text(x + width * 0.27, 0.01, f"{m.value:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(categories)), labels=categories, rotation=30, ha="right")
    ax.set(ylim=(0, 1.03), xlim=(-0.6, len(categories) - 0.4))
    ax.set_ylabel(f"{metric} (95% bootstrap CI)")
    ax.set_xlabel("spec category")
    ax.set_title(f"{metric} per category")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="target", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return True


# ------------------------------------------------------------------ the report


def write_report(
    results: Sequence[TargetMetrics],
    out_dir: str | Path,
    *,
    tracker: Tracker | None = None,
    judge: str | None = "the judge",
    behaviour: Sequence[BehaviourRow] = (),
) -> Path:
    """Write ``report.md`` and its PNG plots under ``out_dir``; log them to ``tracker`` if given.
    ``judge`` names who judged (None: string match only), for the report's scorers.

    The tracker gets every metric as ``eval/<target>/<metric>`` in its run
    summary and, with W&B on, the plots as images.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots, notes = [], []
    if plot_pareto(results, out / PARETO_FILE):
        plots.append(("Safety vs over-refusal", PARETO_FILE))
    else:
        notes.append("No safety / over-refusal plot: no target has both not_unsafe and not_overrefuse.")
    if plot_categories(results, out / CATEGORY_FILE):
        plots.append(("not_unsafe per category", CATEGORY_FILE))
    else:
        notes.append("No per-category plot: no not_unsafe value has a category.")
    path = out / REPORT_FILE
    path.write_text(render_markdown(results, plots, notes, judge, behaviour), encoding="utf-8")
    if tracker is not None:
        _log(tracker, results, [out / file for _, file in plots])
    return path


def _log(tracker: Tracker, results: Sequence[TargetMetrics], images: Sequence[Path]) -> None:
    tracker.summary({f"eval/{r.name}/{m.name}": m.value for r in results for m in r.metrics})
    if tracker.wandb_run is not None:
        import wandb  # only with W&B on: the import costs ~1 s

        tracker.wandb_run.log({f"eval/{p.stem}": wandb.Image(str(p)) for p in images}, step=0)


def log_samples(tracker: Tracker, target: str, answers: Sequence) -> None:
    """The first SAMPLE_ROWS answers (rayalign.eval.answers.EvalAnswer) as the tracker's ``eval/samples/<target>`` table."""
    columns = ["prompt_id", "category", "expected", "answer", "refusal", "score", "compliant"]
    rows = [
        [a.prompt_id, a.category, a.expected, a.answer, a.refusal, a.verdict.score, a.verdict.compliant]
        for a in answers[:SAMPLE_ROWS]
    ]
    tracker.table(f"eval/samples/{target}", columns, rows, step=0)
