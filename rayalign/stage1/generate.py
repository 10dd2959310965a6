"""Stage 1, end to end: spec-conditioned generation, judge filtering, SFT data.

    prompts -> spec(category) + instructions -> n samples on sampler actors
            -> parse -> judge (reasoning shown, label hint) k runs, min
            -> best per prompt above threshold -> SFT example WITHOUT the spec

Ray Data drives it: one row per shard of prompts; the rollout module's sampler
actor pool maps shards to rollouts; judge tasks call the Serve judge, filter,
and write the shard's decisions atomically. A re-run skips finished shards, so
a killed run resumes without losing or repeating a prompt.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from dataclasses import dataclass

from rayalign.cluster import init_ray
from rayalign.datafiles import read_records, write_records
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
from rayalign.rollout.format import split_completion
from rayalign.rollout.pool import PoolResources
from rayalign.runs import RunLayout
from rayalign.spec import load_spec
from rayalign.stage1 import filter as sample_filter
from rayalign.stage1.categories import categorise, needs_categories
from rayalign.stage1.conditioning import conditioned_prompt, load_generation_templates, load_steer_templates
from rayalign.stage1.prompts import training_prompts
from rayalign.types import JudgeRequest, Prompt, SamplingSettings, SFTExample, from_dict, to_dict


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


def run_generate(cfg, *, log=print) -> GenerateResult:
    """Stage 1 on ``cfg``; resumes from finished shards under ``tracking.run_dir``."""
    start = time.perf_counter()
    if cfg.generate.close_reasoning and cfg.generate.steer not in ("prefix", "both"):
        raise ConfigError(
            "needs generate.steer prefix or both (the opening it closes)", field="generate.close_reasoning"
        )
    spec = load_spec(cfg.spec.path)
    layout = RunLayout.of(cfg)
    train, held, prompt_summary = training_prompts(cfg, spec)
    write_records(layout.prompts_eval, held)
    log(f"[generate] prompts: {prompt_summary}; training on {len(train)}")
    size = cfg.data.shard_size
    n_shards = (len(train) + size - 1) // size
    todo = [i for i in range(n_shards) if not layout.shard(i).exists()]
    if todo or needs_categories(cfg, train):
        init_ray(cfg.cluster)
        with judge_session(cfg, JudgeSettings.from_config(cfg)) as client:
            train = _train_prompts(cfg, train, client, log)
            shards = [train[i : i + size] for i in range(0, len(train), size)]
            log(f"[generate] {len(shards)} shards of <= {size} prompts; {len(shards) - len(todo)} already done")
            if todo:
                _run_shards(cfg, spec, shards, todo, log)
    else:
        write_records(layout.prompts_train, train)
    return _collect(cfg, n_shards, n_shards - len(todo), len(train), start, log)


def _train_prompts(cfg, train: list[Prompt], client: JudgeClient, log) -> list[Prompt]:
    train = categorise(cfg, train, client, log)
    write_records(RunLayout.of(cfg).prompts_train, train)
    return train


def _run_shards(cfg, spec, shards: list[list[Prompt]], todo: list[int], log) -> None:
    g = cfg.generate
    templates = load_generation_templates(cfg.spec.path)
    steer = load_steer_templates(cfg.spec.path) if g.steer != "none" else None
    teacher = g.model or cfg.model.policy
    hashes = (templates.hash, steer.hash) if steer else (templates.hash,)
    filter_settings = _FilterSettings(
        layout=RunLayout(RunLayout.of(cfg).root.resolve()),
        min_score=cfg.filter.min_score,
        keep_per_prompt=cfg.filter.keep_per_prompt,
        provenance=sample_filter.Provenance(teacher, spec.hash, "+".join(hashes)),
        timeout_s=cfg.judge.timeout_s,
        timeout_retries=cfg.judge.timeout_retries,
    )
    conditioned = [
        [conditioned_prompt(spec, templates, steer, g.steer, p, close_reasoning=g.close_reasoning) for p in shards[i]]
        for i in todo
    ]
    originals = [encode_prompts(shards[i]) for i in todo]
    resources = PoolResources.from_config(cfg)
    resources = PoolResources(min(resources.num_workers, len(todo)), resources.cpus, resources.gpus, resources.resource)
    log(f"[generate] sampling with {teacher} (steering: {g.steer}{', reasoning closed' if g.close_reasoning else ''})")
    ds = sample_dataset(
        prompts_dataset(conditioned, shard=todo, originals=originals),
        EngineConfig.from_config(cfg, model=teacher),
        resources,
        _sampling(cfg),
    ).map_batches(
        # One judging task at a time: each client keeps the service's whole capacity in flight.
        _judge_and_write,
        fn_kwargs={"settings": filter_settings},
        batch_size=1,
        num_cpus=0,
        concurrency=1,
    )
    _log_shards(cfg, ds.iter_rows(), log)


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


def _log_shards(cfg, rows, log) -> None:
    """Each shard as it is written, then the judge's losses over all of them (loudly above the limit)."""
    losses = JudgeLosses()
    for row in rows:
        done = json.loads(row["summary"])
        losses += from_dict(JudgeLosses, done["losses"])
        log(f"[generate] shard {done['shard']} written: {done['kept']} examples kept")
    log(f"[generate] judge: {losses.results} verdicts, {losses.lost} unscorable ({losses.retried} retried)")
    warning = losses_warning(losses, cfg.judge.max_unscorable_share, what="[generate] judge")
    if warning:
        log(warning)


def _judge_and_write(batch: dict, settings: _FilterSettings) -> dict:
    """Ray Data task UDF: judge a shard's well-formed samples, filter, write atomically."""
    client = connect_judge(settings.timeout_s, settings.timeout_retries)
    summaries = []
    for shard, originals, conditioned, rollouts in zip(
        batch["shard"], batch["originals"], batch["prompts"], batch["rollouts"]
    ):
        prefills = {p.id: p.prefill for p in decode_prompts(conditioned)}
        decisions = _filter_shard(client, decode_prompts(originals), decode_rollouts(rollouts), prefills, settings)
        write_records(settings.layout.shard(int(shard)), decisions)
        kept = sum(len(d.kept) for d in decisions)
        summaries.append(json.dumps({"shard": int(shard), "kept": kept, "losses": to_dict(client.losses())}))
    return {"summary": summaries}


def _filter_shard(
    client: JudgeClient, prompts, rollouts, prefills: dict[str, str], settings: _FilterSettings
) -> list[sample_filter.Decision]:
    # A steered sample's reasoning starts in the prefill: the example keeps all of it.
    parsed = [(r, split_completion(prefills[r.prompt_id] + r.text, r.finish_reason)) for r in rollouts]
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
            provenance=settings.provenance,
        )
        for p in prompts
    ]


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
