"""The worked examples in docstrings (``>>>``) run, one test per module under rayalign/.

Every module is imported, so this also checks that each one imports without
Ray, vLLM or DeepSpeed starting anything.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = [_module_name(p) for p in sorted((ROOT / "rayalign").rglob("*.py"))]


def _examples(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name repo paths such as specs/
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    for test in _examples(name):
        runner.run(test, out=report.append)
    failed, tried = runner.summarize(verbose=False)
    assert not failed, f"{failed} of {tried} examples in {name} failed:\n{''.join(report)}"


def test_the_examples_are_found():
    """The finder sees the examples (so a broken finder cannot pass every module)."""
    count = sum(len(t.examples) for name in MODULES for t in _examples(name))
    assert count >= 100, f"only {count} docstring examples found under rayalign/"
