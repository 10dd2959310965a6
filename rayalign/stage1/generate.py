"""Stage 1, end to end: spec-conditioned generation, judge filtering, SFT data.

    prompts -> spec(category) + instructions -> n samples on sampler actors
            -> parse -> judge (reasoning shown, label hint) k runs, min
            -> best per prompt above threshold -> SFT example WITHOUT the spec

Ray Data drives it: one row per shard of prompts; the rollout module's sampler
actor pool maps shards to rollouts; judge tasks call the Serve judge, filter,
and write the shard's decisions atomically. Every decision records the hash of
the spec(category) and the generation templates it was made with. A re-run
keeps each decision whose hashes still match, as written, and generates and
judges again only the other prompts (a missing shard's, a changed category's),
rewriting their shard with the kept and the fresh decisions; a shard with
nothing stale is left alone. So a killed run resumes without losing or
repeating a prompt, and a spec edit costs only the categories it touched
(``stage1/regeneration.md`` says which). ``full`` regenerates everything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from rayalign.cluster import init_ray
from rayalign.datafiles import jsonl_lines, read_records, read_text, write_atomic, write_records
from rayalign.errors import ConfigError
from rayalign.judge.client import JudgeClient, JudgeLosses, losses_warning
from rayalign.judge.service import JudgeSettings, connect_judge, judge_session
from rayalign.rollout.dataset import (
    decode_prompts,
    decode_rollouts,
    encode_prompts,
    prompts_dataset,
    sample_dataset,
)
from rayalign.rollout.engine import EngineConfig, sampling_settings
from rayalign.rollout.format import THINK_CLOSE, split_completion, trim_cut_answer
from rayalign.rollout.pool import PoolResources
from rayalign.runs import RunLayout
from rayalign.spec import Spec, load_spec
from rayalign.specdiff import (
    REUSED,
    PromptReuse,
    Regeneration,
    category_hash,
    format_regeneration,
    regeneration_reason,
)
from rayalign.stage1 import filter as sample_filter
from rayalign.stage1.categories import categorise, needs_categories
from rayalign.stage1.conditioning import (
    Conditioned,
    GenerationTemplates,
    SteerTemplates,
    check_safe_completions,
    condition,
    load_generation_templates,
    load_steer_templates,
)
from rayalign.stage1.prompts import training_prompts
from rayalign.templates import content_hash
from rayalign.types import (
    Completion,
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

RENDERED = "spec"
"""Backend name of a completion rendered from the spec instead of sampled (``generate.refusals: spec``)."""
RENDERED_BY = {"refuse": "spec:refusal", "safe_complete": "spec:safe_completion"}
"""The provenance ``model`` of a rendered completion, by the prompt's expected behaviour."""


@dataclass(frozen=True)
class GenerateResult:
    examples_path: str
    kept: int
    prompts: int
    shards_done: int
    shards_skipped: int
    report: str
    seconds: float


@dataclass(frozen=True)
class _FilterSettings:
    layout: RunLayout
    min_score: float
    keep_per_prompt: int
    provenance: sample_filter.Provenance
    timeout_s: float
    timeout_retries: int
    trim_cut_answers: bool = False
    category_hashes: dict[str | None, str] = dataclasses.field(default_factory=dict)
    """Each category's spec(category) hash (None: no category), recorded on its prompts' decisions
    (a category missing here records none, so a re-run regenerates its prompts)."""


@dataclass(frozen=True)
class _Conditioning:
    """The generation (and steering) templates and their combined hash, recorded on every decision."""

    templates: GenerationTemplates
    steer: SteerTemplates | None
    hash: str


@dataclass(frozen=True)
class _ShardWork:
    """One shard of this run: its prompts in order, the decisions kept as written, the prompts to redo."""

    index: int
    prompts: tuple[Prompt, ...]
    reused: dict[str, str]
    """Prompt id -> its earlier decision's JSONL line, byte for byte."""
    fresh: tuple[Prompt, ...]
    """Prompts generated and judged again (stale or without a decision)."""
    untouched: bool
    """The shard file already holds exactly the reused decisions: it is not written."""


def run_generate(cfg, *, full: bool = False, log=print) -> GenerateResult:
    """Stage 1 on ``cfg``; a re-run redoes only stale prompts (see the module notes), ``full`` all of them."""
    start = time.perf_counter()
    if cfg.generate.close_reasoning and cfg.generate.steer not in ("prefix", "both"):
        raise ConfigError(
            "needs generate.steer prefix or both (the opening it closes)", field="generate.close_reasoning"
        )
    if cfg.generate.safe_completions == "spec" and not cfg.generate.close_reasoning:
        raise ConfigError(
            "needs generate.close_reasoning true (the rendered answer follows a rendered reasoning)",
            field="generate.safe_completions",
        )
    spec = load_spec(cfg.spec.path)
    layout = RunLayout.of(cfg)
    train, held, prompt_summary = training_prompts(cfg, spec)
    write_records(layout.prompts_eval, held)
    log(f"[generate] prompts: {prompt_summary}; training on {len(train)}")
    conditioning = _conditioning(cfg)
    if cfg.generate.safe_completions == "spec":
        check_safe_completions(spec, conditioning.steer, cfg.spec.path)
    with contextlib.ExitStack() as stack:
        client = None
        if needs_categories(cfg, train):
            client = _start_judge(cfg, stack)
            train = _train_prompts(cfg, train, client, log)
        else:
            write_records(layout.prompts_train, train)
        works = _plan(cfg, spec, conditioning.hash, train, full, log)
        for w in works:
            if not w.fresh and not w.untouched:  # all reused, but not this shard's file as it is
                write_atomic(layout.shard(w.index), [w.reused[p.id] for p in w.prompts])
        todo = [w for w in works if w.fresh]
        if todo:
            if client is None:
                _start_judge(cfg, stack)
            _run_shards(cfg, spec, conditioning, todo, log)
    skipped = sum(w.untouched for w in works)
    return _collect(cfg, len(works), skipped, len(train), start, log)


def _start_judge(cfg, stack: contextlib.ExitStack) -> JudgeClient:
    init_ray(cfg.cluster)
    return stack.enter_context(judge_session(cfg, JudgeSettings.from_config(cfg)))


def _train_prompts(cfg, train: list[Prompt], client: JudgeClient, log) -> list[Prompt]:
    train = categorise(cfg, train, client, log)
    write_records(RunLayout.of(cfg).prompts_train, train)
    return train


def _conditioning(cfg) -> _Conditioning:
    templates = load_generation_templates(cfg.spec.path)
    steer = load_steer_templates(cfg.spec.path) if cfg.generate.steer != "none" else None
    hashes = (templates.hash, steer.hash) if steer else (templates.hash,)
    # How the templates are used is part of what wrote a sample: a changed mode regenerates it.
    g = cfg.generate
    modes = (g.steer, g.close_reasoning, g.answer_context, g.refusals, g.safe_completions, g.trim_cut_answers)
    return _Conditioning(templates, steer, "+".join((*hashes, content_hash(repr(modes).encode()))))


def _earlier_decisions(layout: RunLayout) -> tuple[dict[str, tuple[sample_filter.Decision, str]], dict[int, list[str]]]:
    """(prompt id -> (decision, its line as written), shard index -> its lines) from the shard files present."""
    by_id, files = {}, {}
    for index, path in layout.shard_files().items():
        lines = [line for _, line in jsonl_lines(read_text(path))]
        files[index] = lines
        for decision, line in zip(read_records(path, sample_filter.Decision), lines):
            by_id.setdefault(decision.prompt_id, (decision, line))
    return by_id, files


def _plan(cfg, spec: Spec, template_hash: str, train: list[Prompt], full: bool, log) -> list[_ShardWork]:
    """Each shard's reused and fresh prompts, by :func:`regeneration_reason`; reported and written down.

    Shards are consecutive runs of ``data.shard_size`` prompts of the same
    ordered prompt list, so a prompt stays in its shard across runs.
    """
    layout, size = RunLayout.of(cfg), cfg.data.shard_size
    hashes = {c: category_hash(spec, c) for c in {p.category for p in train}}
    earlier, files = ({}, {}) if full else _earlier_decisions(layout)
    works, reuse = [], []
    for index, at in enumerate(range(0, len(train), size)):
        prompts = tuple(train[at : at + size])
        reasons = {}
        for p in prompts:
            decision = earlier[p.id][0] if p.id in earlier else None
            reasons[p.id] = regeneration_reason(decision, hashes[p.category], template_hash, full=full)
            reuse.append(PromptReuse(p.id, p.category or "none", index, reasons[p.id]))
        reused = {p.id: earlier[p.id][1] for p in prompts if reasons[p.id] == REUSED}
        fresh = tuple(p for p in prompts if reasons[p.id] != REUSED)
        untouched = not fresh and files.get(index) == [reused[p.id] for p in prompts]
        works.append(_ShardWork(index, prompts, reused, fresh, untouched))
    untouched = tuple(w.index for w in works if w.untouched)
    rewritten = tuple(w.index for w in works if not w.untouched)
    regeneration = Regeneration(spec.hash, template_hash, full, tuple(reuse), untouched, rewritten)
    _write_regeneration(layout, regeneration, log)
    log(f"[generate] {len(works)} shards of <= {size} prompts; {len(untouched)} already done")
    return works


def _write_regeneration(layout: RunLayout, regeneration: Regeneration, log) -> None:
    report = format_regeneration(regeneration)
    layout.regeneration_report.parent.mkdir(parents=True, exist_ok=True)
    layout.regeneration_report.write_text(report, encoding="utf-8")
    by_category = {c: dict(n) for c, n in regeneration.by_category().items()}
    write_atomic(layout.regeneration_json, [json.dumps({**to_dict(regeneration), "by_category": by_category})])
    log("[generate] regeneration:\n" + report.rstrip())


def _run_shards(cfg, spec: Spec, conditioning: _Conditioning, todo: list[_ShardWork], log) -> None:
    g = cfg.generate
    teacher = g.model or cfg.model.policy
    filter_settings = _FilterSettings(
        layout=RunLayout(RunLayout.of(cfg).root.resolve()),
        min_score=cfg.filter.min_score,
        keep_per_prompt=cfg.filter.keep_per_prompt,
        provenance=sample_filter.Provenance(teacher, spec.hash, conditioning.hash),
        timeout_s=cfg.judge.timeout_s,
        timeout_retries=cfg.judge.timeout_retries,
        trim_cut_answers=cfg.generate.trim_cut_answers,
        category_hashes={p.category: category_hash(spec, p.category) for w in todo for p in w.fresh},
    )
    plans = [[condition(spec, conditioning.templates, conditioning.steer, g, p) for p in w.fresh] for w in todo]
    conditioned = [[c.sampled for c in plan if c.sampled is not None] for plan in plans]
    columns = {
        "shard": [w.index for w in todo],
        "originals": [encode_prompts(w.fresh) for w in todo],
        "order": [json.dumps([p.id for p in w.prompts]) for w in todo],
        "reused": [json.dumps(w.reused, ensure_ascii=False) for w in todo],
        "heads": [json.dumps({p.id: c.head for p, c in zip(w.fresh, plan)}) for w, plan in zip(todo, plans)],
        "rendered": [_rendered(w.fresh, plan) for w, plan in zip(todo, plans)],
    }
    resources = PoolResources.from_config(cfg)
    resources = PoolResources(min(resources.num_workers, len(todo)), resources.cpus, resources.gpus, resources.resource)
    log(f"[generate] sampling with {teacher} (steering: {g.steer}{', reasoning closed' if g.close_reasoning else ''})")
    ds = sample_dataset(
        prompts_dataset(conditioned, **columns),
        EngineConfig.from_config(cfg, model=teacher),
        resources,
        _sampling(cfg),
    ).map_batches(
        # One judging task at a time: a shard's verdicts keep the whole service busy (a second task would
        # split the same capacity with it, not add any).
        _judge_and_write,
        fn_kwargs={"settings": filter_settings},
        batch_size=1,
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=1),
    )
    _log_shards(cfg, ds.iter_rows(), log, total=len(todo))


def _rendered(prompts: Sequence[Prompt], plan: Sequence[Conditioned]) -> str:
    """The completions rendered from the spec (no generator), as rollouts the filter judges like any other."""
    rollouts = [
        Rollout(p.id, 0, c.rendered, (), (), (), "stop", backend=RENDERED)
        for p, c in zip(prompts, plan)
        if c.sampled is None
    ]
    return json.dumps([to_dict(r) for r in rollouts], ensure_ascii=False)


def _sampling(cfg) -> SamplingSettings:
    """The generator's sampling; a closed reasoning leaves only the answer to write, so nothing to constrain."""
    r, g = cfg.rollout, cfg.generate
    opened = g.steer in ("prefix", "both")
    return sampling_settings(
        n=r.n,
        temperature=r.temperature,
        top_p=r.top_p,
        max_new_tokens=r.max_new_tokens,
        seed=r.seed,
        enforce_format=r.enforce_format and not (opened and g.close_reasoning),
        opened=opened,
    )


def _log_shards(cfg, rows, log, total: int | None = None) -> None:
    """A progress line over the ``total`` shards being written (rate, ETA, examples kept so far),
    then the judge's losses over all of them (loudly above the limit)."""
    from rayalign.progress import ProgressLine

    losses, kept = JudgeLosses(), 0
    with ProgressLine("generate", total, unit="shard") as line:
        for row in rows:
            done = json.loads(row["summary"])
            losses += from_dict(JudgeLosses, done["losses"])
            kept += done["kept"]
            line.update(1, {"last": f"shard {done['shard']}", "kept": kept, "unscorable": losses.lost})
    log(f"[generate] judge: {losses.results} verdicts, {losses.lost} unscorable ({losses.retried} retried)")
    warning = losses_warning(losses, cfg.judge.max_unscorable_share, what="[generate] judge")
    if warning:
        log(warning)


def _judge_and_write(batch: dict, settings: _FilterSettings) -> dict:
    """Ray Data task UDF: judge a shard's fresh well-formed samples, filter, and write the shard
    atomically: its reused decisions as they were written, the fresh ones in their place."""
    client = connect_judge(settings.timeout_s, settings.timeout_retries)
    summaries = []
    for shard, originals, rollouts, rendered, heads, order, reused in zip(
        batch["shard"],
        batch["originals"],
        batch["rollouts"],
        batch["rendered"],
        batch["heads"],
        batch["order"],
        batch["reused"],
    ):
        samples = decode_rollouts(rollouts) + decode_rollouts(rendered)
        decisions = _filter_shard(client, decode_prompts(originals), samples, json.loads(heads), settings)
        lines = {**json.loads(reused), **{d.prompt_id: to_json(d) for d in decisions}}
        written = [lines[prompt_id] for prompt_id in json.loads(order)]
        write_atomic(settings.layout.shard(int(shard)), written)
        kept = sum(len(from_json(sample_filter.Decision, line).kept) for line in written)
        summaries.append(json.dumps({"shard": int(shard), "kept": kept, "losses": to_dict(client.losses())}))
    return {"summary": summaries}


def _parse(rollout: Rollout, head: str, settings: _FilterSettings) -> Completion:
    """The sample as reasoning and answer; with ``generate.trim_cut_answers``, an answer the length limit cut
    after a whole reasoning is ended at its last complete sentence (still flagged if too little is left)."""
    completion = split_completion(head + rollout.text, rollout.finish_reason)
    if not (settings.trim_cut_answers and completion.malformed == "truncated" and THINK_CLOSE in head + rollout.text):
        return completion
    answer = trim_cut_answer(completion.answer)
    return completion if answer is None else Completion(completion.reasoning, answer, None, trimmed=True)


def _filter_shard(
    client: JudgeClient, prompts, rollouts, heads: dict[str, str], settings: _FilterSettings
) -> list[sample_filter.Decision]:
    # A steered sample's reasoning starts in its head (the prefill, or a reasoning the generator
    # never saw): the example keeps all of it. A rendered completion is whole already.
    parsed = [(r, _parse(r, "" if r.backend == RENDERED else heads[r.prompt_id], settings)) for r in rollouts]
    by_id = {p.id: p for p in prompts}
    requests = [
        JudgeRequest(by_id[r.prompt_id], c.answer, c.reasoning, request_id=f"{r.prompt_id}#{r.sample_index}")
        for r, c in parsed
        if c.malformed is None
    ]
    verdicts = dict(zip((q.request_id for q in requests), asyncio.run(client.score(requests))))
    candidates = collections.defaultdict(list)
    for r, c in parsed:
        candidates[r.prompt_id].append(sample_filter.Candidate(r, c, verdicts.get(f"{r.prompt_id}#{r.sample_index}")))
    return [
        sample_filter.select(
            p,
            candidates[p.id],
            min_score=settings.min_score,
            keep_per_prompt=settings.keep_per_prompt,
            provenance=_provenance(settings, p, candidates[p.id]),
        )
        for p in prompts
    ]


def _provenance(settings: _FilterSettings, prompt: Prompt, candidates) -> sample_filter.Provenance:
    """The shard's provenance with the prompt's spec(category) hash; a rendered answer names the spec as its writer."""
    rendered = candidates and all(c.rollout.backend == RENDERED for c in candidates)
    return dataclasses.replace(
        settings.provenance,
        spec_category_hash=settings.category_hashes.get(prompt.category, ""),
        **({"model": RENDERED_BY.get(prompt.expected, "spec")} if rendered else {}),
    )


def _collect(cfg, n_shards: int, skipped: int, n_prompts: int, start: float, log) -> GenerateResult:
    layout = RunLayout.of(cfg)
    decisions = [d for i in range(n_shards) for d in read_records(layout.shard(i), sample_filter.Decision)]
    examples = [e for d in decisions for e in d.kept]
    mix = _mix_in(cfg, len(examples))
    write_records(layout.sft_data, [*examples, *mix])
    report = sample_filter.format_report(sample_filter.summarize(decisions))
    reasons = sample_filter.unscorable_reasons(decisions)
    if reasons:
        report += "\n\nMost frequent unscorable reasons:\n" + "\n".join(f"- ({n}x) {r}" for r, n in reasons)
    layout.filter_report.write_text(report + "\n", encoding="utf-8")
    log("[generate] filter summary:\n" + report)
    log(f"[generate] {len(examples)} examples (+{len(mix)} mix-in) -> {layout.sft_data}")
    return GenerateResult(
        str(layout.sft_data), len(examples), n_prompts, n_shards - skipped, skipped, report, time.perf_counter() - start
    )


def _mix_in(cfg, kept: int) -> list[SFTExample]:
    if not cfg.data.mix_in or cfg.data.mix_in_ratio <= 0:
        return []
    return read_records(cfg.data.mix_in, SFTExample)[: round(kept * cfg.data.mix_in_ratio)]
