"""Build the packaged safety training mix, ``rayalign/data/mix/{train,eval}.jsonl``.

Data flow::

    jbb harmful + jbb benign (CSV, MIT) ---------------------------------+
    benign, intent_twins, imperative_twins, safe_complete       |        |
        .jsonl (rayalign) --------------------------------------+        |
        (interleaved per category)                              |        |
    advbench (YAML, MIT) + donotanswer (JSONL, Apache-2.0)      |        |
        -> rows with a spec category and expected "refuse",     |        |
           interleaved per category ----------------------------+        |
                                                                |        |
        dedupe on normalized text (JBB rows first, so they win) |        |
        -> hash split per (category, expected): 80% train ------+-> train|
                                                  20% eval -----+-> eval <- every JBB row
        check: no train prompt equals (normalized) an eval or JBB prompt

Every row is ``{id, prompt, category, expected, source, kind}``; ids are the
loaders' provenance ids (``advbench/17``, ``jbb_harmful/3``) or the
hand-written files' own (``mix-benign-privacy-4``). JBB goes to eval only
because it is the public benchmark the recipe reports. The output depends
only on the inputs and ``SEED``, so a rebuild reproduces the shipped files
byte for byte::

    python -m rayalign.stage1.mix --evaldata ../shared/evaldata
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rayalign.datafiles import jsonl_rows, write_atomic
from rayalign.eval.loaders import BenchmarkError, advbench, donotanswer, jbb_benign, jbb_harmful
from rayalign.stage1.prompts import normalize
from rayalign.types import BEHAVIORS, Prompt

MIX_DIR = Path(__file__).resolve().parent.parent / "data" / "mix"
"""The package folder holding the hand-written sources and the built mix."""
HANDWRITTEN = ("benign.jsonl", "intent_twins.jsonl", "imperative_twins.jsonl", "safe_complete.jsonl")
"""Prompt files written by the rayalign project (Apache-2.0)."""
KINDS = (
    "homonym", "figurative", "safe_target", "fiction", "history", "education", "definition",
    "public_figure", "policy_question", "intent_twin", "safe_completion",
)  # fmt: skip
"""Why a hand-written prompt is in the mix: how a harmless request can look dangerous, or a safe completion.
``intent_twin``: a harmless request on the topic of a harmful training prompt (explain, prevent, depict)."""
JBB_SOURCES = ("jbb_harmful", "jbb_benign")
EVAL_FRACTION = 0.2
SEED = 0


@dataclass(frozen=True)
class MixRow:
    """One prompt of the mix, as written to train.jsonl and eval.jsonl."""

    id: str
    prompt: str
    category: str
    expected: str
    source: str
    """Dataset name (advbench, donotanswer, jbb_harmful, jbb_benign) or rayalign."""
    kind: str
    """harmful, benign_topic (a JBB benign twin) or one of ``KINDS``."""


# ------------------------------------------------------------------ sources


def _from_prompt(prompt: Prompt, kind: str) -> MixRow:
    return MixRow(prompt.id, prompt.messages[-1].content, prompt.category, prompt.expected, prompt.source, kind)


def jbb_rows(evaldata: Path) -> list[MixRow]:
    """Every JBB prompt: harmful ones (refuse) and their benign, topic-matched twins (comply)."""
    harmful = jbb_harmful(evaldata / "jbb" / "harmful-behaviors.csv")
    benign = jbb_benign(evaldata / "jbb" / "benign-behaviors.csv")
    return [_from_prompt(p, "harmful") for p in harmful] + [_from_prompt(p, "benign_topic") for p in benign]


def harmful_rows(evaldata: Path) -> list[MixRow]:
    """AdvBench and Do-Not-Answer prompts whose loader gives a spec category and ``refuse``, taken in turn
    per category: AdvBench's are tasks ("Write ..."), Do-Not-Answer's mostly questions, so a run limited by
    ``data.max_prompts`` refuses both forms, as its benign prompts answer both."""
    sources = (advbench(evaldata / "advbench" / "adv_bench.prompt.yaml"), donotanswer(evaldata / "donotanswer"))
    return interleave(
        [
            [_from_prompt(p, "harmful") for p in ps if p.category is not None and p.expected == "refuse"]
            for ps in sources
        ]
    )


def handwritten_rows(path: Path) -> list[MixRow]:
    """A hand-written file: JSONL rows with id, prompt, category, expected and kind."""
    rows = []
    for line, record in jsonl_rows(path):
        for field in ("id", "prompt", "category", "expected", "kind"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise BenchmarkError("missing or empty", file=str(path), line=line, field=field)
        for field, allowed in (("expected", BEHAVIORS), ("kind", KINDS)):
            if record[field] not in allowed:
                raise BenchmarkError(f"must be one of {', '.join(allowed)}", file=str(path), line=line, field=field)
        fields = (record["id"], record["prompt"], record["category"], record["expected"])
        rows.append(MixRow(*(f.strip() for f in fields), source="rayalign", kind=record["kind"]))
    return rows


# ------------------------------------------------------------------ dedupe, split


def interleave(files: Sequence[Sequence[MixRow]]) -> list[MixRow]:
    """Rows of several files, taken in turn per category: the i-th row of a category in each file, then
    the (i+1)-th. Training takes prompts in this order (``data.max_prompts``), so a small run sees every
    file's kinds.

    >>> a = [MixRow(f"a{i}", "p", c, "comply", "rayalign", "homonym") for i, c in enumerate("xxy")]
    >>> b = [MixRow(f"b{i}", "p", c, "comply", "rayalign", "intent_twin") for i, c in enumerate("xy")]
    >>> [r.id for r in interleave([a, b]) if r.category == "x"]
    ['a0', 'b0', 'a1']
    """
    ranked = []
    for index, rows in enumerate(files):
        seen: Counter[str] = Counter()
        for row in rows:
            ranked.append((seen[row.category], index, len(ranked), row))
            seen[row.category] += 1
    return [row for *_, row in sorted(ranked, key=lambda t: t[:3])]


def dedupe(rows: Iterable[MixRow]) -> list[MixRow]:
    """Keep the first row of each normalized prompt text (see :func:`rayalign.stage1.prompts.normalize`)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = normalize(row.prompt)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def _rank(row: MixRow) -> str:
    return hashlib.sha256(f"{SEED}:{row.id}".encode()).hexdigest()


def split(rows: Sequence[MixRow], fraction: float = EVAL_FRACTION) -> tuple[list[MixRow], list[MixRow]]:
    """(train, eval): per (category, expected), the rows with the lowest id hashes go to eval.

    Each group holds out ``round(n * fraction)`` rows (half up), keeping at
    least one in train. Which rows are held out depends on their ids, ``SEED``
    and the group's size: rows added to a group can move earlier rows between
    the splits (evaluate a model on the split it was trained against); both
    lists keep input order.
    """
    groups: dict[tuple[str, str], list[MixRow]] = {}
    for row in rows:
        groups.setdefault((row.category, row.expected), []).append(row)
    held: set[str] = set()
    for group in groups.values():
        n_eval = min(int(len(group) * fraction + 0.5), len(group) - 1)
        held.update(row.id for row in sorted(group, key=_rank)[:n_eval])
    return [r for r in rows if r.id not in held], [r for r in rows if r.id in held]


def check_disjoint(train: Sequence[MixRow], held_out: Sequence[MixRow]) -> None:
    """Raise if a train row shares an id or a normalized prompt with an eval row (JBB is all in eval)."""
    eval_ids, eval_texts = {r.id for r in held_out}, {normalize(r.prompt) for r in held_out}
    for row in train:
        if row.id in eval_ids or normalize(row.prompt) in eval_texts:
            raise BenchmarkError(f"train row {row.id!r} is also in eval", field="id")


# ------------------------------------------------------------------ build


def build_mix(evaldata_dir: str | Path, out_dir: str | Path = MIX_DIR, *, handwritten_dir: Path = MIX_DIR):
    """Read every source, dedupe, split, write ``train.jsonl`` and ``eval.jsonl``; return (train, eval)."""
    evaldata = Path(evaldata_dir)
    jbb = jbb_rows(evaldata)
    written = interleave([handwritten_rows(handwritten_dir / name) for name in HANDWRITTEN])
    rows = dedupe([*jbb, *written, *harmful_rows(evaldata)])
    rest = [r for r in rows if r.source not in JBB_SOURCES]
    train, held_out = split(rest)
    held_out = [r for r in rows if r.source in JBB_SOURCES] + held_out
    check_disjoint(train, held_out)
    for name, part in (("train.jsonl", train), ("eval.jsonl", held_out)):
        write_atomic(Path(out_dir) / name, (json.dumps(asdict(r), ensure_ascii=False) for r in part))
    return train, held_out


def counts_table(train: Sequence[MixRow], held_out: Sequence[MixRow]) -> str:
    """A Markdown table of rows per category x expected behaviour, train / eval (as in the README)."""
    n_train = Counter((r.category, r.expected) for r in train)
    n_eval = Counter((r.category, r.expected) for r in held_out)
    categories = sorted({c for c, _ in n_train | n_eval})
    lines = ["| category | " + " | ".join(BEHAVIORS) + " |", "|---|" + "---:|" * len(BEHAVIORS)]
    for category in categories:
        cells = [f"{n_train[category, b]} / {n_eval[category, b]}" for b in BEHAVIORS]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    totals = [f"{sum(n_train[c, b] for c in categories)} / {sum(n_eval[c, b] for c in categories)}" for b in BEHAVIORS]
    lines.append("| **all** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rayalign.stage1.mix --evaldata DIR [--out DIR]``: rebuild and print the counts."""
    p = argparse.ArgumentParser(prog="python -m rayalign.stage1.mix", description=__doc__.splitlines()[0])
    p.add_argument("--evaldata", required=True, help="folder with jbb/, advbench/ and donotanswer/")
    p.add_argument("--out", default=str(MIX_DIR), help="where to write train.jsonl and eval.jsonl")
    args = p.parse_args(argv)
    train, held_out = build_mix(args.evaldata, args.out)
    print(f"train {len(train)}, eval {len(held_out)} (train / eval per cell)\n")
    print(counts_table(train, held_out))


if __name__ == "__main__":
    main()
