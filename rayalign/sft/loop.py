"""The per-worker SFT loop that Ray Train runs, one flat list of phases per step:

    rows -> batches -> forward/backward (x grad_accum) -> optimizer step -> log -> checkpoint

Two learners share one interface: DeepSpeed ZeRO (stages 0-3) and plain DDP.
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

import copy
import dataclasses
import json
import logging
import os
import random
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from rayalign.config import Config, to_dict
from rayalign.errors import RayalignError
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
from rayalign.tracking import Tracker, start_tracking


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


class ResumeError(RayalignError):
    """A checkpoint that does not match this run (other data or world size)."""


# ---------------------------------------------------------------- learners


def _global_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _loss_tokens(batches: list[Batch]) -> int:
    return sum(int((b.labels[:, 1:] != IGNORE_INDEX).sum()) for b in batches)


def _forward_loss(model, batch: Batch, device, autocast: bool) -> torch.Tensor:
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else nullcontext()
    with ctx:
        out = model(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device), use_cache=False)
    total, _ = loss_sum(out.logits, batch.labels.to(device))
    return total


def _set_lr(optimizer, lr: float) -> None:
    # The schedule is a function of the step alone (lr_factor), so a resumed run
    # needs no scheduler state and a longer max_steps re-shapes it cleanly.
    for group in optimizer.param_groups:
        group["lr"] = lr


def _save_hf(module, tokenizer, directory: Path, lora: bool) -> None:
    """Rank 0: full weights in HF format, LoRA merged into a copy (training goes on)."""
    model = copy.deepcopy(module).merge_and_unload() if lora else module
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


class DeepSpeedLearner:
    """A DeepSpeed engine; ZeRO partitions optimizer state (1), gradients (2), weights (3)."""

    def __init__(self, job: SFTJob, model, world_size: int):
        import deepspeed  # heavy; only DeepSpeed workers pay for it

        # Plain gloo collectives instead of the shm_comm op, which JIT-compiles for ~75 s on CPU.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        s = job.cfg.sft
        self.job, self.world_size, self.lora = job, world_size, s.lora_rank > 0
        bf16 = job.use_gpu and torch_dtype(job.cfg.model.dtype, "cuda") == torch.bfloat16
        ds_config = {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            "gradient_accumulation_steps": s.grad_accum,
            "train_batch_size": s.micro_batch_size * s.grad_accum * world_size,
            "gradient_clipping": s.max_grad_norm,
            "zero_optimization": {"stage": s.zero_stage},
            # torch's AdamW: DeepSpeed's fused/CPU Adam would JIT-compile an op first.
            "optimizer": {"type": "AdamW", "params": {"lr": s.lr, "weight_decay": s.weight_decay, "torch_adam": True}},
            "bf16": {"enabled": bf16},
            "steps_per_print": 1 << 30,
        }
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
        )
        self.device = self.engine.device

    def train_step(self, batches: list[Batch], global_loss_tokens: int, lr: float) -> tuple[float, float]:
        """(summed loss of this worker, grad norm). DeepSpeed divides by grad_accum and averages workers."""
        _set_lr(self.engine.optimizer, lr)
        scale = self.world_size * len(batches) / global_loss_tokens
        local = 0.0
        for batch in batches:
            total = _forward_loss(self.engine, batch, self.device, autocast=False)
            self.engine.backward(total * scale)
            self.engine.step()
            local += float(total.detach())
        norm = self.engine.get_global_grad_norm()
        return local, float(norm) if norm is not None else float("nan")

    def save_state(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load_state(self, directory: Path, rank: int) -> None:
        path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state")
        if path is None:
            raise ResumeError(f"no DeepSpeed state in checkpoint {directory}")

    def export(self, directory: Path, tokenizer, rank: int) -> None:
        module = self.engine.module
        if self.job.cfg.sft.zero_stage == 3:
            import deepspeed

            # Every rank takes part in gathering the partitioned weights; rank 0 writes them.
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if rank == 0:
                    _save_hf(module, tokenizer, directory, self.lora)
        elif rank == 0:
            _save_hf(module, tokenizer, directory, self.lora)


class DDPLearner:
    """torch DDP (through Ray Train's prepare_model) with AdamW and gradient clipping."""

    def __init__(self, job: SFTJob, model, world_size: int):
        s = job.cfg.sft
        self.job, self.world_size, self.lora = job, world_size, s.lora_rank > 0
        self.autocast = job.use_gpu and torch_dtype(job.cfg.model.dtype, "cuda") == torch.bfloat16
        self.model = ray.train.torch.prepare_model(model)
        self.module = getattr(self.model, "module", self.model)
        self.device = next(self.module.parameters()).device
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)

    def train_step(self, batches: list[Batch], global_loss_tokens: int, lr: float) -> tuple[float, float]:
        """(summed loss of this worker, grad norm before clipping). DDP averages workers."""
        _set_lr(self.optimizer, lr)
        scale = self.world_size / global_loss_tokens
        local = 0.0
        for i, batch in enumerate(batches):
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            last = i == len(batches) - 1
            sync = nullcontext() if last or self.model is self.module else self.model.no_sync()
            with sync:
                total = _forward_loss(self.model, batch, self.device, self.autocast)
                (total * scale).backward()
            local += float(total.detach())
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.job.cfg.sft.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return local, float(norm)

    def save_state(self, directory: Path, rank: int) -> None:
        if rank == 0:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, directory / "ddp_state.pt")

    def load_state(self, directory: Path, rank: int) -> None:
        state = torch.load(directory / "ddp_state.pt", map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def export(self, directory: Path, tokenizer, rank: int) -> None:
        if rank == 0:
            _save_hf(self.module, tokenizer, directory, self.lora)


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


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(learner, tokenizer, state: TrainState, rank: int, metrics: dict) -> None:
    """Every rank writes its part and reports it; Ray Train merges the parts into one folder."""
    with tempfile.TemporaryDirectory(prefix="rayalign-sft-ckpt-") as tmp:
        directory = Path(tmp)
        learner.save_state(directory, rank)
        learner.export(directory / "model", tokenizer, rank)
        torch.save(_rng_state(), directory / f"rng_rank{rank}.pt")
        if rank == 0:
            (directory / "state.json").write_text(json.dumps(asdict(state), indent=2))
        ray.train.report(
            metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step-{state.step:06d}"
        )


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
                f"{job.steps_per_epoch}: keep sft.micro_batch_size and sft.grad_accum to resume at the same data position"
            )
        if state.world_size != world_size:
            raise ResumeError(
                f"checkpoint {directory.name} was made by {state.world_size} workers; "
                f"sft.num_workers is {world_size} (ZeRO optimizer shards cannot be re-split)"
            )
        learner.load_state(directory, rank)
        _set_rng_state(torch.load(directory / f"rng_rank{rank}.pt", weights_only=False))
    return state


# --------------------------------------------------------------- the loop


@contextmanager
def _tracker(job: SFTJob, rank: int):
    """Rank 0 logs; the others get a tracker that writes nowhere."""
    tracker = (
        start_tracking(job.cfg.tracking, "sft", to_dict(job.cfg), run_dir=job.run_dir) if rank == 0 else Tracker(None)
    )
    try:
        yield tracker
    finally:
        tracker.finish()


def _step(learner, rows, job: SFTJob, step: int, rank: int, world_size: int, lr: float, ctx_scale: float) -> StepStats:
    s = job.cfg.sft
    plan = step_rows(
        job.num_rows, step, world_size=world_size, rank=rank,
        micro_batch_size=s.micro_batch_size, grad_accum=s.grad_accum, seed=job.cfg.data.seed,
    )
    batches = []
    for indices in plan:
        picked = [rows[i] for i in indices]
        batches.append(collate(picked, job.pad_id, flat=prefer_flat([len(r) for r in picked], ctx_scale)))
    loss_tokens, tokens = _global_sum([_loss_tokens(batches), sum(b.num_tokens for b in batches)], learner.device)
    local_loss, grad_norm = learner.train_step(batches, int(loss_tokens), lr)
    (loss_sum_all,) = _global_sum([local_loss], learner.device)
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
        return dict(step=state.step, start_step=self.start_step, loss=self.losses[-1], losses=list(self.losses),
                    tokens_per_s=self.tokens / max(self.seconds, 1e-9), tokens_seen=state.tokens_seen)


def _due(step: int, every: int, total: int) -> bool:
    return step % every == 0 or step == total


def _setup_worker(job: SFTJob) -> tuple[int, int]:
    """Threads and device for this worker; its (rank, world size)."""
    torch.set_num_threads(job.cfg.model.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if job.use_gpu else "cpu")
    if job.use_gpu:  # DeepSpeed takes the current CUDA device
        torch.cuda.set_device(ray.train.torch.get_device())
    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def train_loop(config: dict) -> None:
    """Ray Train's per-worker function: ``config = {"job": SFTJob}``."""
    job: SFTJob = config["job"]
    s = job.cfg.sft
    rank, world_size = _setup_worker(job)
    rows = ray.get(job.rows)
    model = build_model(job)
    ctx_scale = context_scale(model)
    learner = (DeepSpeedLearner if s.strategy == "deepspeed" else DDPLearner)(job, model, world_size)
    state = restore(learner, job, rank, world_size)
    tokenizer = load_tokenizer(job.model_path) if rank == 0 else None
    progress = _Progress(state.step)
    with _tracker(job, rank) as tracker:
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
                save_checkpoint(learner, tokenizer, state, rank, progress.report(state))
                tracker.log({"timing/checkpoint": time.perf_counter() - began}, step=state.step)
        if progress.losses:
            tracker.summary({"sft/final_loss": progress.losses[-1], "sft/steps": state.step,
                             "sft/train_tokens_per_s": progress.tokens / max(progress.seconds, 1e-9)})


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
