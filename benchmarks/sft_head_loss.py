"""SFT with the LM head and its loss in chunks (``sft.loss_chunk``) against all rows at once:
peak memory and time of one learner step, same device, batch, threads and precision.

A step is what the SFT learner runs for a micro-batch (``rayalign.sft.loop._micro_step``: a
forward, the loss over the scored rows, backward), then gradient clipping and an AdamW step.
Each row runs in a fresh process: one warm-up step, then the mean of ``--steps`` timed steps.
Memory is the process's peak resident set on CPU (weights, AdamW state and the step's
activations together, so differences between rows are the step's), or the peak CUDA memory
allocated on GPU. Weights are random with a real model's shapes (``--arch``); the large-vocabulary
shapes are where chunking matters. The ratios are against ``--loss-chunk 0`` measured in the same run.

    python benchmarks/sft_head_loss.py [--device cpu|cuda] [--arch gemma3-270m] [--chunks 0,1024,4096]
        [--batch 4] [--seq-len 768] [--steps 2] [--threads 2] [--precision float32|bf16-autocast]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ARCHS, random_model, run_on_threads, table  # noqa: E402


def _batch(vocab: int, batch: int, seq_len: int):
    """``batch`` rows of ``seq_len`` tokens, each two packed examples whose first quarter is prompt."""
    import torch

    from rayalign.sft.data import IGNORE_INDEX, Batch

    g = torch.Generator().manual_seed(0)
    half = seq_len // 2
    ids = torch.randint(3, vocab, (batch, 2 * half), generator=g)
    labels = ids.clone()
    for start in (0, half):
        labels[:, start : start + half // 4] = IGNORE_INDEX
    positions = torch.arange(half).repeat(2).expand(batch, -1).contiguous()
    return Batch(input_ids=ids, labels=labels, position_ids=positions, num_tokens=int(ids.numel()))


def child(args) -> dict:
    import torch

    from rayalign.models import autocast, load_model
    from rayalign.sft.data import IGNORE_INDEX
    from rayalign.sft.loop import _micro_step

    torch.set_num_threads(args.threads)
    bf16 = args.precision == "bf16-autocast"
    model, _ = load_model(args.model, dtype="float32", device=args.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    batch = _batch(model.config.vocab_size, args.batch, args.seq_len)
    scored = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    losses: list[float] = []

    def step():
        with autocast(args.device, bf16):
            loss = _micro_step(batch, 1.0 / scored, args.device, losses, chunk=args.loss_chunk)(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    cuda = args.device.startswith("cuda")
    step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "step_s": seconds,
        "peak_gib": peak / 2**30,
        "loss": losses[0] / scored,
        "scored": scored,
        "threads": torch.get_num_threads(),
    }


def run(args) -> None:
    script = str(Path(__file__).resolve())
    rows, scored = [], 0
    for arch in args.arch.split(","):
        model = random_model(arch)
        base = None
        for chunk in (int(c) for c in args.chunks.split(",")):
            child_args = [
                *("--model", model, "--device", args.device, "--loss-chunk", str(chunk)),
                *("--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps)),
                *("--precision", args.precision),
            ]
            r = run_on_threads(script, child_args, args.threads, f"{arch} loss_chunk {chunk}")
            base = base or r
            scored = r["scored"]
            rows.append(
                [
                    arch,
                    chunk or "all rows",
                    r["step_s"],
                    f"{base['step_s'] / r['step_s']:.2f}x",
                    r["peak_gib"],
                    f"{base['peak_gib'] - r['peak_gib']:.2f}",
                    f"{r['loss']:.4f}",
                ]
            )
    print(
        f"device {args.device}, {args.threads} torch threads, {args.precision}, batch {args.batch} x "
        f"{args.seq_len} tokens ({scored} scored), mean of {args.steps} steps after 1 warm-up"
    )
    headers = ["shapes", "sft.loss_chunk", "s / step", "speed vs all rows", "peak GiB", "GiB saved", "loss"]
    print(table(headers, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="gemma3-270m", help=f"comma-separated, of {sorted(ARCHS)}")
    p.add_argument("--chunks", default="0,1024,4096", help="sft.loss_chunk values; the first is the baseline")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=768)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="bf16-autocast", choices=["float32", "bf16-autocast"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--loss-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    run(args)


if __name__ == "__main__":
    main()
