"""Collective weight sync: the learner's rank 0 broadcasts the policy to every
sampler engine over a process group of their own (gloo on CPU, NCCL on GPU),
in buckets of bounded size, so no full copy of the state exists anywhere.

    plan      (pure)     tensors (name, dtype, shape) -> buckets of at most bucket_bytes,
                         each tensor at an aligned byte offset in its bucket
    group                rank 0 = the learner's rank 0, ranks 1.. = every engine worker;
                         a TCPStore on the learner's node is the rendezvous
    send      (rank 0)   per bucket: pack the tensors into one byte buffer, broadcast it
    receive   (samplers) per bucket: broadcast into a buffer, yield (name, view) pairs,
                         which the engine loads while the next bucket is on its way

Extra memory: one bucket on the sender; on an engine, the bucket arriving
and the one it is still loading from (measured: 20 MiB peak for 8 MiB buckets
of a 256 MiB state, ``tests/unit/test_weight_sync.py``), plus the tensors of
a layer whose weights straddle two buckets. Torch only: the vLLM side of it is
``rayalign.rollout.vllm_backend.WeightSyncExtension``.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

ALIGN_BYTES = 16
"""Every tensor starts at a multiple of this in its bucket, so a byte slice can be viewed as any dtype."""


@dataclass(frozen=True)
class Slot:
    """Where one tensor lies in its bucket."""

    name: str
    """HF parameter name."""
    dtype: str
    """torch dtype name, e.g. float32."""
    shape: tuple[int, ...]
    offset: int
    """Byte offset in the bucket."""
    nbytes: int


@dataclass(frozen=True)
class Bucket:
    """Tensors sent in one broadcast."""

    slots: tuple[Slot, ...]
    nbytes: int
    """Buffer size: the last slot's end."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.slots)


@dataclass(frozen=True)
class GroupAddress:
    """How an engine worker joins the weight-sync group."""

    host: str
    port: int
    world_size: int
    backend: str
    """gloo (CPU tensors) or nccl (CUDA tensors)."""
    name: str
    """Unique per group generation (a rebuilt group gets a new name)."""
    timeout_s: float = 600.0


def dtype_size(dtype: str) -> int:
    """Bytes per element of a torch dtype name.

    >>> dtype_size("float32"), dtype_size("bfloat16")
    (4, 2)
    """
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()


def aligned(n: int, align: int = ALIGN_BYTES) -> int:
    """``n`` rounded up to a multiple of ``align``.

    >>> aligned(0), aligned(1), aligned(16), aligned(17)
    (0, 16, 16, 32)
    """
    return -(-n // align) * align


def plan_buckets(
    tensors: Sequence[tuple[str, str, tuple[int, ...]]], bucket_bytes: int, align: int = ALIGN_BYTES
) -> tuple[Bucket, ...]:
    """Cut ``(name, dtype, shape)`` tensors, in order, into buckets of at most
    ``bucket_bytes``; a tensor larger than that gets a bucket of its own.

    Order is kept (an engine loads a layer once all its tensors arrived, so
    tensors of one layer stay close together).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[Bucket] = []
    slots: list[Slot] = []
    end = 0
    for name, dtype, shape in tensors:
        nbytes = math.prod(shape) * dtype_size(dtype)
        start = aligned(end, align)
        if slots and start + nbytes > bucket_bytes:
            buckets.append(Bucket(tuple(slots), end))
            slots, start = [], 0
        slots.append(Slot(name, dtype, tuple(shape), start, nbytes))
        end = start + nbytes
    if slots:
        buckets.append(Bucket(tuple(slots), end))
    return tuple(buckets)


def layout(state: Mapping[str, torch.Tensor]) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, dtype, full shape)`` of each tensor of a state dict, in its order (a ZeRO-3 partition:
    its ``ds_shape``)."""
    return [
        (name, str(t.dtype).removeprefix("torch."), tuple(getattr(t, "ds_shape", t.shape))) for name, t in state.items()
    ]


def total_bytes(buckets: Sequence[Bucket]) -> int:
    return sum(b.nbytes for b in buckets)


# ------------------------------------------------------------ LoRA: adapters only


@dataclass(frozen=True)
class LoraSync:
    """The broadcast carries only LoRA adapters (peft names); each engine merges them into
    its base weights, W = W0 + scale * B @ A, and loads the merged layers."""

    scale: float
    """lora_alpha / rank."""


LORA_PREFIX = "base_model.model."


def lora_module(name: str) -> tuple[str, str]:
    """(HF module name, A or B) of a peft adapter tensor.

    >>> lora_module("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight")
    ('model.layers.0.self_attn.q_proj', 'A')
    """
    stem, sep, rest = name.removeprefix(LORA_PREFIX).partition(".lora_")
    if not sep or rest[:1] not in ("A", "B"):
        raise ValueError(f"not a LoRA adapter tensor: {name}")
    return stem, rest[:1]


def merge_lora(
    adapters: Iterator[tuple[str, torch.Tensor]], base: Mapping[str, torch.Tensor], scale: float
) -> Iterator[tuple[str, torch.Tensor]]:
    """Merged ``<module>.weight`` for each module once both its A (r, in) and B (out, r) arrived:
    ``base[<module>.weight] + scale * B @ A`` (the base itself is left as it is)."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in adapters:
        module, kind = lora_module(name)
        parts = pending.setdefault(module, {})
        parts[kind] = tensor
        if len(parts) == 2:
            del pending[module]
            weight = base[f"{module}.weight"]
            delta = (parts["B"].to(torch.float32) @ parts["A"].to(torch.float32)) * scale
            yield f"{module}.weight", (weight.to(torch.float32) + delta).to(weight.dtype)
    if pending:
        raise ValueError(f"LoRA adapters without their pair: {sorted(pending)[:3]}")


def load_base_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face model directory's safetensors files, on CPU; the last directory
    read is kept (an engine merges every sync's adapters into the same base weights)."""
    return _base_weights(str(Path(model_dir).resolve()))


@functools.lru_cache(maxsize=1)
def _base_weights(model_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}: LoRA sync merges into the base weights read there")
    return {name: t for f in files for name, t in load_file(f).items()}


def received(
    group, buckets: Sequence[Bucket], device, lora: LoraSync | None, model_dir: str | Path
) -> Iterator[tuple[str, torch.Tensor]]:
    """What an engine loads from one broadcast: the tensors as sent, or, for adapters, the layers
    merged into the base weights of ``model_dir`` (the engine's starting model)."""
    weights = receive(group, buckets, device)
    if lora is None:
        return weights
    return _closing(merge_lora(weights, load_base_weights(model_dir), lora.scale), weights)


def _closing(outer: Iterator, inner) -> Iterator:
    """``outer``, closing ``inner`` (the receive) however ``outer`` ends."""
    try:
        yield from outer
    finally:
        inner.close()


# ------------------------------------------------------------ the group


def create_store(host: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """The rendezvous, on rank 0's node, on a free port (``store.port``)."""
    return dist.TCPStore(
        host, 0, world_size, is_master=True, timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=False
    )


def join_group(address: GroupAddress, rank: int, store: dist.Store | None = None):
    """This process's member of the group (blocks until every rank has joined).

    Rank 0 passes the store it created; the others connect to it.
    """
    timeout = datetime.timedelta(seconds=address.timeout_s)
    if store is None:
        store = dist.TCPStore(address.host, address.port, address.world_size, is_master=False, timeout=timeout)
    prefixed = dist.PrefixStore(f"rayalign-weights/{address.name}", store)
    if address.backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, address.world_size, timeout)
    if address.backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, address.world_size, options)
    raise ValueError(f"unknown weight-sync backend {address.backend!r} (gloo or nccl)")


# ------------------------------------------------------------ send and receive


def send(
    group,
    buckets: Sequence[Bucket],
    tensors_for: Callable[[Sequence[str]], AbstractContextManager[Mapping[str, torch.Tensor]]],
    device: torch.device | str = "cpu",
) -> int:
    """Broadcast every bucket from rank 0; ``tensors_for(names)`` yields the
    named tensors while a bucket is packed (a ZeRO-3 learner gathers them
    there). Returns the bytes sent."""
    for bucket in buckets:
        buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
        with tensors_for(bucket.names) as tensors, torch.no_grad():
            for slot in bucket.slots:
                flat = tensors[slot.name].detach().reshape(-1).view(torch.uint8)
                buffer[slot.offset : slot.offset + slot.nbytes].copy_(flat)
        group.broadcast(buffer, 0).wait()
    return total_bytes(buckets)


def receive(group, buckets: Sequence[Bucket], device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor broadcast by rank 0, bucket by bucket.

    The tensors are views of their bucket's buffer. Closed early (the loader
    failed: close the iterator), it still receives the remaining buckets, so
    the group stays in step and the sender does not hang.
    """
    for i, bucket in enumerate(buckets):
        buffer = torch.empty(bucket.nbytes, dtype=torch.uint8, device=device)
        group.broadcast(buffer, 0).wait()
        try:
            for slot in bucket.slots:
                view = buffer[slot.offset : slot.offset + slot.nbytes].view(getattr(torch, slot.dtype))
                yield slot.name, view.view(slot.shape)
        except GeneratorExit:
            for rest in buckets[i + 1 :]:
                group.broadcast(torch.empty(rest.nbytes, dtype=torch.uint8, device=device), 0).wait()
            raise
        buffer = view = None  # freed before the next bucket, unless the loader still holds its tensors
