"""The SFT driver: examples -> rows (checked here, before Ray starts) -> Ray
Train workers -> a Hugging Face model in ``<output_dir>/model``.

    result = run_sft(cfg, "runs/quickstart/sft.jsonl", "runs/quickstart/sft")
    result.model_dir  # loadable with rayalign.models.load_model(str(result.model_dir))

``<output_dir>/checkpoints/sft/`` is Ray Train's run folder. Running again
with ``resume=True`` (the default) continues from its latest checkpoint at
the same step and data position, even after the driver process was killed;
raising ``sft.max_steps`` on resume stretches the cosine schedule over the new
total. ``resume=False`` deletes those checkpoints and starts over.
For a multi-node cluster, ``output_dir`` must be on storage every node sees.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import ray

from rayalign.cluster import init_ray
from rayalign.config import Config
from rayalign.models import load_tokenizer, resolve_model
from rayalign.resource_plan import check_resource_plan
from rayalign.sft.data import (
    SFTDataError,
    build_rows,
    read_sft_examples,
    rows_fingerprint,
    steps_per_epoch,
)
from rayalign.sft.loop import SFTJob, SFTSummary, train_loop
from rayalign.training import Trained, checkpoint_storage, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTResult:
    """What one ``run_sft`` call did."""

    steps: int
    """Optimizer steps done in total (including those before a resume)."""
    start_step: int
    """Step this call started from (0, or the resumed checkpoint's step)."""
    final_loss: float
    losses: tuple[float, ...]
    """Loss of each step this call trained (steps start_step+1 .. steps)."""
    tokens_per_s: float
    """Non-padding tokens per second of training, all workers together (checkpoints excluded)."""
    checkpoint: Path
    """The latest checkpoint folder."""
    model_dir: Path
    """The final model in Hugging Face format."""

    @classmethod
    def of(cls, trained: Trained[SFTSummary]) -> SFTResult:
        """What this call did: one that found training complete started at its last step and trained nothing."""
        summary = trained.summary
        return cls(
            steps=summary.step,
            start_step=summary.start_step if trained.ran else summary.step,
            final_loss=summary.loss,
            losses=summary.losses if trained.ran else (),
            tokens_per_s=summary.tokens_per_s if trained.ran else 0.0,
            checkpoint=trained.checkpoint,
            model_dir=trained.model_dir,
        )


def _total_steps(cfg: Config, num_rows: int) -> tuple[int, int]:
    s = cfg.sft
    per_epoch = steps_per_epoch(num_rows, s.learner.num_workers * s.micro_batch_size * s.grad_accum)
    return (s.max_steps or per_epoch * s.epochs), per_epoch


def prepare_job(cfg: Config, examples_path: str | Path, run_dir: Path) -> SFTJob:
    """Read, tokenize and pack the examples on the driver, so bad data fails before Ray Train starts."""
    model_path = resolve_model(cfg.model.policy)
    tokenizer = load_tokenizer(str(model_path))
    rows, stats = build_rows(tokenizer, read_sft_examples(examples_path), cfg.sft.max_seq_len, cfg.sft.packing)
    if not rows:
        raise SFTDataError("no example left to train on", file=str(examples_path))
    if stats.truncated or stats.dropped:
        log.warning(
            "sft: %d examples cut to sft.max_seq_len=%d, %d dropped (prompt alone too long)",
            stats.truncated,
            cfg.sft.max_seq_len,
            stats.dropped,
        )
    total, per_epoch = _total_steps(cfg, len(rows))
    return SFTJob(
        cfg=cfg,
        model_path=str(Path(model_path).resolve()),
        run_dir=str(run_dir.resolve()),
        pad_id=tokenizer.pad_token_id,
        fingerprint=rows_fingerprint(rows),
        total_steps=total,
        rows=ray.put(rows),
        num_rows=len(rows),
        steps_per_epoch=per_epoch,
        data=stats,
    )


def run_sft(cfg: Config, examples_path: str | Path, output_dir: str | Path, *, resume: bool = True) -> SFTResult:
    """Fine-tune ``cfg.model.policy`` on an SFT example JSONL with Ray Train.

    Per-step metrics (``sft/loss``, ``sft/lr``, ``sft/grad_norm``,
    ``sft/tokens_per_s``, ``timing/step``) go to the tracker in
    ``cfg.tracking.run_dir``; the final model to ``<output_dir>/model``.
    A call that finds training already complete trains nothing: it returns
    start_step == steps, no losses, and the completing call's final loss and model.
    """
    check_resource_plan(cfg)  # a worker that cannot be placed would wait forever
    output_dir, storage = checkpoint_storage(output_dir, "sft", cfg.tracking.run_dir, resume=resume)
    init_ray(cfg.cluster)
    job = prepare_job(cfg, examples_path, Path(cfg.tracking.run_dir))
    return SFTResult.of(fit(train_loop, job, storage, output_dir, SFTSummary))
