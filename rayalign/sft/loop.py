"""The per-worker SFT loop that Ray Train runs, one flat list of phases per step:

    rows -> batches -> forward/backward (x grad_accum) -> optimizer step -> log -> checkpoint

The learner (DeepSpeed ZeRO stages 0-3, or DDP) comes from rayalign.learners.
Loss is the mean over every completion token of the optimizer step, on all
workers together (as TRL does with ``num_items_in_batch``), so a worker with
longer examples does not count less.

A checkpoint (every ``sft.checkpoint_every`` steps and at the end) holds:

    model/                      Hugging Face weights + tokenizer (LoRA merged), from rank 0
    state.json                  step, tokens seen, data fingerprint, world size, from rank 0
    rng_rank<r>.pt              each worker's RNG state
    deepspeed/state/...         DeepSpeed's own files (each rank writes its optimizer shard), or
    ddp_state.pt                weights + optimizer state (DDP, rank 0)

Every rank reports its directory and Ray Train merges them into one
``step-NNNNNN`` folder; a restarted run finds it with ``get_checkpoint()``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from rayalign.config import Config
from rayalign.learners import (
    LearnerSettings,
    ResumeError,
    build_learner,
    global_sum,
    load_checkpoint_state,
    rank0_tracker,
    report_checkpoint,
    setup_worker,
)
from rayalign.models import load_tokenizer, torch_dtype
from rayalign.sft.data import (
    IGNORE_INDEX,
    Batch,
    RowStats,
    collate,
    loss_sum,
    lr_factor,
    prefer_flat,
    step_rows,
)


@dataclass(frozen=True)
class SFTJob:
    """What every worker needs, built once by the driver."""

    cfg: Config
    model_path: str
    """Absolute local HF directory of the starting weights."""
    rows: Any
    """ObjectRef to the list of packed rows (rayalign.sft.data.Row)."""
    num_rows: int
    fingerprint: str
    """Hash of the rows; a checkpoint made on other data is refused."""
    total_steps: int
    steps_per_epoch: int
    pad_id: int
    run_dir: str
    """Absolute directory of the tracker's metrics.jsonl."""
    use_gpu: bool
    data: RowStats
    """What became of the examples (logged to the run summary)."""


@dataclass(frozen=True)
class TrainState:
    """Where training stands after ``step`` optimizer steps (saved in state.json)."""

    step: int = 0
    tokens_seen: int = 0
    """Non-padding tokens trained on so far, all workers together."""
    fingerprint: str = ""
    world_size: int = 0
    steps_per_epoch: int = 0


@dataclass(frozen=True)
class StepStats:
    loss: float
    """Mean completion-token loss of the step, all workers together."""
    tokens: int
    """Non-padding tokens of the step, all workers together."""
    grad_norm: float


# ---------------------------------------------------------------- learning


def learner_settings(job: SFTJob) -> LearnerSettings:
    s = job.cfg.sft
    return LearnerSettings(
        strategy=s.strategy,
        zero_stage=s.zero_stage,
        lr=s.lr,
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm,
        micro_batch_size=s.micro_batch_size,
        grad_accum=s.grad_accum,
        lora=s.lora_rank > 0,
        use_gpu=job.use_gpu,
        bf16=job.use_gpu and torch_dtype(job.cfg.model.dtype, "cuda") == torch.bfloat16,
    )


def _loss_tokens(batches: list[Batch]) -> int:
    return sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def _micro_step(batch: Batch, scale: float, device, totals: list[float]):
    """The closure a learner runs for one micro-batch; records the unscaled loss sum."""

    def run(model) -> torch.Tensor:
        out = model(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device), use_cache=False)
        total, _ = loss_sum(out.logits, batch.labels.to(device))
        totals.append(float(total.detach()))
        return total * scale

    return run


def build_model(job: SFTJob):
    """The starting weights in float32 (mixed precision is the learner's business), LoRA-wrapped if asked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=torch.float32)
    model.config.use_cache = False
    s = job.cfg.sft
    if s.lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=s.lora_rank, lora_alpha=s.lora_alpha, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def context_scale(model) -> float:
    """Linear-layer cost of a token over its attention cost per context token.

    Forward FLOPs per token: ~2 per weight for the linear layers, ~4 * hidden
    * layers per token attended to (scores and weighted sum).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return model.num_parameters() / (2 * config.hidden_size * config.num_hidden_layers)


# ------------------------------------------------------------ checkpoints


def restore(learner, job: SFTJob, rank: int, world_size: int) -> TrainState:
    """The state of the latest checkpoint of this run (weights, optimizer, RNG), or a fresh start."""
    checkpoint = ray.train.get_checkpoint()
    fresh = TrainState(0, 0, job.fingerprint, world_size, job.steps_per_epoch)
    if checkpoint is None:
        return fresh
    with checkpoint.as_directory() as tmp:
        directory = Path(tmp)
        state = TrainState(**json.loads((directory / "state.json").read_text()))
        if state.fingerprint != job.fingerprint:
            raise ResumeError(
                f"checkpoint {directory.name} was made on other SFT data (rows {state.fingerprint}, "
                f"now {job.fingerprint}); resume with the same examples and sft.max_seq_len/packing, or resume=False"
            )
        if state.steps_per_epoch != job.steps_per_epoch:
            raise ResumeError(
                f"checkpoint {directory.name} was made with {state.steps_per_epoch} steps per epoch, now "
                f"{job.steps_per_epoch}: keep sft.micro_batch_size and sft.grad_accum "
                "to resume at the same data position"
            )
        if state.world_size != world_size:
            raise ResumeError(
                f"checkpoint {directory.name} was made by {state.world_size} workers; "
                f"sft.num_workers is {world_size} (ZeRO optimizer shards cannot be re-split)"
            )
        load_checkpoint_state(learner, directory, rank)
    return state


# --------------------------------------------------------------- the loop


def _step(learner, rows, job: SFTJob, step: int, rank: int, world_size: int, lr: float, ctx_scale: float) -> StepStats:
    s = job.cfg.sft
    plan = step_rows(
        job.num_rows,
        step,
        world_size=world_size,
        rank=rank,
        micro_batch_size=s.micro_batch_size,
        grad_accum=s.grad_accum,
        seed=job.cfg.data.seed,
    )
    batches = []
    for indices in plan:
        picked = [rows[i] for i in indices]
        batches.append(collate(picked, job.pad_id, flat=prefer_flat([len(r) for r in picked], ctx_scale)))
    loss_tokens, tokens = global_sum([_loss_tokens(batches), sum(b.num_tokens for b in batches)], learner.device)
    # Mean over every loss token of the step on all workers; learners average workers.
    scale, totals = world_size / loss_tokens, []
    grad_norm = learner.train_step([_micro_step(b, scale, learner.device, totals) for b in batches], lr)
    (loss_sum_all,) = global_sum([sum(totals)], learner.device)
    return StepStats(loss_sum_all / loss_tokens, int(tokens), grad_norm)


@dataclass
class _Progress:
    """What this call has trained (a resumed run starts at ``start_step``)."""

    start_step: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    def add(self, stats: StepStats, seconds: float) -> None:
        self.losses.append(stats.loss)
        self.seconds += seconds
        self.tokens += stats.tokens

    def report(self, state: TrainState) -> dict:
        """The metrics sent with a checkpoint; the driver builds SFTResult from them."""
        return dict(
            step=state.step,
            start_step=self.start_step,
            loss=self.losses[-1],
            losses=list(self.losses),
            tokens_per_s=self.tokens / max(self.seconds, 1e-9),
            tokens_seen=state.tokens_seen,
        )


def _due(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function: ``config = {"job": SFTJob}``."""
    job: SFTJob = config["job"]
    s = job.cfg.sft
    rank, world_size = setup_worker(job.cfg.model.threads, job.use_gpu)
    rows = ray.get(job.rows)
    model = build_model(job)
    ctx_scale = context_scale(model)
    learner = build_learner(learner_settings(job), model, world_size)
    state = restore(learner, job, rank, world_size)
    tokenizer = load_tokenizer(job.model_path) if rank == 0 else None
    progress = _Progress(state.step)
    with rank0_tracker(job.cfg, "sft", job.run_dir, rank) as tracker:
        tracker.summary({f"sft/data_{k}": v for k, v in asdict(job.data).items()})
        for step in range(state.step, job.total_steps):
            lr = s.lr * lr_factor(step, s.warmup_steps, job.total_steps)
            began = time.perf_counter()
            stats = _step(learner, rows, job, step, rank, world_size, lr, ctx_scale)
            seconds = time.perf_counter() - began
            state = dataclasses.replace(state, step=step + 1, tokens_seen=state.tokens_seen + stats.tokens)
            progress.add(stats, seconds)
            if _due(state.step, s.log_every, job.total_steps):
                tracker.log(_metrics(lr, stats, state, seconds), step=state.step)
            if _due(state.step, s.checkpoint_every, job.total_steps):
                began = time.perf_counter()
                report_checkpoint(learner, tokenizer, asdict(state), state.step, rank, progress.report(state))
                tracker.log({"timing/checkpoint": time.perf_counter() - began}, step=state.step)
        if progress.losses:
            tracker.summary(
                {
                    "sft/final_loss": progress.losses[-1],
                    "sft/steps": state.step,
                    "sft/train_tokens_per_s": progress.tokens / max(progress.seconds, 1e-9),
                }
            )


def _metrics(lr: float, stats: StepStats, state: TrainState, seconds: float) -> dict[str, float]:
    return {
        "sft/loss": stats.loss,
        "sft/lr": lr,
        "sft/grad_norm": stats.grad_norm,
        "sft/tokens_per_s": stats.tokens / seconds,
        "sft/tokens_seen": state.tokens_seen,
        "sft/epoch": state.step / state.steps_per_epoch,
        "timing/step": seconds,
    }
