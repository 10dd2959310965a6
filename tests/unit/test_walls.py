"""The walls between layers, read from the import graph of rayalign/ with ``ast``.

Pure modules must stay importable without Ray or vLLM, vLLM and Ray Serve are
each touched in one place, nothing imports the CLI or another stage's driver,
and module-level imports form no cycle. Every import is read, including those
inside functions, so a lazy import cannot slip through a wall.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rayalign"

PURE = [
    "rayalign.spec",
    "rayalign.judge.rubric",
    "rayalign.judge.cascade",
    "rayalign.stage1.filter",
    "rayalign.rl.reward",
    "rayalign.eval.answers",
    "rayalign.rl.advantage",
    "rayalign.rl.loss",
    "rayalign.types",
]
VLLM_ONLY_IN = {"rayalign.rollout.vllm_backend"}
SERVE_ONLY_IN = {"rayalign.judge.service", "rayalign.judge.client"}
DRIVERS = {"rayalign.stage1.generate", "rayalign.sft.train", "rayalign.rl.train", "rayalign.eval.run"}
DRIVER_IMPORTERS = {"rayalign.cli", "rayalign.pipeline"}
"""The CLI and `rayalign run` (which only the CLI imports)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    """One imported module, as written in one statement of one rayalign module."""

    module: str
    """The importing module, e.g. rayalign.rl.loss."""
    target: str
    """The module imported, absolute, e.g. ray.serve or rayalign.types."""
    line: int
    statement: str
    """The import statement as written."""
    top_level: bool
    """Runs when the module is imported (not inside a function body)."""

    def where(self) -> str:
        return f"{FILES[self.module].relative_to(ROOT)}:{self.line}: `{self.statement}`"


def _is_package(module: str) -> bool:
    return FILES.get(module, Path()).name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from`` import names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = _absolute(module, node)
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if base.split(".")[0] == "rayalign":
            # ``from rayalign.judge import rubric`` imports a module; ``from rayalign.config import Config`` a name.
            yield sub if sub in FILES else base
        else:
            yield base  # ``from ray import serve`` imports ray and, maybe, ray.serve
            yield sub


def _walk(tree: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement, and whether it runs on module import."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, not in_function
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, True)
        else:
            yield from _walk(child, in_function)


def _read_imports() -> list[Import]:
    out = []
    for module, path in FILES.items():
        source = path.read_text(encoding="utf-8")
        for node, top_level in _walk(ast.parse(source, filename=str(path))):
            statement = " ".join((ast.get_source_segment(source, node) or ast.unparse(node)).split())
            for target in dict.fromkeys(_targets(module, node)):
                out.append(Import(module, target, node.lineno, statement, top_level))
    return out


IMPORTS = _read_imports()


def _imports_of(module: str) -> list[Import]:
    return [i for i in IMPORTS if i.module == module]


def _is(target: str, name: str) -> bool:
    return target == name or target.startswith(name + ".")


def _parents(module: str) -> list[str]:
    """The packages Python initialises before ``module``: rayalign.rl for rayalign.rl.loss."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _reach(start: str, forbidden: str) -> list[Import] | None:
    """The chain of imports by which importing ``start`` imports ``forbidden``, if any."""
    seen = {start}
    queue: list[tuple[str, list[Import]]] = [(start, [])]
    queue += [(p, []) for p in _parents(start) if p in FILES]
    while queue:
        module, chain = queue.pop(0)
        for imp in _imports_of(module):
            if _is(imp.target, forbidden):
                return [*chain, imp]
            for nxt in [*_parents(imp.target), imp.target]:
                if nxt in FILES and nxt not in seen:
                    seen.add(nxt)
                    queue.append((nxt, [*chain, imp]))
    return None


def _listing(imports: list[Import]) -> str:
    return "\n".join(dict.fromkeys(i.where() for i in imports))


def test_the_import_graph_is_read():
    """The reader sees what the walls rely on (so a broken reader cannot pass every wall)."""
    targets = {(i.module, i.target) for i in IMPORTS}
    assert ("rayalign.rollout.vllm_backend", "vllm") in targets
    assert ("rayalign.config", "rayalign.config_tree") in targets
    assert any(m in DRIVER_IMPORTERS and t in DRIVERS for m, t in targets)
    assert ("rayalign.cli", "rayalign.pipeline") in targets


@pytest.mark.parametrize("module", PURE)
@pytest.mark.parametrize("forbidden", ["ray", "vllm"])
def test_pure_modules_import_neither_ray_nor_vllm(module, forbidden):
    if module not in FILES:
        pytest.skip(f"{module} does not exist")
    chain = _reach(module, forbidden)
    if chain:
        pytest.fail(f"{module} must not import {forbidden}, but does (transitively):\n{_listing(chain)}")


def test_only_the_vllm_backend_imports_vllm():
    bad = [i for i in IMPORTS if _is(i.target, "vllm") and i.module not in VLLM_ONLY_IN]
    assert not bad, f"only rayalign/rollout/vllm_backend.py may import vllm:\n{_listing(bad)}"


def test_only_the_judge_service_and_client_import_ray_serve():
    bad = [i for i in IMPORTS if _is(i.target, "ray.serve") and i.module not in SERVE_ONLY_IN]
    assert not bad, f"only rayalign/judge/service.py and client.py may import ray.serve:\n{_listing(bad)}"


def test_nothing_imports_the_cli():
    bad = [i for i in IMPORTS if _is(i.target, "rayalign.cli")]
    assert not bad, f"no module may import rayalign.cli:\n{_listing(bad)}"


def test_no_stage_imports_another_stages_driver():
    bad = [i for i in IMPORTS if i.target in DRIVERS and i.module not in DRIVER_IMPORTERS]
    assert not bad, f"stage drivers are imported by rayalign.cli and rayalign.pipeline only:\n{_listing(bad)}"


def test_only_the_cli_imports_the_pipeline():
    bad = [i for i in IMPORTS if _is(i.target, "rayalign.pipeline") and i.module != "rayalign.cli"]
    assert not bad, f"rayalign.pipeline calls every stage driver; only rayalign.cli may import it:\n{_listing(bad)}"


def _cycles() -> list[list[Import]]:
    """One cycle of module-level imports per strongly connected group of modules."""
    edges: dict[str, dict[str, Import]] = {m: {} for m in FILES}
    for i in IMPORTS:
        if i.top_level and i.target in FILES and i.target != i.module:
            edges[i.module].setdefault(i.target, i)
    cycles: dict[frozenset[str], list[Import]] = {}
    for start in FILES:
        path = _cycle_from(start, edges, [], set())
        if path:
            cycles.setdefault(frozenset(i.module for i in path), path)
    return list(cycles.values())


def _cycle_from(module: str, edges: dict[str, dict[str, Import]], path: list[Import], seen: set[str]):
    """Depth-first: the first chain of imports from ``module`` that returns to a module on ``path``."""
    on_path = [*(i.module for i in path), module]
    for target, imp in edges[module].items():
        if target in on_path:
            return [*path[on_path.index(target) :], imp]
        if target in seen:
            continue
        seen.add(target)
        found = _cycle_from(target, edges, [*path, imp], seen)
        if found:
            return found
    return None


def test_no_import_cycles():
    cycles = _cycles()
    message = "\n\n".join(
        " -> ".join([c[0].module, *(i.target for i in c)]) + "\n  " + "\n  ".join(i.where() for i in c) for c in cycles
    )
    assert not cycles, f"import cycles among rayalign modules:\n{message}"
