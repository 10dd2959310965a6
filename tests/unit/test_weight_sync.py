"""Collective weight sync: the bucket plan by hand, and real gloo broadcasts
between threads and processes of this machine."""

import contextlib
import multiprocessing
import threading

import pytest
import torch

from rayalign.rollout.weight_sync import (
    GroupAddress,
    aligned,
    create_store,
    join_group,
    layout,
    lora_module,
    merge_lora,
    plan_buckets,
    receive,
    send,
    total_bytes,
)


def test_plan_buckets_by_hand():
    tensors = [
        ("a", "float32", (3,)),  # 12 bytes at 0
        ("b", "bfloat16", (5,)),  # 10 bytes at aligned(12) = 16 -> ends at 26
        ("c", "float32", (10,)),  # 40 bytes: 32 + 40 > 48 -> a new bucket, at 0
        ("d", "float32", (2, 2)),  # 16 bytes: 48 + 16 > 48 -> a new bucket
        ("e", "float32", (20,)),  # 80 bytes, larger than a bucket: one of its own
        ("f", "int64", (1,)),  # 8 bytes: after e would be 80 + 8 > 48 -> new bucket
    ]
    buckets = plan_buckets(tensors, bucket_bytes=48)
    assert [b.names for b in buckets] == [("a", "b"), ("c",), ("d",), ("e",), ("f",)]
    assert [b.nbytes for b in buckets] == [26, 40, 16, 80, 8]
    assert [(s.offset, s.nbytes) for s in buckets[0].slots] == [(0, 12), (16, 10)]
    assert total_bytes(buckets) == 26 + 40 + 16 + 80 + 8


def test_plan_buckets_fills_a_bucket_exactly():
    tensors = [("a", "float32", (4,)), ("b", "float32", (4,)), ("c", "float32", (4,))]  # 16 bytes each
    assert [b.names for b in plan_buckets(tensors, bucket_bytes=32)] == [("a", "b"), ("c",)]
    assert aligned(33) == 48
    with pytest.raises(ValueError, match="positive"):
        plan_buckets(tensors, bucket_bytes=0)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "embed.weight": torch.randn(7, 5),
        "norm.weight": torch.randn(5).to(torch.bfloat16),
        "layer.0.q.weight": torch.randn(5, 5),
        "layer.0.bias": torch.randn(3).double(),
        "step": torch.tensor([3], dtype=torch.int64),
    }


@contextlib.contextmanager
def _pick(state, names):
    yield {n: state[n] for n in names}


def _two_ranks(receiver):
    """Rank 0 in this thread, ``receiver(group)`` as rank 1 in another; returns its result."""
    store = create_store("127.0.0.1", 2, timeout_s=30)
    address = GroupAddress("127.0.0.1", store.port, 2, "gloo", "test", timeout_s=30)
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=receiver(join_group(address, 1))))
    thread.start()
    group = join_group(address, 0, store)
    return group, thread, out


def test_a_broadcast_arrives_whole_in_every_dtype():
    state = _state()
    buckets = plan_buckets(layout(state), bucket_bytes=64)
    assert len(buckets) > 2
    group, thread, out = _two_ranks(lambda g: [(n, t.clone()) for n, t in receive(g, buckets)])
    assert send(group, buckets, lambda names: _pick(state, names)) == total_bytes(buckets)
    thread.join(30)
    got = dict(out["result"])
    assert list(got) == list(state)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor)


def test_a_receiver_that_stops_early_still_takes_every_bucket():
    state = _state()
    buckets = plan_buckets(layout(state), bucket_bytes=64)

    def failing_loader(group):
        weights = receive(group, buckets)
        try:
            next(weights)  # the loader fails after one tensor
        finally:
            weights.close()
        return "closed"

    group, thread, out = _two_ranks(failing_loader)
    send(group, buckets, lambda names: _pick(state, names))  # would hang if the receiver stopped listening
    thread.join(30)
    assert out["result"] == "closed"


MIB = 1 << 20


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(key))
    return int(line.split()[1]) / 1024


def _receive_and_measure(port, buckets, queue):
    """A sampler: its parameters allocated, then one bucketed receive copied into them;
    the peak resident memory above where it stood before the receive."""
    params = {s.name: torch.zeros(s.shape) for b in buckets for s in b.slots}
    group = join_group(GroupAddress("127.0.0.1", port, 2, "gloo", "mem", timeout_s=60), 1)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident size
    before = _status_mib("VmRSS")
    with torch.no_grad():
        for name, tensor in receive(group, buckets):
            params[name].copy_(tensor)
    queue.put((_status_mib("VmHWM") - before, float(sum(p.sum() for p in params.values()))))


def _receiver_peak_mib(state, bucket_mib: int) -> float:
    buckets = plan_buckets(layout(state), bucket_bytes=bucket_mib * MIB)
    store = create_store("127.0.0.1", 2, timeout_s=60)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_receive_and_measure, args=(store.port, buckets, queue))
    child.start()
    group = join_group(GroupAddress("127.0.0.1", store.port, 2, "gloo", "mem", timeout_s=60), 0, store)
    send(group, buckets, lambda names: _pick(state, names))
    extra, checksum = queue.get(timeout=120)
    child.join(60)
    assert checksum == sum(float(t[0]) * t.numel() for t in state.values())
    return extra


def test_bucketed_sync_keeps_the_receivers_extra_memory_near_two_buckets(monkeypatch):
    # Live memory: freed buffers leave the process at once (glibc would otherwise keep
    # freed 16 MiB blocks in its heap for reuse, which hides what is alive).
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    state = {f"layer.{i}.weight": torch.full((MIB,), float(i)) for i in range(64)}  # 64 x 4 MiB
    state_mib = sum(t.nbytes for t in state.values()) / MIB
    peaks = {bucket: _receiver_peak_mib(state, bucket) for bucket in (8, 32, 256)}
    print(f"state {state_mib:.0f} MiB; receiver's peak extra MiB per bucket MiB: {peaks}")
    # The bucket arriving and the one whose last tensor the loader still holds, plus a few MiB.
    assert peaks[8] < 2 * 8 + 8 and peaks[32] < 2 * 32 + 8
    assert peaks[256] > state_mib  # one bucket holding everything: the whole state again


def test_merge_lora_by_hand():
    # W0 (2x3), A (r=1 x 3), B (2 x 1), scale 2: W = W0 + 2 * B @ A.
    base = {"model.l.q_proj.weight": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
    a = torch.tensor([[1.0, 2.0, 3.0]])
    b = torch.tensor([[1.0], [-1.0]])
    adapters = [
        ("base_model.model.model.l.q_proj.lora_A.default.weight", a),
        ("base_model.model.model.l.q_proj.lora_B.default.weight", b),
    ]
    merged = dict(merge_lora(iter(adapters), base, scale=2.0))
    assert merged["model.l.q_proj.weight"].tolist() == [[3.0, 4.0, 6.0], [-2.0, -3.0, -6.0]]
    assert base["model.l.q_proj.weight"].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]  # the base stays
    with pytest.raises(ValueError, match="without their pair"):
        list(merge_lora(iter(adapters[:1]), base, scale=2.0))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        lora_module("model.l.q_proj.weight")
