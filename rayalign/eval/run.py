"""The evaluation driver: answers from several checkpoints, judged, scored and reported.

    benchmarks -> prompts (limit per benchmark, round-robin over categories)
    for each target (base, sft, rl, base+spec, ...): sampler pool -> greedy answers -> pool shut down
    every target's answers -> judge (reasoning hidden), one pass, by category
    for each target: string-match refusal + verdict -> ScoredAnswer -> summarize (bootstrap CIs)
    -> answers/<target>.jsonl, metrics.json, report.md + PNG plots

A *spec-in-context* target is the paper's no-training baseline: the model sees
the stage-1 prompt (``spec(category)`` and the instructions to reason over it)
at inference time. Every other target sees the benchmark prompt as it is.

Sampling is :mod:`rayalign.eval.sampling`, the reading and scoring of one
answer :mod:`rayalign.eval.answers`. The judge scores the final answer only
(reasoning hidden, as for RL rewards), with the dataset's expected behaviour
as its label hint.
With ``judge.cascade`` on, answers whose behaviour plainly contradicts the
expected one are decided without a judge call; the report counts them per target.
With ``eval.judge: false`` (``--judge none``) no judge starts: string match only,
and the report says which scorer produced each column.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rayalign.cluster import init_ray
from rayalign.config import Config
from rayalign.datafiles import write_atomic
from rayalign.errors import EvalError
from rayalign.eval.answers import NOT_JUDGED, EvalAnswer, decided_behavior, score_answer
from rayalign.eval.behaviour import BehaviourRow, Observed, behaviour_rows
from rayalign.eval.metrics import MetricResult, summarize
from rayalign.eval.report import TargetMetrics, judge_label, log_samples, write_report
from rayalign.eval.sampling import EvalContext, Sampled, file_name, sample_target
from rayalign.eval.selection import load_eval_prompts
from rayalign.eval.targets import EvalTarget
from rayalign.judge.cascade import cascade_count
from rayalign.judge.client import JudgeClient, losses_warning
from rayalign.judge.service import judge_session
from rayalign.models import check_model_source
from rayalign.progress import ProgressLine
from rayalign.rollout.engine import sampling_settings
from rayalign.runs import RunLayout
from rayalign.spec import load_spec
from rayalign.stage1.conditioning import load_generation_templates
from rayalign.tracking import Tracker
from rayalign.types import JudgeRequest, Verdict, to_dict, to_json

# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class PhaseTimes:
    """Wall seconds of one target's phases."""

    start: float
    """Sampler actors up (engine built, weights loaded)."""
    generate: float
    metrics: float
    """Scoring, bootstrap and writing; judging is shared by all targets (EvalResult.judge_seconds)."""


@dataclass(frozen=True)
class TargetResult:
    target: EvalTarget
    metrics: tuple[MetricResult, ...]
    answers_path: str
    answers: int
    malformed: int
    """Answers whose completion was off-format (no_reasoning included)."""
    unscorable: int
    """Answers the judge could not score (their judge metrics are left out, not 0)."""
    times: PhaseTimes
    cascade: int = 0
    """Answers the judge cascade decided (behaviour mismatch) without a judge call."""
    behaviour: tuple[BehaviourRow, ...] = ()
    """What it did per benchmark and wanted behaviour (report section "Behaviour per benchmark")."""


@dataclass(frozen=True)
class EvalResult:
    targets: tuple[TargetResult, ...]
    benchmarks: tuple[str, ...]
    """Benchmark names (the prompts' sources)."""
    prompts: int
    out_dir: str
    report_path: str
    seconds: float
    judge_seconds: float
    """One judging pass over every target's answers."""
    enforce_format: bool = False
    """Whether decoding was constrained to the think/answer format."""
    judge: str = ""
    """The judge that scored (backend, model, k); empty: string match only (eval.judge false)."""


# ------------------------------------------------------------------ the driver


def run_eval(
    cfg: Config,
    targets: Sequence[EvalTarget],
    benchmarks: Sequence[str],
    out_dir: str | Path,
    *,
    limit: int = 0,
    enforce_format: bool = False,
    tracker: Tracker | None = None,
    log: Callable[[str], None] = print,
) -> EvalResult:
    """Evaluate every target on the benchmarks; write answers, metrics.json and report.md.

    Starts (or joins) Ray per ``cfg.cluster`` and the judge once (unless
    ``eval.judge`` is false); each target gets its own sampler pool, shut down
    before the next one starts; then the judge scores every answer in one pass. Decoding
    is greedy and free unless ``enforce_format`` constrains every target to the
    think/answer format (as ``rollout.enforce_format`` does in training): off
    by default, since eval measures what a model writes on its own.
    """
    start = time.perf_counter()
    if not targets:
        raise EvalError("no targets to evaluate", field="checkpoints")
    out = Path(out_dir)
    spec, templates = load_spec(cfg.spec.path), load_generation_templates(cfg.spec.path)
    names, prompts = load_eval_prompts(benchmarks, limit)
    for target in targets:  # a missing checkpoint fails here, not in a sampler after Ray is up
        check_model_source(target.model)
    log(f"[eval] {len(prompts)} prompts from {', '.join(names)}; targets: {', '.join(t.name for t in targets)}")
    init_ray(cfg.cluster)
    settings = sampling_settings(
        n=1,
        temperature=0.0,
        max_new_tokens=cfg.eval.max_new_tokens,
        seed=cfg.rollout.seed,
        enforce_format=enforce_format,
    )
    with _judge(cfg, log) as client:
        own = RunLayout.of(cfg).eval_answers  # the pipeline's eval answers, reused when --out is elsewhere
        reuse = () if own.resolve() == (out / "answers").resolve() else (own,)
        context = EvalContext(cfg, spec, templates, settings, client, out, tracker, log, reuse)
        sampled = [sample_target(context, target, prompts) for target in targets]
        verdicts, judge_s = _judge_all(context, sampled)
    results = [_score_target(context, s, v) for s, v in zip(sampled, verdicts)]
    judge = judge_label(cfg.judge, cfg.model.policy) if client else ""
    behaviour = [row for r in results for row in r.behaviour]
    report = write_report(
        [_report_row(r) for r in results], out, tracker=tracker, judge=judge or None, behaviour=behaviour
    )
    seconds = time.perf_counter() - start
    result = EvalResult(
        tuple(results), tuple(names), len(prompts), str(out), str(report), seconds, judge_s, enforce_format, judge
    )
    (out / "metrics.json").write_text(
        json.dumps(to_dict(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    log(f"[eval] done in {result.seconds:.0f}s: {report}")
    return result


@contextmanager
def _judge(cfg: Config, log) -> Iterator[JudgeClient | None]:
    """The judge on Serve for the whole eval (its losses logged at the end), or None with eval.judge false."""
    if not cfg.eval.judge:
        log("[eval] no judge (eval.judge: false): string-match scoring only")
        yield None
        return
    tick = time.perf_counter()
    with judge_session(cfg) as client:
        log(f"[eval] judge ({cfg.judge.backend}) up in {time.perf_counter() - tick:.1f}s")
        yield client
        _warn_losses(client, cfg, log)


def _warn_losses(client: JudgeClient, cfg, log) -> None:
    losses = client.losses()
    log(f"[eval] judge: {losses.results} verdicts, {losses.lost} unscorable ({losses.retried} retried after a timeout)")
    warning = losses_warning(losses, cfg.judge.max_unscorable_share, what="[eval] judge")
    if warning:
        log(warning)


def _judge_all(ctx: EvalContext, sampled: Sequence[Sampled]) -> tuple[list[list[Verdict]], float]:
    """Every target's answers judged in one pass: full dynamic batches, and
    requests of one category adjacent so they share spec(category) in the
    judge's prefix cache. The judge sees the original prompt (no spec) and the
    answer only: reasoning hidden. Without a judge every verdict is NOT_JUDGED."""
    if ctx.client is None:
        return [[NOT_JUDGED] * len(s.prompts) for s in sampled], 0.0
    tick = time.perf_counter()
    requests = [
        JudgeRequest(prompt=p, answer=c.answer, reasoning=None, request_id=f"{s.target.name}/{p.id}")
        for s in sampled
        for p, c in zip(s.prompts, s.completions)
    ]
    order = sorted(range(len(requests)), key=lambda i: (requests[i].prompt.category or "", i))
    with ProgressLine("eval judge", len(requests), unit="verdict") as line:
        judged = asyncio.run(_score_watched(ctx.client, [requests[i] for i in order], line))
    by_index = dict(zip(order, judged))
    flat = [by_index[i] for i in range(len(requests))]
    judge_s = time.perf_counter() - tick
    unscorable = sum(v.status != "ok" for v in flat)
    cascade = cascade_count(flat)
    ctx.log(
        f"[eval] judged {len(flat)} answers of {len(sampled)} targets in {judge_s:.1f}s "
        f"({unscorable} unscorable, {cascade} decided by the cascade without a judge call)"
    )
    verdicts, at = [], 0
    for s in sampled:
        verdicts.append(flat[at : at + len(s.prompts)])
        at += len(s.prompts)
    return verdicts, judge_s


async def _score_watched(client: JudgeClient, requests: Sequence[JudgeRequest], line: ProgressLine) -> list[Verdict]:
    """``client.score`` with ``line`` following the verdicts as they finish (the client counts them)."""
    before = client.losses().results
    task = asyncio.ensure_future(client.score(requests))
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        line.set(client.losses().results - before)
    return task.result()


def _score_target(ctx: EvalContext, sampled: Sampled, verdicts: Sequence[Verdict]) -> TargetResult:
    """One target's metrics (bootstrap CIs) and answers file."""
    tick = time.perf_counter()
    target, prompts, completions = sampled.target, sampled.prompts, sampled.completions
    rule_ids, style_behaviors = ctx.spec.rule_ids(), ctx.spec.style_behaviors()
    scored = [score_answer(p, c, v, rule_ids) for p, c, v in zip(prompts, completions, verdicts)]
    metrics = tuple(summarize(scored, samples=ctx.cfg.eval.bootstrap_samples, seed=ctx.cfg.rollout.seed))
    answers = [
        EvalAnswer(target.name, p.id, p.source, p.category, p.expected, c.reasoning, c.answer, c.malformed,
                   r.finish_reason, len(r.prompt_token_ids), s.refused, s.cited_rules, v,
                   decided_behavior(s.cited_rules, style_behaviors))
        for p, c, r, s, v in zip(prompts, completions, sampled.rollouts, scored, verdicts)
    ]  # fmt: skip
    path = ctx.out / "answers" / f"{file_name(target.name)}.jsonl"
    write_atomic(path, [to_json(a) for a in answers])
    if ctx.tracker is not None:
        log_samples(ctx.tracker, target.name, answers)
    metrics_s = time.perf_counter() - tick
    headline = ", ".join(f"{m.name} {m.value:.2f}" for m in metrics if "/" not in m.name)
    ctx.log(f"[eval] {target.name}: {headline or 'no metric'} (metrics in {metrics_s:.1f}s)")
    malformed = sum(c.malformed is not None for c in completions)
    unscorable = sum(v.status != "ok" for v in verdicts) if ctx.client else 0
    times = PhaseTimes(sampled.start_s, sampled.generate_s, metrics_s)
    cascade = cascade_count(verdicts)
    behaviour = behaviour_rows([_observed(a) for a in answers], samples=ctx.cfg.eval.bootstrap_samples)
    return TargetResult(
        target, metrics, str(path), len(answers), malformed, unscorable, times, cascade, tuple(behaviour)
    )


def _observed(a: EvalAnswer) -> Observed:
    judged = a.verdict.status == "ok" and a.verdict.behavior is not None
    return Observed(
        a.target,
        a.source,
        a.category,
        a.expected,
        a.refusal,
        a.malformed is None,
        a.cited_rules,
        a.verdict.behavior if judged else None,
        a.decided if a.answer else None,
    )


def _report_row(r: TargetResult) -> TargetMetrics:
    model = r.target.model + (" (spec in context)" if r.target.spec_in_context else "")
    seconds = sum(dataclasses.astuple(r.times))
    return TargetMetrics(r.target.name, r.metrics, model, r.answers, r.malformed, r.unscorable, seconds, r.cascade)
