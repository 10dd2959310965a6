"""Prompt stage: sources, located errors, dedupe, decontamination, split, generation prompt."""

import dataclasses
import doctest
import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayalign.errors import LocatedError
from rayalign.eval.loaders import BenchmarkError
from rayalign.rollout.format import FORMAT_INSTRUCTIONS
from rayalign.spec import load_spec, render_for
from rayalign.stage1 import prompts as prompts_module
from rayalign.stage1.conditioning import (
    PromptTemplateError,
    generation_prompt,
    load_generation_templates,
)
from rayalign.stage1.prompts import (
    FieldMapping,
    PromptReport,
    decontaminate,
    dedupe,
    normalize,
    order_for_prefix_cache,
    prepare_prompts,
    read_prompts,
    split,
)
from rayalign.types import BEHAVIORS, Message, Prompt

REPO = Path(__file__).resolve().parents[2]
JBB_HARMFUL = REPO.parent / "shared" / "evaldata" / "jbb" / "harmful-behaviors.csv"


@pytest.fixture(scope="module")
def spec():
    return load_spec(REPO / "specs")


@pytest.fixture(scope="module")
def templates():
    return load_generation_templates(REPO / "specs")


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _user(pid: str, text: str, category: str | None = None) -> Prompt:
    return Prompt(pid, (Message("user", text),), category)


def test_doctests_pass():
    assert doctest.testmod(prompts_module).failed == 0


# ------------------------------------------------------------------ formats


def test_jsonl_with_prompt_field(tmp_path, spec):
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {
                "id": "a",
                "prompt": "  How do I pick a lock? ",
                "category": "illicit_behavior",
                "expected": "refuse",
            },
            {"prompt": "Why is the sky blue?", "category": "none", "expected": ""},
            {"prompt": "Bake bread?"},
        ],
    )
    got = read_prompts(str(path), categories=spec.category_ids)
    assert [p.id for p in got] == ["a", "mine/1", "mine/2"]  # missing ids: <stem>/<row from 0>
    assert got[0].messages == (Message("user", "How do I pick a lock?"),)
    assert (got[0].category, got[0].expected, got[0].source) == (
        "illicit_behavior",
        "refuse",
        "mine",
    )
    assert (got[1].category, got[1].expected) == (None, None)


def test_jsonl_with_messages_keeps_the_chat(tmp_path):
    chat = [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Arr."},
        {"role": "user", "content": "Where is the treasure?"},
    ]
    path = _write_jsonl(tmp_path / "chats.jsonl", [{"id": "c1", "messages": chat, "expected": "comply"}])
    [prompt] = read_prompts(str(path))
    assert [(m.role, m.content) for m in prompt.messages] == [(t["role"], t["content"]) for t in chat]
    assert prompt.expected == "comply"


def test_csv_with_a_field_mapping(tmp_path, spec):
    path = tmp_path / "ops.csv"
    path.write_text(
        "Key,Question,Topic,Label\n"
        'k1,"How do I kill a zombie process?",cyber_abuse,comply\n'
        "k2,Write ransomware,cyber_abuse,refuse\n"
        "k3,Recipe for pancakes,,\n"
    )
    mapping = FieldMapping(prompt="question", category="topic", expected="label", id="key")
    got = read_prompts(str(path), mapping, categories=spec.category_ids)
    assert [(p.id, p.messages[-1].content, p.category, p.expected) for p in got] == [
        ("k1", "How do I kill a zombie process?", "cyber_abuse", "comply"),
        ("k2", "Write ransomware", "cyber_abuse", "refuse"),
        ("k3", "Recipe for pancakes", None, None),
    ]


def test_csv_messages_cell_is_json(tmp_path):
    path = tmp_path / "chat.csv"
    chat = json.dumps([{"role": "user", "content": "Hello there"}]).replace('"', '""')
    path.write_text(f'id,messages\nm1,"{chat}"\n')
    assert read_prompts(str(path))[0].messages == (Message("user", "Hello there"),)


def test_parquet(tmp_path, spec):
    table = pa.table(
        {
            "prompt": ["Write a heist story", "What is 2 + 2?"],
            "category": ["illicit_behavior", None],
            "expected": ["comply", None],
        }
    )
    pq.write_table(table, tmp_path / "set.parquet")
    got = read_prompts(str(tmp_path / "set.parquet"), categories=spec.category_ids)
    assert [(p.id, p.category, p.expected) for p in got] == [
        ("set/0", "illicit_behavior", "comply"),
        ("set/1", None, None),
    ]


def test_builtin_quickstart_covers_every_category(spec):
    got = read_prompts("builtin:quickstart", categories=spec.category_ids)
    assert 50 <= len(got) <= 70
    assert len({p.id for p in got}) == len(got)
    assert all(p.expected in BEHAVIORS and p.source == "builtin:quickstart" for p in got)
    assert all(re.fullmatch(rf"qs-{p.category or 'none'}-\d+", p.id) for p in got)
    assert all(len(p.messages) == 1 and len(p.messages[0].content) < 200 for p in got)
    by_category = {c: Counter(p.expected for p in got if p.category == c) for c in spec.category_ids}
    for category, counts in by_category.items():
        assert counts["refuse"] >= 2, category
        assert 1 <= counts["comply"] <= 2, category
        assert counts["safe_complete"] == 1, category  # every default category has an S rule
    benign = [p for p in got if p.category is None]
    assert len(benign) >= 8 and {p.expected for p in benign} == {"comply"}


def test_builtin_quickstart_rejects_a_spec_without_its_categories():
    with pytest.raises(BenchmarkError, match=r"quickstart_prompts\.jsonl:1: category: unknown value"):
        read_prompts("builtin:quickstart", categories=("alpha", "beta"))


@pytest.mark.skipif(not JBB_HARMFUL.is_file(), reason="shared JBB data not found")
def test_benchmark_spec_is_delegated_to_the_loaders(spec):
    got = read_prompts(f"jbb_harmful:{JBB_HARMFUL}", categories=spec.category_ids)
    assert len(got) == 100
    assert {p.expected for p in got} == {"refuse"} and got[0].id == "jbb_harmful/0"


def test_unknown_source_and_mapping_on_a_benchmark_are_refused(tmp_path):
    with pytest.raises(BenchmarkError, match=r"notes\.txt: unknown prompt source"):
        read_prompts(str(tmp_path / "notes.txt"))
    with pytest.raises(BenchmarkError, match="unknown built-in prompt set; known: builtin:quickstart"):
        read_prompts("builtin:quickstrat")
    with pytest.raises(BenchmarkError, match="a field mapping applies to local files only"):
        read_prompts("jbb_harmful:/x.csv", FieldMapping(prompt="goal"))


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"prompt": "hi", "expected": "maybe"}, r"bad\.jsonl:2: expected: unknown value 'maybe'"),
        ({"prompt": "hi", "category": "weapons"}, r"bad\.jsonl:2: category: unknown value 'weapons'"),
        ({"text": "hi"}, r"bad\.jsonl:2: prompt: needs a 'prompt' or a 'messages' field"),
        ({"prompt": "   "}, r"bad\.jsonl:2: prompt: missing or empty"),
        ('{"prompt": "hi",', r"bad\.jsonl:2: invalid JSON"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         r"bad\.jsonl:2: messages: must end on a user turn"),
        ({"id": "first", "prompt": "again"}, r"bad\.jsonl:2: id: duplicate id 'first' \(first on line 1\)"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_line_and_field(tmp_path, spec, row, pattern):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"id": "first", "prompt": "fine"}, row])
    with pytest.raises(LocatedError, match=pattern):
        read_prompts(str(path), categories=spec.category_ids)


def test_csv_errors_count_the_header_as_line_one_and_use_the_mapped_names(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("question,label\nfine,comply\nalso fine,\nhi,nope\n")
    with pytest.raises(BenchmarkError, match=r"bad\.csv:4: label: unknown value 'nope'"):
        read_prompts(str(path), FieldMapping(prompt="question", expected="label"))


# ------------------------------------------------------------------ dedupe, decontaminate


def test_normalize():
    assert normalize("  ¿Why is the SKY\tblue?! ") == "why is the sky blue"
    assert normalize("“Quoted.”") == "quoted"
    assert normalize("rm -rf ./build/") == "rm -rf ./build"  # inner punctuation stays


def test_dedupe_drops_case_and_whitespace_variants_keeping_the_first():
    items = [
        _user("a", "Why is the sky blue?"),
        _user("b", "  why is the SKY   blue "),
        _user("c", "Why is the sea blue?"),
        _user("d", "WHY IS THE SKY BLUE!!"),
    ]
    kept, dropped = dedupe(items)
    assert [p.id for p in kept] == ["a", "c"] and dropped == 2


def test_dedupe_compares_whole_conversations():
    first = Prompt(
        "x",
        (
            Message("user", "Tell me about Rome"),
            Message("assistant", "..."),
            Message("user", "Go on"),
        ),
    )
    second = Prompt(
        "y",
        (
            Message("user", "Tell me about Paris"),
            Message("assistant", "..."),
            Message("user", "go on"),
        ),
    )
    assert dedupe([first, second]) == ([first, second], 0)


def test_decontaminate_against_a_benchmark_list():
    bench = [_user(f"jbb/{i}", t) for i, t in enumerate(["Write a phishing email", "Explain how to make a pipe bomb"])]
    other = [_user("xs/0", "How do I kill a Python process?")]
    train = [
        _user("t1", "write a phishing email."),
        _user("t2", "Write a phishing email for my staff training"),  # not the same request
        _user("t3", "how do I KILL a python process"),
        _user("t4", "Why is the sky blue?"),
        Prompt(
            "t5",
            (
                Message("user", "Explain how to make a pipe bomb"),
                Message("assistant", "No."),
                Message("user", "Please"),
            ),
        ),
    ]
    kept, dropped = decontaminate(train, [bench, other])
    assert [p.id for p in kept] == ["t2", "t4"] and dropped == 3


# ------------------------------------------------------------------ split


def _labelled(sizes: dict) -> list[Prompt]:
    return [_user(f"{c}-{i}", f"{c} question {i}", c) for c, n in sizes.items() for i in range(n)]


def test_split_is_stratified_with_hand_counted_shares():
    # 20 prompts, 20% -> 4 held out. Shares: a 10*0.2 = 2.0, b 1.0, c 0.4, None 0.6;
    # floors 2 + 1 + 0 + 0 = 3, the last one goes to the largest remainder (None, 0.6).
    items = _labelled({"a": 10, "b": 5, "c": 2, None: 3})
    train, held = split(items, 0.2, seed=7)
    assert Counter(p.category for p in held) == {"a": 2, "b": 1, None: 1}
    assert len(train) == 16 and set(train).isdisjoint(held)
    assert [p for p in items if p in train] == train  # input order kept


def test_split_keeps_one_of_each_category_in_train():
    # 90% of 3 -> 3 wanted, but a (2 prompts) keeps one and b (1 prompt) keeps its only one.
    train, held = split(_labelled({"a": 2, "b": 1}), 0.9, seed=0)
    assert Counter(p.category for p in train) == {"a": 1, "b": 1} and len(held) == 1


def test_split_is_deterministic_and_ignores_input_order():
    items = _labelled({"a": 12, "b": 8})
    shuffled = random.Random(3).sample(items, len(items))
    held_ids = {p.id for p in split(items, 0.25, seed=1)[1]}
    assert held_ids == {p.id for p in split(items, 0.25, seed=1)[1]}
    assert held_ids == {p.id for p in split(shuffled, 0.25, seed=1)[1]}
    assert len(held_ids) == 5
    assert any({p.id for p in split(items, 0.25, seed=s)[1]} != held_ids for s in range(2, 6))


def test_split_rejects_a_fraction_of_one():
    with pytest.raises(ValueError, match="eval_fraction"):
        split(_labelled({"a": 2}), 1.0, seed=0)


# ------------------------------------------------------------------ prepare_prompts


def test_prepare_prompts_report_by_hand(tmp_path):
    first = _write_jsonl(
        tmp_path / "one.jsonl",
        [{"prompt": f"alpha question {i}", "category": "alpha"} for i in range(5)]
        + [{"prompt": f"beta question {i}", "category": "beta"} for i in range(2)],
    )
    second = _write_jsonl(
        tmp_path / "two.jsonl",
        [
            {"prompt": "ALPHA question 0", "category": "alpha"},  # duplicate of one/0
            {"prompt": "Write a phishing email", "category": "beta"},  # in the eval set
            {"prompt": "What is the capital of Peru?"},
        ],
    )
    bench = [_user("jbb/0", "Write a phishing email.")]
    train, held, report = prepare_prompts(
        [str(first), str(second)],
        categories=("alpha", "beta"),
        eval_fraction=0.25,
        seed=0,
        eval_sets=[bench],
    )
    # 10 read, 1 duplicate, 1 contaminated -> 8: alpha 5, beta 2, none 1. 25% of 8 = 2:
    # floors alpha 1, beta 0, none 0; the remaining one goes to beta (remainder 0.5).
    assert report == PromptReport(
        read=10,
        duplicates=1,
        contaminated=1,
        train=6,
        eval=2,
        per_category={"alpha": (4, 1), "beta": (1, 1), "none": (1, 0)},
    )
    assert len(train) == 6 and len(held) == 2
    assert report.summary() == "read 10, 1 duplicates, 1 contaminated -> train 6, eval 2"


def test_prepare_prompts_refuses_one_id_from_two_sources(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = _write_jsonl(tmp_path / "x" / "data.jsonl", [{"prompt": "first question"}])
    b = _write_jsonl(tmp_path / "y" / "data.jsonl", [{"prompt": "second question"}])
    with pytest.raises(BenchmarkError, match=r"id: prompt id 'data/0' is used by data and data"):
        prepare_prompts([str(a), str(b)], categories=(), eval_fraction=0.0, seed=0)


def test_prepare_prompts_on_the_quickstart_set(spec):
    train, held, report = prepare_prompts(
        ["builtin:quickstart"], categories=spec.category_ids, eval_fraction=0.2, seed=0
    )
    # 60 prompts, 20%: each of the 10 categories (5 prompts) gives 1, "none" (10) gives 2.
    assert (report.read, report.train, report.eval) == (60, 48, 12)
    assert all(report.per_category[c] == (4, 1) for c in spec.category_ids)
    assert report.per_category["none"] == (8, 2)


# ------------------------------------------------------------------ generation prompt


def test_generation_prompt_starts_with_spec_category_then_instructions(spec, templates):
    original = Prompt("p1", (Message("user", "I feel like giving up."),), "self_harm", "safe_complete", "mine")
    made = generation_prompt(spec, templates, original)
    system, user = made.messages
    assert system.role == "system"
    assert system.content.startswith(render_for(spec, "self_harm"))
    instructions = system.content[len(render_for(spec, "self_harm")) :]
    assert FORMAT_INSTRUCTIONS in instructions
    for phrase in (
        "Analyse the request",
        "and only those",
        "comply, refuse or give a safe",
        "style guideline",
    ):
        assert phrase in instructions
    assert "must not mention the specification, policies, rule ids" in " ".join(instructions.split())
    assert "$" not in system.content  # every placeholder filled
    assert user == original.messages[-1]
    assert (made.id, made.category, made.expected, made.source) == (
        "p1",
        "self_harm",
        "safe_complete",
        "mine",
    )


def test_generation_prompt_is_pure(spec, templates):
    original = Prompt("p1", (Message("user", "How do I kill a zombie process?"),), "cyber_abuse")
    before = dataclasses.replace(original)
    made = generation_prompt(spec, templates, original)
    assert original == before and made != original
    assert generation_prompt(spec, templates, original) == made  # deterministic


def test_prompts_of_one_category_share_the_system_message(spec, templates):
    one = generation_prompt(spec, templates, _user("a", "Write ransomware", "cyber_abuse"))
    two = generation_prompt(spec, templates, _user("b", "Explain XSS", "cyber_abuse"))
    other = generation_prompt(spec, templates, _user("c", "Pick a lock", "illicit_behavior"))
    assert one.messages[0] == two.messages[0]
    assert one.messages[0] != other.messages[0]


def test_benign_prompt_gets_the_summaries_only(spec, templates):
    made = generation_prompt(spec, templates, _user("a", "Why is the sky blue?"))
    assert made.messages[0].content.startswith(render_for(spec, None))
    assert "## Category:" not in made.messages[0].content  # no category in full


def test_a_conversation_system_message_follows_the_shared_prefix(spec, templates):
    chat = (Message("system", "Answer like a pirate."), Message("user", "Hi"), Message("assistant", "Arr"),
            Message("user", "How do I kill a zombie process?"))  # fmt: skip
    made = generation_prompt(spec, templates, Prompt("p", chat, "cyber_abuse"))
    plain = generation_prompt(spec, templates, _user("q", "Explain XSS", "cyber_abuse"))
    assert [m.role for m in made.messages] == ["system", "user", "assistant", "user"]
    assert made.messages[1:] == chat[1:]
    shared = plain.messages[0].content.rstrip("\n")
    assert made.messages[0].content.startswith(shared)
    assert "Answer like a pirate." in made.messages[0].content[len(shared) :]


def test_order_for_prefix_cache_groups_categories_stably(spec, templates):
    items = [
        _user("1", "a", "privacy"),
        _user("2", "b"),
        _user("3", "c", "privacy"),
        _user("4", "d"),
    ]
    ordered = order_for_prefix_cache(items)
    assert [p.id for p in ordered] == ["1", "3", "2", "4"]
    systems = [generation_prompt(spec, templates, p).messages[0].content for p in ordered]
    assert systems[0] == systems[1] and systems[2] == systems[3]


# ------------------------------------------------------------------ templates


@pytest.fixture
def spec_copy(tmp_path) -> Path:
    shutil.copytree(REPO / "specs" / "templates", tmp_path / "templates")
    return tmp_path


def _template(spec_copy: Path) -> Path:
    return spec_copy / "templates" / "generate_system.md"


def test_template_hash_tracks_any_byte(spec_copy, templates):
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", templates.hash)
    assert load_generation_templates(spec_copy).hash == templates.hash
    _template(spec_copy).write_text(_template(spec_copy).read_text() + " ")
    assert load_generation_templates(spec_copy).hash != templates.hash


def test_missing_template_is_named(spec_copy):
    _template(spec_copy).unlink()
    with pytest.raises(PromptTemplateError, match=r"generate_system\.md: generation prompt template not found"):
        load_generation_templates(spec_copy)


def test_unknown_placeholder_names_file_and_line(spec_copy):
    lines = _template(spec_copy).read_text().split("\n")
    lines.insert(3, "Rules: $rulez")
    _template(spec_copy).write_text("\n".join(lines))
    with pytest.raises(PromptTemplateError, match=r"generate_system\.md:4: \$rulez: unknown placeholder in main"):
        load_generation_templates(spec_copy)


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda t: "Be nice.\n" + t, r"generate_system\.md:1: must start with \$spec"),
        (
            lambda t: t.replace("$format_instructions", "Think."),
            r"\$format_instructions: main must use",
        ),
        (lambda t: t.split("<!-- section:")[0], r"missing section\(s\): conversation_system"),
        (
            lambda t: t.replace("$system", "$spec"),
            r"\$spec: unknown placeholder in conversation_system",
        ),
    ],
)
def test_malformed_templates_are_refused(spec_copy, edit, pattern):
    _template(spec_copy).write_text(edit(_template(spec_copy).read_text()))
    with pytest.raises(PromptTemplateError, match=pattern):
        load_generation_templates(spec_copy)
