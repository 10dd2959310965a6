"""RL with the LM head in chunks (``rl.logprob_chunk``) against the whole vocabulary at once:
peak memory and time of one learner step, same device, batch, threads and precision.

A step is what an RL learner runs for a micro-batch: the frozen reference's log-probs
(``rayalign.rl.batch.reference_logprobs``, no gradient), the learner's closure
(``rayalign.rl.learn.micro_step``: the policy's forward, its token log-probs and entropies, the
clipped loss with the KL penalty), backward, gradient clipping and an AdamW step. Each row runs in
a fresh process: one warm-up step, then the mean of ``--steps`` timed steps. Memory is the peak
over the timed steps: on CPU the process's resident set (policy, reference, AdamW state and the
step's tensors; glibc unmaps every freed tensor, ``EXACT_RSS_ENV``), on GPU the CUDA memory
allocated. Weights are random with a real model's shapes (``--arch``). The ratios are against
``--logprob-chunk 0`` measured in the same run.

    python benchmarks/rl_logprob_chunk.py [--device cpu|cuda] [--arch gemma3-270m] [--chunks 0,256,1024]
        [--batch 4] [--prompt-len 128] [--completion-len 256] [--steps 2] [--threads 2]
        [--precision float32|bf16-autocast]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import ARCHS, chunk_rows, rl_batch, rl_learner_step, table, time_steps, trainable_model  # noqa: E402


def child(args) -> dict:
    import torch

    from rayalign.config import load_config
    from rayalign.models import load_model

    bf16 = args.precision == "bf16-autocast"
    r = load_config(None, [f"--rl.logprob_chunk={args.logprob_chunk}"]).rl
    model, optimizer = trainable_model(args.model, args.device, args.threads)
    reference, _ = load_model(args.model, dtype="float32", device=args.device)
    reference.requires_grad_(False)
    batch = rl_batch(model.config.vocab_size, args.batch, args.prompt_len, args.completion_len)
    losses: list[float] = []

    def step():
        losses.append(rl_learner_step(model, reference, batch, optimizer, args.device, bf16, r))

    seconds, peak = time_steps(step, args.steps, args.device, cpu_peak=True)
    return {"step_s": seconds, "peak_gib": peak, "loss": losses[0], "threads": torch.get_num_threads()}


def run(args) -> None:
    child_args = [
        *("--device", args.device, "--batch", str(args.batch), "--prompt-len", str(args.prompt_len)),
        *("--completion-len", str(args.completion_len), "--steps", str(args.steps), "--precision", args.precision),
    ]
    script = str(Path(__file__).resolve())
    rows, _ = chunk_rows(
        script, args.arch, args.chunks, "--logprob-chunk", child_args, args.threads, "whole vocabulary"
    )
    print(
        f"device {args.device}, {args.threads} torch threads, {args.precision}, {args.batch} completions of "
        f"{args.completion_len} tokens after {args.prompt_len}-token prompts, mean of {args.steps} steps after 1 warm-up"
    )
    headers = ["shapes", "rl.logprob_chunk", "s / step", "speed vs whole", "peak GiB", "GiB saved", "loss"]
    print(table(headers, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="gemma3-270m", help=f"comma-separated, of {sorted(ARCHS)}")
    p.add_argument("--chunks", default="0,256,1024", help="rl.logprob_chunk values; the first is the baseline")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--completion-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="bf16-autocast", choices=["float32", "bf16-autocast"])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--logprob-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    run(args)


if __name__ == "__main__":
    main()
