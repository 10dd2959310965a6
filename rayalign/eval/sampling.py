"""Eval sampling: each target's greedy answers from a sampler pool of its own,
saved before judging and reused while nothing they depend on changed::

    target (model, spec in context?) + prompts -> [spec(category) prompts, grouped by category]
        -> RolloutPool (started, used, shut down) -> rollouts -> answers/<target>.rollouts.json
        -> reasoning / answer split (rayalign.eval.answers.split_answer)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rayalign.config import Config
from rayalign.datafiles import write_atomic
from rayalign.eval.answers import split_answer
from rayalign.eval.targets import EvalTarget
from rayalign.judge.client import JudgeClient
from rayalign.progress import ProgressLine
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.pool import PoolResources, RolloutPool
from rayalign.spec import Spec
from rayalign.stage1.conditioning import GenerationTemplates, generation_prompt
from rayalign.stage1.prompts import order_for_prefix_cache
from rayalign.tracking import Tracker
from rayalign.types import Completion, Prompt, Rollout, SamplingSettings, from_dict, to_dict


@dataclass(frozen=True)
class EvalContext:
    """What the evaluation of every target shares."""

    cfg: Config
    spec: Spec
    templates: GenerationTemplates
    settings: SamplingSettings
    client: JudgeClient | None
    """None when eval.judge is false."""
    out: Path
    tracker: Tracker | None
    log: Callable[[str], None]
    reuse: tuple[Path, ...] = ()
    """Other answers folders whose saved answers serve when they match (the run's own eval, when
    ``--out`` is elsewhere: judging a run's answers again does not sample them again)."""


@dataclass(frozen=True)
class Sampled:
    """One target's answers before judging."""

    target: EvalTarget
    prompts: tuple[Prompt, ...]
    rollouts: tuple[Rollout, ...]
    """In prompt order."""
    completions: tuple[Completion, ...]
    start_s: float
    generate_s: float


def sample_target(ctx: EvalContext, target: EvalTarget, prompts: Sequence[Prompt]) -> Sampled:
    """One target's greedy answers, split into reasoning and final answer.

    Answers are saved before judging (``answers/<target>.rollouts.json``), so a
    run killed later, or run again, reuses them while the model files, the
    prompts, the spec and the decoding settings are unchanged; so does a run
    into another folder when ``ctx.reuse`` holds matching ones (copied over).
    """
    name = f"{file_name(target.name)}.rollouts.json"
    path = ctx.out / "answers" / name
    key = sampling_fingerprint(target, prompts, ctx.settings, ctx.spec.hash)
    source, rollouts = _first_saved([path, *(folder / name for folder in ctx.reuse)], key)
    if rollouts is not None:
        ctx.log(f"[eval] {target.name}: {len(rollouts)} answers reused from {source}")
        start_s = generate_s = 0.0
    else:
        rollouts, start_s, generate_s = _generate(ctx, target, prompts)
    if source != path:
        write_atomic(path, [json.dumps({"fingerprint": key, "rollouts": [to_dict(r) for r in rollouts]})])
    by_id = {r.prompt_id: r for r in rollouts}
    ordered = tuple(by_id[p.id] for p in prompts)
    completions = tuple(split_answer(r.text, r.finish_reason) for r in ordered)
    malformed = sum(c.malformed is not None for c in completions)
    if generate_s:
        ctx.log(
            f"[eval] {target.name}: sampler up in {start_s:.1f}s; {len(rollouts)} answers in {generate_s:.1f}s ({malformed} off-format)"
        )
    return Sampled(target, tuple(prompts), ordered, completions, start_s, generate_s)


def sampling_fingerprint(
    target: EvalTarget, prompts: Sequence[Prompt], settings: SamplingSettings, spec_hash: str
) -> str:
    """What a target's answers depend on: the model source and its files (size,
    mtime), the spec-in-context flag and spec, the prompts, the decoding."""
    model = Path(model_source(target.model))
    files = [] if not model.exists() else [model] if model.is_file() else sorted(model.iterdir())
    stamps = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files if f.is_file()]
    payload = [target.model, stamps, target.spec_in_context, spec_hash, [p.id for p in prompts], to_dict(settings)]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _first_saved(paths: Sequence[Path], key: str) -> tuple[Path | None, list[Rollout] | None]:
    """(path, rollouts) of the first of ``paths`` holding rollouts saved for ``key``; (None, None) if none does."""
    for path in paths:
        rollouts = _saved_rollouts(path, key)
        if rollouts is not None:
            return path, rollouts
    return None, None


def _saved_rollouts(path: Path, key: str) -> list[Rollout] | None:
    """The rollouts saved at ``path`` for ``key``; None when absent, stale or unreadable."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["fingerprint"] != key:
            return None
        return [from_dict(Rollout, r) for r in saved["rollouts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _generate(ctx: EvalContext, target: EvalTarget, prompts: Sequence[Prompt]) -> tuple[list[Rollout], float, float]:
    """(rollouts, start seconds, generate seconds): one greedy answer per prompt."""
    shown = list(prompts)
    if target.spec_in_context:
        # Grouped by category, prompts share spec(category) as a cacheable prefix.
        shown = order_for_prefix_cache([generation_prompt(ctx.spec, ctx.templates, p) for p in prompts])
    tick = time.perf_counter()
    engine = EngineConfig.from_config(ctx.cfg, model=model_source(target.model))
    pool = RolloutPool(engine, PoolResources.from_config(ctx.cfg))
    try:
        pool.wait_ready()
        start_s, tick = time.perf_counter() - tick, time.perf_counter()
        # Slices, so the line moves: ~10 steps, each still a batch for every sampler.
        size, rollouts = max(8 * len(pool.actors), math.ceil(len(shown) / 10)), []
        with ProgressLine(f"eval {target.name}", len(shown), unit="answer") as line:
            for i in range(0, len(shown), size):
                rollouts += pool.generate(shown[i : i + size], ctx.settings)
                line.set(len(rollouts))
    finally:
        pool.shutdown()  # its CPUs go to the next target's pool and the judge
    return rollouts, start_s, time.perf_counter() - tick


def model_source(source: str) -> str:
    """A local checkpoint as an absolute path: actors may not share the driver's cwd."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def file_name(name: str) -> str:
    """A target name safe as a file name: base+spec -> base+spec, a/b -> a_b."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
