"""The per-worker SFT loop that Ray Train runs, one flat list of phases per step:

    rows -> batches -> forward/backward (x grad_accum) -> optimizer step -> log -> checkpoint

The learner (DeepSpeed ZeRO stages 0-3, or DDP) comes from rayalign.learners;
the job, checkpoints and their restoration from rayalign.training.
Loss is the mean over every completion token of the optimizer step, on all
workers together (as TRL does with ``num_items_in_batch``), so a worker with
longer examples does not count less.

A checkpoint (every ``sft.learner.checkpoint_every`` steps and at the end) holds:

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
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import ray
import torch

from rayalign.head import check_plain_head, decoder_output, head_loss_sum, no_logits, output_head
from rayalign.learners import build_learner, global_sum
from rayalign.models import load_tokenizer, with_lora
from rayalign.sft.data import (
    IGNORE_INDEX,
    Batch,
    RowStats,
    collate,
    loss_sum,
    lr_factor,
    next_token_labels,
    prefer_flat,
    scored_positions,
    step_rows,
)
from rayalign.training import (
    Progress,
    StepReporter,
    TrainingJob,
    checkpoint_if_due,
    due,
    learner_settings,
    rank0_tracker,
    restore,
    setup_worker,
    timed,
)


@dataclass(frozen=True)
class SFTJob(TrainingJob):
    """What every worker needs, built once by the driver; ``fingerprint`` hashes the packed rows."""

    stage: ClassVar[str] = "sft"
    data_name: ClassVar[str] = "SFT data"
    data_keys: ClassVar[str] = "the same examples and sft.max_seq_len/packing"

    rows: Any
    """ObjectRef to the list of packed rows (rayalign.sft.data.Row)."""
    num_rows: int
    steps_per_epoch: int
    data: RowStats
    """What became of the examples (logged to the run summary)."""

    def resume_problem(self, saved: TrainState, checkpoint: str) -> str | None:
        if saved.steps_per_epoch == self.steps_per_epoch:
            return None
        return (
            f"checkpoint {checkpoint} was made with {saved.steps_per_epoch} steps per epoch, now "
            f"{self.steps_per_epoch}: keep sft.micro_batch_size and sft.grad_accum "
            "to resume at the same data position"
        )


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
class SFTSummary:
    """What a run has done, reported with each checkpoint; the driver builds SFTResult from it."""

    step: int
    """Optimizer steps done in total (including those before a resume)."""
    start_step: int
    """Step this call started from."""
    loss: float
    """Loss of the last step."""
    losses: tuple[float, ...]
    """Loss of each step this call trained (steps start_step+1 .. step)."""
    tokens_per_s: float
    """Non-padding tokens per second of steps, all workers together (checkpoints excluded)."""
    tokens_seen: int
    call: str = ""
    """The driver call that reported it (:attr:`rayalign.training.TrainingJob.call`)."""


@dataclass(frozen=True)
class StepStats:
    loss: float
    """Mean completion-token loss of the step, all workers together."""
    tokens: int
    """Non-padding tokens of the step, all workers together."""
    grad_norm: float


# ---------------------------------------------------------------- learning


def _loss_tokens(batches: list[Batch]) -> int:
    return sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (logits at chosen positions only)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a LoRA wrapper
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def _micro_step(batch: Batch, scale: float, device, totals: list[float], *, keep_logits: bool = True, chunk: int = 0):
    """The closure a learner runs for one micro-batch; records the unscaled loss sum. With ``keep_logits``
    the forward computes logits only where a label is scored (the prompts' are never used); with
    ``chunk`` the LM head and its loss run ``chunk`` scored rows at a time (:mod:`rayalign.head`)."""

    def run(model) -> torch.Tensor:
        labels = batch.labels.to(device)
        inputs = {"input_ids": batch.input_ids.to(device), "position_ids": batch.position_ids.to(device)}
        if chunk:
            total = _chunked_loss_sum(model, inputs, labels, chunk, keep_logits=keep_logits)
        else:
            positions = scored_positions(labels) if keep_logits else None
            extra = {} if positions is None else {"logits_to_keep": positions}
            total, _ = loss_sum(model(**inputs, use_cache=False, **extra).logits, labels, positions)
        totals.append(float(total.detach()))
        return total * scale

    return run


def _chunked_loss_sum(model, inputs: dict, labels: torch.Tensor, chunk: int, *, keep_logits: bool) -> torch.Tensor:
    """The summed loss from the decoder's hidden states and the head's weight, ``chunk`` rows at a time."""
    none = no_logits(labels.device) if keep_logits else {}
    hidden = decoder_output(model, lambda: model(**inputs, use_cache=False, **none))
    shifted = next_token_labels(labels)
    scored = shifted != IGNORE_INDEX
    return head_loss_sum(hidden[scored], output_head(model).weight, shifted[scored], chunk)


def build_model(job: SFTJob):
    """The starting weights in float32 (mixed precision is the learner's business), LoRA-wrapped if asked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=torch.float32)
    model.config.use_cache = False
    s = job.cfg.sft
    return with_lora(model, s.lora_rank, s.lora_alpha) if s.lora_rank > 0 else model


def context_scale(model) -> float:
    """Linear-layer cost of a token over its attention cost per context token.

    Forward FLOPs per token: ~2 per weight for the linear layers, ~4 * hidden
    * layers per token attended to (scores and weighted sum).
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return model.num_parameters() / (2 * config.hidden_size * config.num_hidden_layers)


# --------------------------------------------------------------- the loop


def _step(
    learner, rows, job: SFTJob, step: int, rank: int, world_size: int, lr: float, ctx_scale: float, keep_logits: bool
) -> StepStats:
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
    micro_steps = [
        _micro_step(b, scale, learner.device, totals, keep_logits=keep_logits, chunk=s.loss_chunk) for b in batches
    ]
    grad_norm = learner.train_step(micro_steps, lr)
    (loss_sum_all,) = global_sum([sum(totals)], learner.device)
    return StepStats(loss_sum_all / loss_tokens, int(tokens), grad_norm)


@dataclass
class _Progress(Progress):
    """Progress counting tokens, with each step's loss."""

    losses: list[float] = field(default_factory=list)

    def add(self, stats: StepStats, seconds: float) -> None:
        self.losses.append(stats.loss)
        self.seconds += seconds
        self.items += stats.tokens

    def summary(self, state: TrainState) -> SFTSummary:
        return SFTSummary(
            step=state.step,
            start_step=self.start_step,
            call=self.call,
            loss=self.losses[-1],
            losses=tuple(self.losses),
            tokens_per_s=self.rate(),
            tokens_seen=state.tokens_seen,
        )


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function: ``config = {"job": SFTJob}``."""
    job: SFTJob = config["job"]
    s = job.cfg.sft
    rank, world_size = setup_worker(job)
    rows = ray.get(job.rows)
    model = build_model(job)
    ctx_scale, keep_logits = context_scale(model), keeps_logits(model)
    if s.loss_chunk:
        check_plain_head(model, "sft.loss_chunk")  # say so before training
    settings = learner_settings(job, s.grad_accum, weight_decay=s.weight_decay, lora=s.lora_rank > 0)
    learner = build_learner(settings, model, world_size)
    fresh = TrainState(0, 0, job.fingerprint, world_size, job.steps_per_epoch)
    state = restore(learner, job, rank, world_size, fresh)
    tokenizer = load_tokenizer(job.model_path) if rank == 0 else None
    progress, reporter = _Progress(state.step, job.call), StepReporter(config, rank)
    with rank0_tracker(job, rank) as tracker:
        tracker.summary(
            {**{f"sft/data_{k}": v for k, v in asdict(job.data).items()}, "sft/torch_threads": torch.get_num_threads()}
        )
        for step in range(state.step, job.total_steps):
            lr = s.lr * lr_factor(step, s.warmup_steps, job.total_steps)
            timings: dict[str, float] = {}
            with timed(timings, "step"):
                stats = _step(learner, rows, job, step, rank, world_size, lr, ctx_scale, keep_logits)
            state = dataclasses.replace(state, step=step + 1, tokens_seen=state.tokens_seen + stats.tokens)
            progress.add(stats, timings["step"])
            reporter.step(state.step, job.total_steps, {"loss": stats.loss, "tok/s": stats.tokens / timings["step"]})
            if due(state.step, s.log_every, job.total_steps):
                tracker.log(_metrics(lr, stats, state, timings["step"]), step=state.step)
            checkpoint_if_due(job, learner, tokenizer, state, rank, tracker, progress)
        if progress.losses:
            tracker.summary(
                {
                    "sft/final_loss": progress.losses[-1],
                    "sft/steps": state.step,
                    "sft/train_tokens_per_s": progress.rate(),
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
