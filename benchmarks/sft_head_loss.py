"""SFT with the LM head and its loss in chunks (``sft.loss_chunk``) against all rows at once:
peak memory and time of one learner step, same device, batch, threads and precision.

A step is what the SFT learner runs for a micro-batch (``rayalign.sft.loop._micro_step``: a
forward, the loss over the scored rows, backward), then gradient clipping and an AdamW step.
Each row runs in a fresh process: one warm-up step, then the mean of ``--steps`` timed steps.
Memory is the peak over the timed steps: on CPU the process's resident set (weights, AdamW state
and the step's tensors together, so differences between rows are the step's; glibc unmaps every
freed tensor, ``EXACT_RSS_ENV``), on GPU the CUDA memory allocated. Weights are random with a real model's shapes (``--arch``); the large-vocabulary
shapes are where chunking matters. The ratios are against ``--loss-chunk 0`` measured in the same run.

    python benchmarks/sft_head_loss.py [--device cpu|cuda] [--arch gemma3-270m] [--chunks 0,1024,4096]
        [--batch 4] [--seq-len 768] [--steps 2] [--threads 2] [--precision float32|bf16-autocast]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ARCHS, chunk_rows, packed_sft_batch, table, time_steps, trainable_model  # noqa: E402


def child(args) -> dict:
    import torch

    from rayalign.models import autocast
    from rayalign.sft.data import IGNORE_INDEX
    from rayalign.sft.loop import _micro_step

    bf16 = args.precision == "bf16-autocast"
    model, optimizer = trainable_model(args.model, args.device, args.threads)
    half = args.seq_len // 2
    batch = packed_sft_batch(model.config.vocab_size, args.batch, half, half // 4)
    scored = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    losses: list[float] = []

    def step():
        with autocast(args.device, bf16):
            loss = _micro_step(batch, 1.0 / scored, args.device, losses, chunk=args.loss_chunk)(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds, peak = time_steps(step, args.steps, args.device, cpu_peak=True)
    return {
        "step_s": seconds,
        "peak_gib": peak,
        "loss": losses[0] / scored,
        "scored": scored,
        "threads": torch.get_num_threads(),
    }


def run(args) -> None:
    child_args = [
        *("--device", args.device, "--batch", str(args.batch), "--seq-len", str(args.seq_len)),
        *("--steps", str(args.steps), "--precision", args.precision),
    ]
    script = str(Path(__file__).resolve())
    rows, last = chunk_rows(script, args.arch, args.chunks, "--loss-chunk", child_args, args.threads, "all rows")
    print(
        f"device {args.device}, {args.threads} torch threads, {args.precision}, batch {args.batch} x "
        f"{args.seq_len} tokens ({last['scored']} scored), mean of {args.steps} steps after 1 warm-up"
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
