"""Stage 1, end to end: spec-conditioned generation, judge filtering, SFT data.

    prompts -> spec(category) + instructions -> n samples on sampler actors
            -> parse -> judge (reasoning shown, label hint) k runs, min
            -> best per prompt above threshold -> SFT example WITHOUT the spec

Ray Data drives it: one row per shard of prompts; an actor pool of samplers
maps shards to rollouts; judge tasks call the Serve judge, filter, and write
the shard's decisions atomically. A re-run skips finished shards, so a killed
run resumes without losing or repeating a prompt.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray

from rayalign import filter as sample_filter
from rayalign.cluster import init_ray
from rayalign.judge.client import JudgeClient
from rayalign.judge.service import APP_NAME, JudgeSettings, start_judge
from rayalign.prompts import (
    generation_prompt,
    load_generation_templates,
    order_for_prefix_cache,
    prepare_prompts,
    read_prompts,
)
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.format import format_regex, split_completion
from rayalign.rollout.vllm_backend import engine_env
from rayalign.rollout.worker import RolloutWorker
from rayalign.spec import load_spec
from rayalign.types import (
    Classification,
    JudgeRequest,
    Prompt,
    Rollout,
    SamplingSettings,
    SFTExample,
    from_dict,
    from_json,
    to_dict,
    to_json,
)


@dataclass(frozen=True)
class GenerateResult:
    examples_path: str
    kept: int
    prompts: int
    shards_done: int
    shards_skipped: int
    report: str
    seconds: float


def stage_dir(cfg) -> Path:
    return Path(cfg.tracking.run_dir) / "stage1"


def write_atomic(path: Path, lines: Sequence[str]) -> None:
    """Write a JSONL file so readers see all of it or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def limit_prompts(prompts: Sequence[Prompt], n: int) -> list[Prompt]:
    """At most ``n`` prompts, taken round-robin across categories (0 = all).

    >>> from rayalign.types import Message
    >>> ps = [Prompt(f"{c}{i}", (Message("user", "x"),), category=c) for c in "ab" for i in range(3)]
    >>> [p.id for p in limit_prompts(ps, 3)]
    ['a0', 'a1', 'b0']
    """
    if n <= 0 or n >= len(prompts):
        return list(prompts)
    by_category = collections.defaultdict(collections.deque)
    for p in prompts:
        by_category[p.category].append(p)
    chosen: set[str] = set()
    while len(chosen) < n:
        for queue in by_category.values():
            if queue and len(chosen) < n:
                chosen.add(queue.popleft().id)
    return [p for p in prompts if p.id in chosen]


def shard_path(cfg, index: int) -> Path:
    return stage_dir(cfg) / "shards" / f"shard-{index:05d}.jsonl"


class _SampleShards:
    """Ray Data actor UDF: a sampler engine that turns a shard of prompts into rollouts."""

    def __init__(self, engine: EngineConfig, settings: SamplingSettings, spec_path: str):
        self.worker = RolloutWorker(engine)
        self.settings = settings
        self.spec, self.templates = load_spec(spec_path), load_generation_templates(spec_path)

    def __call__(self, batch: dict) -> dict:
        out = {"shard": [], "prompts": [], "rollouts": []}
        for shard, prompts_json in zip(batch["shard"], batch["prompts"]):
            prompts = [from_dict(Prompt, p) for p in json.loads(prompts_json)]
            conditioned = [generation_prompt(self.spec, self.templates, p) for p in prompts]
            rollouts = self.worker.generate(conditioned, self.settings)
            out["shard"].append(shard)
            out["prompts"].append(prompts_json)
            out["rollouts"].append(json.dumps([to_dict(r) for r in rollouts]))
        return out


@dataclass(frozen=True)
class _FilterSettings:
    stage_dir: str
    min_score: float
    keep_per_prompt: int
    provenance: sample_filter.Provenance
    timeout_s: float


def _judge_and_write(batch: dict, settings: _FilterSettings) -> dict:
    """Ray Data task UDF: judge a shard's well-formed samples, filter, write atomically."""
    from ray import serve

    client = JudgeClient(handle=serve.get_app_handle(APP_NAME), timeout_s=settings.timeout_s)
    summaries = []
    for shard, prompts_json, rollouts_json in zip(batch["shard"], batch["prompts"], batch["rollouts"]):
        prompts = [from_dict(Prompt, p) for p in json.loads(prompts_json)]
        rollouts = [from_dict(Rollout, r) for r in json.loads(rollouts_json)]
        decisions = _filter_shard(client, prompts, rollouts, settings)
        path = Path(settings.stage_dir) / "shards" / f"shard-{int(shard):05d}.jsonl"
        write_atomic(path, [to_json(d) for d in decisions])
        summaries.append(json.dumps({"shard": int(shard), "kept": sum(len(d.kept) for d in decisions)}))
    return {"summary": summaries}


def _filter_shard(client: JudgeClient, prompts, rollouts, settings: _FilterSettings) -> list[sample_filter.Decision]:
    parsed = [(r, split_completion(r.text, r.finish_reason)) for r in rollouts]
    by_id = {p.id: p for p in prompts}
    to_judge = [(r, c) for r, c in parsed if c.malformed is None]
    requests = [
        JudgeRequest(prompt=by_id[r.prompt_id], answer=c.answer, reasoning=c.reasoning, request_id=f"{r.prompt_id}#{r.sample_index}")
        for r, c in to_judge
    ]
    verdicts = dict(zip((q.request_id for q in requests), asyncio.run(client.score(requests))))
    candidates = collections.defaultdict(list)
    for r, c in parsed:
        verdict = verdicts.get(f"{r.prompt_id}#{r.sample_index}")
        candidates[r.prompt_id].append(sample_filter.Candidate(r, c, verdict))
    return [
        sample_filter.select(
            p, candidates[p.id], min_score=settings.min_score, keep_per_prompt=settings.keep_per_prompt, provenance=settings.provenance
        )
        for p in prompts
    ]


def training_prompts(cfg, spec) -> tuple[list[Prompt], list[Prompt], str]:
    """(train, held out, summary): the prompts of data.prompts that stages 1 and 2 train on."""
    eval_sets = [read_prompts(source) for source in cfg.data.decontaminate]
    train, held, report = prepare_prompts(
        cfg.data.prompts,
        categories=spec.category_ids,
        eval_fraction=cfg.data.eval_fraction,
        seed=cfg.data.seed,
        eval_sets=eval_sets,
    )
    train = limit_prompts(train, cfg.data.max_prompts)
    return order_for_prefix_cache(train), held, report.summary()


def run_generate(cfg, *, log=print) -> GenerateResult:
    """Stage 1 on ``cfg``; resumes from finished shards under ``tracking.run_dir``."""
    start = time.perf_counter()
    spec = load_spec(cfg.spec.path)
    train, held, prompt_summary = training_prompts(cfg, spec)
    out = stage_dir(cfg)
    write_atomic(out / "prompts_eval.jsonl", [to_json(p) for p in held])
    log(f"[generate] prompts: {prompt_summary}; training on {len(train)}")
    classify = needs_categories(cfg, train)
    if classify:
        _start_judge(cfg)
        train = categorise(cfg, train, log)
    write_atomic(out / "prompts_train.jsonl", [to_json(p) for p in train])
    size = cfg.data.shard_size
    shards = [train[i : i + size] for i in range(0, len(train), size)]
    todo = [i for i in range(len(shards)) if not shard_path(cfg, i).exists()]
    log(f"[generate] {len(shards)} shards of <= {size} prompts; {len(shards) - len(todo)} already done")
    if todo:
        if not classify:
            _start_judge(cfg)
        _run_shards(cfg, spec, shards, todo, log)
    return _collect(cfg, len(shards), len(shards) - len(todo), len(train), start, log)


def _start_judge(cfg) -> None:
    init_ray(cfg.cluster)
    start_judge(cfg, JudgeSettings.from_config(cfg), port=0)


def categories_path(cfg) -> Path:
    return stage_dir(cfg) / "categories.jsonl"


def _unlabelled(prompt: Prompt) -> bool:
    # A prompt with an expected behaviour but no category was labelled benign by its dataset.
    return prompt.category is None and prompt.expected is None


def needs_categories(cfg, prompts: Sequence[Prompt]) -> bool:
    """Whether :func:`categorise` would ask the judge about (or reuse answers for) any prompt."""
    return cfg.data.classify and any(_unlabelled(p) for p in prompts)


def categorise(cfg, prompts: Sequence[Prompt], log=print) -> list[Prompt]:
    """``prompts`` with the judge's categories for unlabelled ones (``data.classify``),
    in prefix-cache order. Stages 1 and 2 share the answers saved by stage 1; the
    Serve judge must be up when some prompt has no saved answer yet."""
    if not needs_categories(cfg, prompts):
        return list(prompts)
    return order_for_prefix_cache(assign_categories(cfg, prompts, log))


def assign_categories(cfg, prompts: Sequence[Prompt], log=print) -> list[Prompt]:
    """Unlabelled prompts (no category, no expected behaviour) get the judge
    model's category, or stay None when it answers none.

    Results are kept in ``stage1/categories.jsonl``, so a resumed run asks
    again only for prompts it has no answer for, and its shards come out the same.
    """
    from ray import serve

    path = categories_path(cfg)
    known = {c.prompt_id: c for c in _read_classifications(path)}
    todo = [p for p in prompts if _unlabelled(p) and p.id not in known]
    if todo:
        client = JudgeClient(handle=serve.get_app_handle(APP_NAME), timeout_s=cfg.judge.timeout_s)
        fresh = asyncio.run(client.classify(todo))
        known.update({c.prompt_id: c for c in fresh})
        write_atomic(path, [to_json(c) for c in known.values()])
    asked = [known[p.id] for p in prompts if _unlabelled(p)]
    counts = collections.Counter(c.category or "none" if c.status == "ok" else "unscorable" for c in asked)
    log(f"[categories] {len(asked)} uncategorised prompts ({len(todo)} asked now): "
        + ", ".join(f"{k} {n}" for k, n in sorted(counts.items())))
    return [
        dataclasses.replace(p, category=known[p.id].category) if _unlabelled(p) and known[p.id].status == "ok" else p
        for p in prompts
    ]


def _read_classifications(path: Path) -> list[Classification]:
    if not path.exists():
        return []
    return [from_json(Classification, line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _run_shards(cfg, spec, shards, todo, log) -> None:
    engine = EngineConfig.from_config(cfg)
    r = cfg.rollout
    settings = SamplingSettings(
        n=r.n,
        temperature=r.temperature,
        top_p=r.top_p,
        max_new_tokens=r.max_new_tokens,
        seed=r.seed,
        regex=format_regex(r.max_new_tokens) if r.enforce_format else "",
    )
    templates = load_generation_templates(cfg.spec.path)

    filter_settings = _FilterSettings(
        stage_dir=str(stage_dir(cfg).resolve()),
        min_score=cfg.filter.min_score,
        keep_per_prompt=cfg.filter.keep_per_prompt,
        provenance=sample_filter.Provenance(cfg.model.policy, spec.hash, templates.hash),
        timeout_s=cfg.judge.timeout_s,
    )
    rows = [{"shard": i, "prompts": json.dumps([to_dict(p) for p in shards[i]])} for i in todo]
    extra = {"resources": {r.resource: 1}} if r.resource else {}
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _SampleShards,
        fn_constructor_kwargs={"engine": engine, "settings": settings, "spec_path": cfg.spec.path},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(r.num_workers, len(rows))),
        num_cpus=r.cpus_per_worker,
        num_gpus=r.gpus_per_worker or None,
        runtime_env={"env_vars": engine_env(engine)},
        **extra,
    ).map_batches(_judge_and_write, fn_kwargs={"settings": filter_settings}, batch_size=1, num_cpus=0)
    for row in ds.iter_rows():
        done = json.loads(row["summary"])
        log(f"[generate] shard {done['shard']} written: {done['kept']} examples kept")


def _collect(cfg, n_shards, skipped, n_prompts, start, log) -> GenerateResult:
    decisions = [
        from_json(sample_filter.Decision, line)
        for i in range(n_shards)
        for line in shard_path(cfg, i).read_text(encoding="utf-8").splitlines()
    ]
    examples = [e for d in decisions for e in d.kept]
    mix = _mix_in(cfg, len(examples))
    path = stage_dir(cfg) / "sft.jsonl"
    write_atomic(path, [to_json(e) for e in [*examples, *mix]])
    report = sample_filter.format_report(sample_filter.summarize(decisions))
    reasons = sample_filter.unscorable_reasons(decisions)
    if reasons:
        report += "\n\nMost frequent unscorable reasons:\n" + "\n".join(f"- ({n}x) {r}" for r, n in reasons)
    (stage_dir(cfg) / "filter_report.md").write_text(report + "\n", encoding="utf-8")
    log("[generate] filter summary:\n" + report)
    log(f"[generate] {len(examples)} examples (+{len(mix)} mix-in) -> {path}")
    return GenerateResult(str(path), len(examples), n_prompts, n_shards - skipped, skipped, report, time.perf_counter() - start)


def _mix_in(cfg, kept: int) -> list[SFTExample]:
    if not cfg.data.mix_in or cfg.data.mix_in_ratio <= 0:
        return []
    lines = Path(cfg.data.mix_in).read_text(encoding="utf-8").splitlines()
    rows = [from_json(SFTExample, line) for line in lines if line.strip()]
    return rows[: round(kept * cfg.data.mix_in_ratio)]
