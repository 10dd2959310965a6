"""The optimizer side of a Ray Train worker, shared by SFT and RL.

Two learners share one interface: DeepSpeed ZeRO (stages 0-3) and plain DDP.
A caller hands ``train_step`` one closure per micro-batch; each closure runs
the forward pass on the model it is given and returns the loss to
backpropagate, already scaled by the caller. Both learners then average
gradients over the workers (DeepSpeed's own division by the accumulation
steps is switched off), clip, and take one optimizer step. So the same
closures give the same update under either strategy.

    learner = build_learner(settings, model, world_size)
    grad_norm = learner.train_step([lambda m: loss_of(m, batch) for batch in batches], lr)

Each learner saves and loads its own weights and optimizer state
(``save_state``/``load_state``); the RNG state helpers live here too. The
checkpoints around them, and the rest of a Ray Train run, are
:mod:`rayalign.training`.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist

from rayalign.errors import RayalignError
from rayalign.models import autocast
from rayalign.rollout.weight_sync import layout

MicroStep = Callable[[Any], torch.Tensor]
"""model -> scalar loss to backpropagate for one micro-batch."""


@dataclass(frozen=True)
class LearnerSettings:
    """What a learner needs, whichever stage it trains."""

    strategy: Literal["deepspeed", "ddp"]
    zero_stage: int
    lr: float
    weight_decay: float
    max_grad_norm: float
    micro_batch_size: int
    grad_accum: int
    """Micro-batches per optimizer step (each ``train_step`` gets exactly this many)."""
    lora: bool = False
    use_gpu: bool = False
    bf16: bool = False
    """bfloat16 mixed precision: on GPU DeepSpeed's bf16 mode, elsewhere (DDP, and DeepSpeed on CPU)
    bfloat16 autocast over float32 weights."""


class ResumeError(RayalignError):
    """A checkpoint that does not match this run (other data or world size)."""


def global_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum over every worker (the values themselves without torch.distributed)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _set_lr(optimizer, lr: float) -> None:
    # Schedules are functions of the step alone, so a resumed run needs no
    # scheduler state and a longer run re-shapes them cleanly.
    for group in optimizer.param_groups:
        group["lr"] = lr


def save_hf(module, tokenizer, directory: Path, lora: bool) -> None:
    """Full weights in HF format, LoRA merged into a copy (training goes on)."""
    model = copy.deepcopy(module).merge_and_unload() if lora else module
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


class DeepSpeedLearner:
    """A DeepSpeed engine; ZeRO partitions optimizer state (1), gradients (2), weights (3)."""

    def __init__(self, s: LearnerSettings, model, world_size: int):
        import deepspeed  # heavy; only DeepSpeed workers pay for it

        # Plain gloo collectives instead of the shm_comm op, which JIT-compiles for ~75 s on CPU.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.settings, self.world_size = s, world_size
        ds_config = {
            "train_micro_batch_size_per_gpu": s.micro_batch_size,
            "gradient_accumulation_steps": s.grad_accum,
            "train_batch_size": s.micro_batch_size * s.grad_accum * world_size,
            "gradient_clipping": s.max_grad_norm,
            "zero_optimization": {"stage": s.zero_stage},
            # torch's AdamW: DeepSpeed's fused/CPU Adam would JIT-compile an op first.
            "optimizer": {"type": "AdamW", "params": {"lr": s.lr, "weight_decay": s.weight_decay, "torch_adam": True}},
            "bf16": {"enabled": s.bf16 and s.use_gpu},  # on CPU: autocast in train_step
            "steps_per_print": 1 << 30,
        }
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
        )
        self.model = self.engine
        self.module = self.engine.module
        self.device = self.engine.device

    def train_step(self, micro_steps: Sequence[MicroStep], lr: float) -> float:
        """Backward each micro-step's loss as is, then step; returns the grad norm."""
        _check_micro_steps(micro_steps, self.settings.grad_accum)
        _set_lr(self.engine.optimizer, lr)
        cpu_bf16 = self.settings.bf16 and not self.settings.use_gpu
        for micro_step in micro_steps:
            with autocast(self.device, cpu_bf16):
                loss = micro_step(self.engine)
            self.engine.backward(loss, scale_wrt_gas=False)
            self.engine.step()  # DeepSpeed steps the optimizer on the last micro-batch only
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save_state(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag="state", save_latest=False)

    def load_state(self, directory: Path, rank: int) -> None:
        path, _ = self.engine.load_checkpoint(str(directory / "deepspeed"), tag="state")
        if path is None:
            raise ResumeError(f"no DeepSpeed state in checkpoint {directory}")

    def weight_layout(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """What a sync sends: every weight, or with LoRA the adapters only."""
        return module_layout(self.module, trainable_only=self.settings.lora)

    def weights(self, names: Sequence[str]):
        """A context giving the named tensors, whole; with ZeRO-3 every rank enters it (they gather)."""
        return module_tensors(self.module, names, gather=self.settings.zero_stage == 3)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight, HF-named, on CPU; with ZeRO-3 every rank must call it."""
        if self.settings.zero_stage == 3:
            import deepspeed

            params = list(self.module.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return _cpu_state(self.module)
        return _cpu_state(self.module)

    def export(self, directory: Path, tokenizer, rank: int) -> None:
        if self.settings.zero_stage == 3:
            import deepspeed

            # Every rank takes part in gathering the partitioned weights; rank 0 writes them.
            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                if rank == 0:
                    save_hf(self.module, tokenizer, directory, self.settings.lora)
        elif rank == 0:
            save_hf(self.module, tokenizer, directory, self.settings.lora)


class DDPLearner:
    """torch DDP (through Ray Train's prepare_model) with AdamW and gradient clipping."""

    def __init__(self, s: LearnerSettings, model, world_size: int):
        import ray.train.torch

        self.settings, self.world_size = s, world_size
        self.model = ray.train.torch.prepare_model(model)
        self.module = getattr(self.model, "module", self.model)
        self.device = next(self.module.parameters()).device
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)

    def train_step(self, micro_steps: Sequence[MicroStep], lr: float) -> float:
        """Backward each micro-step's loss as is, all-reduce once, clip, step; returns the grad norm."""
        _check_micro_steps(micro_steps, self.settings.grad_accum)
        _set_lr(self.optimizer, lr)
        for i, micro_step in enumerate(micro_steps):
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            last = i == len(micro_steps) - 1
            sync = nullcontext() if last or self.model is self.module else self.model.no_sync()
            with sync:
                with autocast(self.device, self.settings.bf16):
                    loss = micro_step(self.model)
                loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save_state(self, directory: Path, rank: int) -> None:
        if rank == 0:
            state = {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}
            torch.save(state, directory / "ddp_state.pt")

    def load_state(self, directory: Path, rank: int) -> None:
        state = torch.load(directory / "ddp_state.pt", map_location=self.device, weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def weight_layout(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """What a sync sends: every weight, or with LoRA the adapters only."""
        return module_layout(self.module, trainable_only=self.settings.lora)

    def weights(self, names: Sequence[str]):
        """A context giving the named tensors (the live parameters, no copy)."""
        return module_tensors(self.module, names, gather=False)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return _cpu_state(self.module)

    def export(self, directory: Path, tokenizer, rank: int) -> None:
        if rank == 0:
            save_hf(self.module, tokenizer, directory, self.settings.lora)


Learner = DeepSpeedLearner | DDPLearner


def build_learner(settings: LearnerSettings, model, world_size: int) -> Learner:
    cls = DeepSpeedLearner if settings.strategy == "deepspeed" else DDPLearner
    return cls(settings, model, world_size)


def _check_micro_steps(micro_steps: Sequence[MicroStep], grad_accum: int) -> None:
    if len(micro_steps) != grad_accum:
        raise ValueError(f"train_step: got {len(micro_steps)} micro-batches, the learner was built for {grad_accum}")


def module_layout(module, *, trainable_only: bool = False) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype, full shape)`` of each state-dict tensor, HF-named, in order (ZeRO-3: ``ds_shape``);
    ``trainable_only``: only parameters that train (a LoRA model's adapters). A tied tensor goes under
    each of its names: vLLM's in-place reload restores a tied ``lm_head`` that receives nothing to its
    old weights (measured: the sampler's log-probs then drift from the learner's)."""
    state = module.state_dict(keep_vars=True)
    if trainable_only:
        state = {n: t for n, t in state.items() if isinstance(t, torch.nn.Parameter) and t.requires_grad}
    return layout(state)


@contextmanager
def module_tensors(module, names: Sequence[str], *, gather: bool):
    """The named state-dict tensors; ``gather``: ZeRO-3 parameters gathered whole while inside."""
    state = module.state_dict(keep_vars=True)
    picked = {name: state[name] for name in names}
    if not gather:
        yield picked
        return
    import deepspeed

    params = list({id(t): t for t in picked.values() if isinstance(t, torch.nn.Parameter)}.values())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield picked


def _cpu_state(module) -> dict[str, torch.Tensor]:
    # A copy even on CPU: DeepSpeed's parameters are views into one flat buffer,
    # and pickling a view writes its whole storage (hundreds of times over).
    # (LoRA would need merge_and_unload first; RL trains full weights.)
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# ------------------------------------------------------------ RNG state


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
