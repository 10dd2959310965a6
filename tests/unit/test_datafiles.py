"""JSONL data files: typed records survive a round trip, errors name file and line."""

from __future__ import annotations

import pytest

from rayalign.datafiles import DataFileError, jsonl_rows, read_records, write_atomic, write_records
from rayalign.types import Message, Prompt, SFTExample

# Characters str.splitlines() treats as line breaks; json.dumps(ensure_ascii=False) writes the first three raw.
AWKWARD = "line\u2028separator\u2029paragraph\u0085next-line\rcarriage\r\nwindows"


def _example(i: int, text: str = "plain") -> SFTExample:
    prompt = Prompt(f"p{i}", (Message("user", f"question {i} {text}"),), category="privacy", expected="refuse")
    return SFTExample(prompt, reasoning=f"think {text}", answer=f"answer {text}", score=9.0, rules=("privacy.R1",))


def test_line_and_paragraph_separators_round_trip_in_one_record(tmp_path):
    path = tmp_path / "sft.jsonl"
    records = [_example(0), _example(1, AWKWARD), _example(2)]
    write_records(path, records)
    raw = path.read_bytes().decode("utf-8")
    assert "\u2028" in raw and "\u2029" in raw and "\u0085" in raw  # written raw, not escaped
    assert raw.count("\n") == 3  # one line per record
    assert read_records(path, SFTExample) == records


def test_a_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2,\n', encoding="utf-8")
    with pytest.raises(DataFileError) as e:
        list(jsonl_rows(path))
    assert (e.value.file, e.value.line) == (str(path), 3)
    assert str(e.value).startswith(f"{path}:3: invalid JSON")


def test_a_line_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataFileError, match="expected a JSON object") as e:
        list(jsonl_rows(path))
    assert (e.value.file, e.value.line) == (str(path), 2)


def test_a_row_that_is_not_the_record_type_names_its_line(tmp_path):
    path = tmp_path / "wrong.jsonl"
    path.write_text('{"reasoning": "r"}\n', encoding="utf-8")
    with pytest.raises(DataFileError, match="not a SFTExample record") as e:
        read_records(path, SFTExample)
    assert e.value.line == 1


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('\n{"a": 1}\n   \n\n{"a": 2}\n\n', encoding="utf-8")
    assert list(jsonl_rows(path)) == [(2, {"a": 1}), (5, {"a": 2})]


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out" / "data.jsonl"
    write_atomic(path, ["old"])
    write_atomic(path, ['{"a": 1}', '{"a": 2}'])
    assert path.read_text(encoding="utf-8") == '{"a": 1}\n{"a": 2}\n'
    assert [p.name for p in path.parent.iterdir()] == ["data.jsonl"]
