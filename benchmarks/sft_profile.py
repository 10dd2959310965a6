"""Where an SFT step's time goes, on one learner process: data, forward, loss, backward, optimizer.

The rows and batches are those rayalign's SFT learner trains on (the same
tokenizer, chat template, packing and padding-free decision as
``rayalign.sft``), on the examples ``benchmarks/sft_throughput.py`` uses. Two
learners over the same steps, in one process (torch.distributed gloo, world
size 1):

- torch: the model and ``torch.optim.AdamW`` (foreach), gradient clipping;
  what one worker costs with nothing around it (the baseline);
- DeepSpeed ZeRO-2: rayalign's default learner (``rayalign.learners``), whose
  backward also copies gradients into ZeRO's flat partitions and whose step
  clips and updates the fp32 partition.

Each runs with logits for every position (what a causal LM's forward gives
and what TRL's SFTTrainer trains on), and with logits only where a label is
scored (``logits_to_keep``: the language-model head and the cross-entropy
skip prompt tokens). The first step is a warm-up and not counted.

Then what data parallelism adds per optimizer step on this machine: the
gradient all-reduce of ``--workers`` processes x 1 thread over gloo (what
DDP does, in its default 25 MB buckets, and as one flat buffer), on a
buffer the size of the model's fp32 gradients, against the measured step.

    python benchmarks/sft_profile.py [--model builtin:smollm2-135m-instruct] [--threads 2]
        [--steps 4] [--batch 4] [--max-seq-len 256] [--examples 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402
from sft_throughput import _examples  # noqa: E402

PHASES = ("data", "forward", "loss", "backward", "optimizer")


def _batches(args):
    """Each step's batch, as rayalign's SFT learner forms it on one worker."""
    from rayalign.models import load_tokenizer
    from rayalign.sft.data import build_rows, prefer_flat, step_rows

    tokenizer = load_tokenizer(args.model)
    rows, _ = build_rows(tokenizer, _examples(args.examples), args.max_seq_len, packing=True)
    out = []
    for step in range(args.steps + 1):
        (indices,) = step_rows(len(rows), step, world_size=1, rank=0, micro_batch_size=args.batch, grad_accum=1, seed=0)
        picked = [rows[i] for i in indices]
        out.append((picked, prefer_flat([len(r) for r in picked], 3906.0), tokenizer.pad_token_id))
    return out


def _forward_loss(model, batch, keep: bool, timings: dict):
    from rayalign.sft.data import loss_sum, scored_positions

    positions = scored_positions(batch.labels) if keep else None
    extra = {} if positions is None else {"logits_to_keep": positions}
    tick = time.perf_counter()
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False, **extra)
    timings["forward"] += time.perf_counter() - tick
    tick = time.perf_counter()
    total, count = loss_sum(out.logits, batch.labels, positions)
    timings["loss"] += time.perf_counter() - tick
    return total / count


def _step_torch(state, batch, keep: bool, timings: dict) -> None:
    import torch

    model, optimizer = state
    loss = _forward_loss(model, batch, keep, timings)
    tick = time.perf_counter()
    loss.backward()
    timings["backward"] += time.perf_counter() - tick
    tick = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    timings["optimizer"] += time.perf_counter() - tick


def _step_deepspeed(engine, batch, keep: bool, timings: dict) -> None:
    loss = _forward_loss(engine, batch, keep, timings)
    tick = time.perf_counter()
    engine.backward(loss)
    timings["backward"] += time.perf_counter() - tick
    tick = time.perf_counter()
    engine.step()
    timings["optimizer"] += time.perf_counter() - tick


def _learner(kind: str, model, args):
    import torch

    if kind == "torch":
        return torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    from rayalign.learners import DeepSpeedLearner, LearnerSettings

    settings = LearnerSettings("deepspeed", 2, 1e-5, 0.0, 1.0, args.batch, 1)
    return DeepSpeedLearner(settings, model, 1).engine


def profile(kind: str, keep: bool, batches, args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from rayalign.models import resolve_model
    from rayalign.sft.data import collate

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    model.config.use_cache = False
    model.train()
    learner = _learner(kind, model, args)
    state, step = ((model, learner), _step_torch) if kind == "torch" else (learner, _step_deepspeed)
    per_step, tokens = [], 0
    for i, (rows, flat, pad_id) in enumerate(batches):
        timings = dict.fromkeys(PHASES, 0.0)
        tick = time.perf_counter()
        batch = collate(rows, pad_id, flat=flat)
        timings["data"] = time.perf_counter() - tick
        step(state, batch, keep, timings)
        if i:  # step 0 warms up
            per_step.append(timings)
            tokens += batch.num_tokens
    means = {p: statistics.mean(t[p] for t in per_step) for p in PHASES}
    seconds = sum(sum(t.values()) for t in per_step)
    return {"phases": means, "step_s": seconds / len(per_step), "tokens_per_s": tokens / seconds}


def _allreduce_worker(rank: int, world: int, numel: int, bucket_mib: float, reps: int, port: int, out: str) -> None:
    """One gloo rank: all-reduce a ``numel`` fp32 buffer in buckets, ``reps`` times after a warm-up."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    flat = torch.ones(numel, dtype=torch.float32)
    step = max(1, int(bucket_mib * 2**20) // 4) if bucket_mib > 0 else numel
    buckets = flat.split(step)
    for b in buckets:  # warm-up: connections and buffers
        dist.all_reduce(b)
    dist.barrier()
    tick = time.perf_counter()
    for _ in range(reps):
        for b in buckets:
            dist.all_reduce(b)
    seconds = (time.perf_counter() - tick) / reps
    if rank == 0:
        Path(out).write_text(str(seconds))
    dist.destroy_process_group()


def allreduce_seconds(numel: int, workers: int, bucket_mib: float, reps: int = 3, port: int = 29541) -> float:
    """Seconds per all-reduce of ``numel`` fp32 values over ``workers`` fresh processes x 1 thread."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "seconds")
        mp.spawn(_allreduce_worker, args=(workers, numel, bucket_mib, reps, port, out), nprocs=workers)
        return float(Path(out).read_text())


def allreduce_rows(numel: int, workers: int, step_s: float) -> list[list]:
    rows = []
    for i, (label, mib) in enumerate((("DDP's 25 MB buckets", 25.0), ("one flat buffer", 0.0))):
        seconds = allreduce_seconds(numel, workers, mib, port=29541 + i)
        gb = numel * 4 / 1e9
        rows.append([f"{workers} processes x 1 thread, {label}", f"{gb:.2f}", seconds, gb / seconds, seconds / step_s])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="rows per optimizer step")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="data-parallel processes for the all-reduce (0: skip)")
    args = p.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533", "RANK": "0", "WORLD_SIZE": "1"})
    os.environ.update({"LOCAL_RANK": "0", "DS_ACCELERATOR": "cpu"})
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=0, world_size=1)
    batches = _batches(args)
    runs = [(k, keep) for k in ("torch", "deepspeed") for keep in (False, True)]
    results = {run: profile(*run, batches, args) for run in runs}
    base = results[("torch", False)]["tokens_per_s"]
    rows = []
    for (kind, keep), r in results.items():
        name = f"{'torch AdamW' if kind == 'torch' else 'DeepSpeed ZeRO-2'}, logits {'scored only' if keep else 'all'}"
        rows.append(
            [
                name,
                *(r["phases"][p] for p in PHASES),
                r["step_s"],
                r["tokens_per_s"],
                f"{r['tokens_per_s'] / base:.2f}x",
            ]
        )
    print(
        f"\nSFT step profile, {args.model}, {args.steps} steps (after 1 warm-up) x {args.batch} packed rows of <= "
        f"{args.max_seq_len} tokens, fp32, 1 process x {torch.get_num_threads()} threads (read back), CPU; seconds"
    )
    print(table(["learner", *PHASES, "step s", "tok/s", "vs torch, all logits"], rows))
    dist.destroy_process_group()
    if args.workers > 1:
        from transformers import AutoConfig, AutoModelForCausalLM

        from rayalign.models import resolve_model

        with torch.device("meta"):
            numel = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(resolve_model(args.model))
            ).num_parameters()
        step_s = results[("torch", True)]["step_s"]
        print(
            f"\nGradient all-reduce per optimizer step ({numel / 1e6:.0f}M fp32 gradients, gloo), against the "
            f"torch step above ({step_s:.2f} s, logits scored only, {torch.get_num_threads()} threads)"
        )
        print(
            table(
                ["all-reduce", "GB", "seconds", "GB/s", "share of the step"],
                allreduce_rows(numel, args.workers, step_s),
            )
        )
    print(f"\nmachine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
