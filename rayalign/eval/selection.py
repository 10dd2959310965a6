"""Which prompts a run takes: at most n per set, round-robin over categories and expected
behaviours (training prompts and eval benchmarks alike), and the eval's benchmark set."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

from rayalign.errors import EvalError
from rayalign.eval.loaders import load_benchmark
from rayalign.types import Prompt


def load_eval_prompts(benchmarks: Sequence[str], limit: int = 0) -> tuple[list[str], list[Prompt]]:
    """(benchmark names, prompts): each ``name:path`` loaded, at most ``limit`` prompts
    from each (round-robin over categories; 0 = all)."""
    if not benchmarks:
        raise EvalError("no benchmarks: pass name:path benchmarks or set eval.benchmarks", field="eval.benchmarks")
    names, prompts, seen = [], [], set()
    for i, spec in enumerate(benchmarks):
        name, loaded = load_benchmark(spec)
        if seen & {p.id for p in loaded}:
            raise EvalError(f"benchmark {spec!r} repeats prompt ids of an earlier one", field=f"benchmarks[{i}]")
        seen |= {p.id for p in loaded}
        names.append(name)
        prompts += limit_prompts(loaded, limit)
    return names, prompts


def limit_prompts(prompts: Sequence[Prompt], n: int, weights: Mapping[str, int] | None = None) -> list[Prompt]:
    """At most ``n`` prompts, taken round-robin across categories and, within a
    category, across expected behaviours (0 = all): a small run still sees
    refusals, compliances and safe completions of every category. ``weights``
    takes that many prompts of a behaviour per round (default 1; 0 = none).

    >>> from rayalign.types import Message
    >>> ps = [Prompt(f"{c}{i}", (Message("user", "x"),), c, e) for c in "ab" for i, e in enumerate(["refuse"] * 3 + ["comply"] * 3)]
    >>> [p.id for p in limit_prompts(ps, 4)]
    ['a0', 'a3', 'b0', 'b3']
    >>> [p.id for p in limit_prompts(ps, 6, {"comply": 2})]
    ['a0', 'a3', 'a4', 'b0', 'b3', 'b4']
    """
    weights = weights or {}
    kept = [p for p in prompts if weights.get(p.expected, 1) > 0]
    if n <= 0 or n >= len(kept):
        return kept
    by_category: dict[str | None, list[Prompt]] = collections.defaultdict(list)
    for p in kept:
        by_category[p.category].append(p)
    queues = [collections.deque(_interleave_behaviours(group, weights)) for group in by_category.values()]
    chosen: set[str] = set()
    while len(chosen) < n:
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.add(queue.popleft().id)
    return [p for p in kept if p.id in chosen]


def _interleave_behaviours(prompts: Sequence[Prompt], weights: Mapping[str, int]) -> list[Prompt]:
    """``weights[b]`` (default 1) prompts of each expected behaviour b in turn (first-seen order), stable within one.

    >>> from rayalign.types import Message
    >>> ps = [Prompt(str(i), (Message("user", "x"),), "a", e) for i, e in enumerate(["refuse"] * 2 + ["comply"] * 3)]
    >>> [p.id for p in _interleave_behaviours(ps, {"comply": 2})]
    ['0', '2', '3', '1', '4']
    """
    groups: dict[str | None, collections.deque] = {}
    for p in prompts:
        groups.setdefault(p.expected, collections.deque()).append(p)
    out: list[Prompt] = []
    while len(out) < len(prompts):
        for behaviour, group in groups.items():
            take = min(weights.get(behaviour, 1), len(group))
            out += [group.popleft() for _ in range(take)]
    return out
