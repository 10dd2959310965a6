"""``rayalign run``: the stages in order, as one entrypoint (``ray job submit -- rayalign run CONFIG``).

    generate -> sft -> rl -> eval

Each stage resumes as it does alone: stage 1 reuses finished shards, SFT and
RL go on from their last checkpoints, eval reuses saved answers. On top of
that, a stage that already finished in the run directory with the same
settings is skipped outright: ``<run_dir>/pipeline.json`` records each
finished stage with a fingerprint of the config sections it reads and of the
stages before it (``--force`` runs it again, still resuming). RL starts from
``<run_dir>/sft/model`` unless ``rl.init`` is set; eval evaluates
``eval.targets`` (base, sft, rl) with ``eval.spec_in_context``.
``--STAGE:key=value`` overrides one stage only, e.g. ``--rl:judge.k=1``.

Each stage command (``rayalign sft`` ...) runs through the same stage functions
here, which hold the glue around a driver and its summary block. This module
calls every stage driver, so only the CLI imports it (tests/unit/test_walls.py);
like the CLI it imports a driver where it runs it, so that every stage's config
is checked in a second, before Ray, torch and vLLM load.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rayalign.config import Config, load_config, to_dict
from rayalign.datafiles import write_atomic
from rayalign.errors import ConfigError, RayalignError
from rayalign.eval.targets import EvalTarget, add_spec_in_context, parse_checkpoints
from rayalign.runs import RunLayout

STAGES = ("generate", "sft", "rl", "eval")
RECORD_FILE = "pipeline.json"
SECTIONS: dict[str, tuple[str, ...]] = {
    "generate": ("spec", "model", "data", "generate", "rollout", "judge", "filter"),
    "sft": ("model", "data", "sft"),
    "rl": ("spec", "model", "data", "rollout", "judge", "rl"),
    "eval": ("spec", "model", "rollout", "judge", "eval"),
}
"""The config sections whose values a stage's outputs depend on (its fingerprint)."""
_SCOPED = re.compile(r"^--([a-z0-9_]+):(.+)$")


@dataclass(frozen=True)
class StageSummary:
    """What a stage did: a headline and a few labelled rows, printed as a short block."""

    stage: str
    headline: str
    """e.g. ``SFT done in 95s``."""
    rows: tuple[tuple[str, str], ...] = ()
    """(label, text): the key numbers, what it wrote and where."""
    seconds: float = 0.0

    def block(self) -> str:
        """
        >>> print(StageSummary("sft", "SFT done in 9s", (("steps", "0->4"), ("model", "runs/x/sft/model"))).block())
        SFT done in 9s
          steps  0->4
          model  runs/x/sft/model
        """
        width = max((len(label) for label, _ in self.rows), default=0)
        return "\n".join([self.headline, *(f"  {label.ljust(width)}  {text}" for label, text in self.rows)])


# ------------------------------------------------------------------ parsing


def parse_stages(text: str) -> tuple[str, ...]:
    """A comma-separated stage list, in pipeline order whatever order it is written in.

    >>> parse_stages("eval, sft")
    ('sft', 'eval')
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise ConfigError(f"unknown stage {', '.join(unknown) or '(none)'}; stages: {','.join(STAGES)}", field="stages")
    return tuple(s for s in STAGES if s in names)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(overrides for every stage, ``--STAGE:key=value`` overrides by stage, as ``--key=value``).

    >>> split_overrides(["--tracking.run_dir=r", "--rl:judge.k=1"])
    (['--tracking.run_dir=r'], {'rl': ['--judge.k=1']})
    """
    common, scoped = [], {}
    for arg in overrides:
        match = _SCOPED.match(arg)
        if not match:
            common.append(arg)
            continue
        if match[1] not in STAGES:
            raise ConfigError(f"{arg!r}: no stage {match[1]!r}; stages: {', '.join(STAGES)}", file="command line")
        scoped.setdefault(match[1], []).append("--" + match[2])
    return common, scoped


# ------------------------------------------------------------------ the stages


def generate_stage(cfg: Config, *, full: bool = False) -> StageSummary:
    """Stage 1: SFT data from spec-conditioned samples the judge kept (``full``: every prompt again)."""
    from rayalign.stage1.generate import run_generate

    r = run_generate(cfg, full=full)
    layout = RunLayout.of(cfg)
    headline = f"stage 1 done in {r.seconds:.0f}s: {r.kept} SFT examples from {r.prompts} prompts"
    rows = (
        ("shards", f"{r.shards_done} written, {r.shards_skipped} untouched"),
        ("data", r.examples_path),
        ("report", str(layout.filter_report)),
    )
    return StageSummary("generate", headline, rows, r.seconds)


def sft_stage(cfg: Config, *, data: str | None = None, restart: bool = False) -> StageSummary:
    """SFT on stage 1's data (or ``data``), resuming from the last checkpoint unless ``restart``."""
    layout = RunLayout.of(cfg)
    data = data or str(layout.sft_data)
    if not Path(data).exists():
        raise RayalignError(f"no SFT data at {data}: run the generate stage first, or pass --data")
    from rayalign.sft.train import run_sft

    start = time.perf_counter()
    r = run_sft(cfg, data, layout.stage("sft"), resume=not restart)
    seconds = time.perf_counter() - start
    trained = f"{r.tokens_per_s:.0f} tok/s" if r.losses else "already complete: nothing trained"
    rows = (
        ("steps", f"{r.start_step}->{r.steps}, final loss {r.final_loss:.4f}, {trained}"),
        ("model", str(r.model_dir)),
        ("checkpoint", str(r.checkpoint)),
        ("metrics", str(layout.root / "metrics.jsonl")),
    )
    return StageSummary("sft", f"SFT done in {seconds:.0f}s", rows, seconds)


def rl_stage(cfg: Config, *, restart: bool = False, after_sft: bool = False) -> StageSummary:
    """RL from ``rl.init`` (``after_sft``: from this run's SFT model when unset), else ``model.policy``."""
    layout = RunLayout.of(cfg)
    if after_sft and not cfg.rl.init:
        cfg = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, init=str(layout.model("sft"))))
    if cfg.rl.init and not Path(cfg.rl.init).exists() and ":" not in cfg.rl.init:
        raise RayalignError(f"rl.init: no model at {cfg.rl.init}: run the sft stage first, or point rl.init elsewhere")
    from rayalign.rl.train import run_rl

    start = time.perf_counter()
    r = run_rl(cfg, layout.stage("rl"), resume=not restart)
    seconds = time.perf_counter() - start
    rewards = " ".join(f"{x:.3f}" for x in r.rewards) or "none (already complete)"
    kls = " ".join(f"{x:.4f}" for x in r.kls) or "-"
    rows = (
        ("steps", f"{r.start_step}->{r.steps}, prompts seen {r.prompts_seen}, policy version {r.policy_version}"),
        ("reward", f"per step: {rewards}; KL {kls}"),
        ("speed", f"{r.completions_per_s:.2f} completions/s"),
        ("model", str(r.model_dir)),
        ("metrics", str(layout.root / "metrics.jsonl")),
    )
    return StageSummary("rl", f"RL done in {seconds:.0f}s", rows, seconds)


def eval_targets(cfg: Config, checkpoints: str | None = None, spec_in_context: str | None = None) -> list[EvalTarget]:
    """``checkpoints`` (name=source,...) with ``spec_in_context``, else ``eval.targets`` with
    ``eval.spec_in_context``; base, sft and rl name model.policy and this run's models."""
    if checkpoints:
        targets, names = parse_checkpoints(checkpoints), (spec_in_context or "").split(",")
    else:
        targets = parse_checkpoints(",".join(_target_item(cfg, t) for t in cfg.eval.targets))
        names = cfg.eval.spec_in_context if spec_in_context is None else spec_in_context.split(",")
    return add_spec_in_context(targets, [n.strip() for n in names if n.strip()])


def _target_item(cfg: Config, name: str) -> str:
    if "=" in name or name.endswith("+spec"):
        return name
    layout = RunLayout.of(cfg)
    sources = {"base": cfg.model.policy, "sft": str(layout.model("sft")), "rl": str(layout.model("rl"))}
    if name not in sources:
        raise ConfigError(f"{name!r}: expected base, sft, rl or name=source", field="eval.targets")
    if name != "base" and not Path(sources[name]).is_dir():
        raise ConfigError(f"{name}: no model at {sources[name]}: run the {name} stage first", field="eval.targets")
    return f"{name}={sources[name]}"


def eval_stage(
    cfg: Config,
    targets: Sequence[EvalTarget] | None = None,
    *,
    benchmarks: Sequence[str] = (),
    limit: int | None = None,
    out: str | None = None,
    enforce_format: bool = False,
) -> StageSummary:
    """Eval of ``targets`` (default: :func:`eval_targets`) on ``benchmarks`` (default: eval.benchmarks)."""
    from rayalign.eval.run import run_eval
    from rayalign.tracking import start_tracking

    out_dir = Path(out) if out else RunLayout.of(cfg).eval
    tracker = start_tracking(cfg.tracking, "eval", to_dict(cfg), run_dir=out_dir)
    try:
        r = run_eval(
            cfg,
            eval_targets(cfg) if targets is None else targets,
            list(benchmarks) or list(cfg.eval.benchmarks),
            out_dir,
            limit=cfg.eval.limit if limit is None else limit,
            enforce_format=enforce_format,
            tracker=tracker,
        )
    finally:
        tracker.finish()
    rows = [("scored by", f"judge: {r.judge}" if r.judge else "string match only (no judge)")]
    for t in r.targets:
        headline = ", ".join(f"{m.name} {m.value:.2f}" for m in t.metrics if "/" not in m.name)
        rows.append((t.target.name, headline or "no metric"))
    rows.append(("report", r.report_path))
    headline = f"eval done in {r.seconds:.0f}s: {len(r.targets)} targets x {r.prompts} prompts"
    return StageSummary("eval", headline, tuple(rows), r.seconds)


RUNNERS: dict[str, Callable[[Config], StageSummary]] = {
    "generate": generate_stage,
    "sft": sft_stage,
    "rl": lambda cfg: rl_stage(cfg, after_sft=True),
    "eval": eval_stage,
}


# ------------------------------------------------------------------ the pipeline


def stage_outputs(cfg: Config, stage: str) -> Path:
    """The file a finished stage leaves (its absence means: run it)."""
    layout = RunLayout.of(cfg)
    return {
        "generate": layout.sft_data,
        "sft": layout.model("sft") / "config.json",
        "rl": layout.model("rl") / "config.json",
        "eval": layout.eval / "report.md",
    }[stage]


def fingerprint(cfg: Config, stage: str, records: Mapping[str, dict]) -> str:
    """A hash of the config sections ``stage`` reads and of the earlier stages' records: a stage
    after one that ran again runs again."""
    sections = {name: dataclasses.asdict(getattr(cfg, name)) for name in SECTIONS[stage]}
    earlier = [records[s] for s in STAGES[: STAGES.index(stage)] if s in records]
    payload = json.dumps([stage, sections, [(r["fingerprint"], r["run"]) for r in earlier]], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_records(run_dir: Path) -> dict[str, dict]:
    """``<run_dir>/pipeline.json``: stage -> {fingerprint, run (an id per run), finished, headline, rows, seconds}."""
    path = run_dir / RECORD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_pipeline(
    config: str | Path | None,
    overrides: Sequence[str],
    stages: Sequence[str] = STAGES,
    *,
    force: bool = False,
    runners: Mapping[str, Callable[[Config], StageSummary]] = RUNNERS,
    log: Callable[[str], None] = print,
) -> list[StageSummary]:
    """Run ``stages`` in order; every stage's config is loaded and validated before the first starts."""
    common, scoped = split_overrides(overrides)
    configs = {stage: load_config(config, [*common, *scoped.get(stage, [])]) for stage in stages}
    run_dir = Path(load_config(config, common).tracking.run_dir)
    records, done = read_records(run_dir), []
    for stage in stages:
        cfg = configs[stage]
        key = fingerprint(cfg, stage, records)
        record = records.get(stage)
        if not force and record and record["fingerprint"] == key and stage_outputs(cfg, stage).exists():
            log(f"[run] {stage}: finished {record['finished']} with these settings, skipped (--force runs it again)")
            done.append(StageSummary(stage, record["headline"], tuple(map(tuple, record["rows"])), 0.0))
            continue
        log(f"[run] {stage} ({len(done) + 1}/{len(stages)})")
        summary = runners[stage](cfg)
        log(summary.block())
        finished = datetime.datetime.now().isoformat(timespec="seconds")
        records[stage] = {"fingerprint": key, "run": uuid.uuid4().hex[:12], "finished": finished}
        records[stage] |= dataclasses.asdict(summary)
        write_atomic(run_dir / RECORD_FILE, [json.dumps(records, indent=2)])
        done.append(summary)
    return done
