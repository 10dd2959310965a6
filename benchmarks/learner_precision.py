"""Learner precision: one optimizer step in float32 vs bfloat16 autocast over float32 weights
(what ``model.dtype: bfloat16``, and ``auto`` on GPUs and on CPUs with native bf16, gives the SFT
and RL learners), on the same device, the same batch, the same threads.

A step is the learners' own math from rayalign: RL is the reference's log-probs (no gradient), the
learners' closure (``rayalign.rl.learn.micro_step``: the policy's token log-probs and entropies,
``policy_loss``), backward and an AdamW step; SFT is a forward over packed rows with logits at the
scored positions only (``scored_positions``, ``loss_sum``), backward and an AdamW step. Each row
runs in a fresh process: one warm-up step, then the mean of ``--steps`` timed steps; on CUDA the
peak memory the process allocated is reported. Weights are random with a real model's shapes
(``--arch``), since speed depends on shapes, not on values. The ratio is against float32 measured
in the same run.

    python benchmarks/learner_precision.py [--device cpu|cuda] [--arch smollm2-135m,qwen2.5-1.5b]
        [--batch 8] [--prompt-len 128] [--completion-len 128] [--steps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    ARCHS,
    packed_sft_batch,
    random_model,
    rl_batch,
    rl_learner_step,
    run_on_threads,
    table,
    time_steps,
    trainable_model,
)


def _sft_step(model, batch, optimizer, device: str, bf16: bool) -> None:
    import torch

    from rayalign.models import autocast
    from rayalign.sft.data import loss_sum, scored_positions

    labels = batch.labels.to(device)
    positions = scored_positions(labels)
    with autocast(device, bf16):
        logits = model(
            input_ids=batch.input_ids.to(device),
            position_ids=batch.position_ids.to(device),
            use_cache=False,
            logits_to_keep=positions,
        ).logits
    total, n = loss_sum(logits, labels, positions)
    (total / n).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _sft_batch(vocab: int, batch: int, prompt_len: int, completion_len: int):
    """``batch`` rows as long as an RL row, each two examples of half the prompt and half the
    completion packed (restarting positions), loss on the completions."""
    return packed_sft_batch(vocab, batch, (prompt_len + completion_len) // 2, prompt_len // 2)


def child(args) -> dict:
    import torch

    from rayalign.config import load_config
    from rayalign.models import load_model

    bf16 = args.precision == "bf16-autocast"
    model, optimizer = trainable_model(args.model, args.device, args.threads)
    vocab = model.config.vocab_size
    if args.kind == "rl":
        reference, _ = load_model(args.model, dtype="float32", device=args.device)
        reference.eval().requires_grad_(False)
        batch = rl_batch(vocab, args.batch, args.prompt_len, args.completion_len)

        rl = load_config(None, []).rl

        def step():
            rl_learner_step(model, reference, batch, optimizer, args.device, bf16, rl)
    else:
        batch = _sft_batch(vocab, args.batch, args.prompt_len, args.completion_len)

        def step():
            _sft_step(model, batch, optimizer, args.device, bf16)

    seconds, peak = time_steps(step, args.steps, args.device)
    return {"step_s": seconds, "peak_gib": peak, "threads": torch.get_num_threads()}


def run(args) -> None:
    script = str(Path(__file__).resolve())
    rows = []
    for arch in args.arch.split(","):
        model = random_model(arch)
        for kind in args.kinds.split(","):
            base = None
            for precision in ("float32", "bf16-autocast"):
                child_args = [
                    *("--model", model, "--device", args.device, "--kind", kind, "--precision", precision),
                    *("--batch", str(args.batch), "--prompt-len", str(args.prompt_len)),
                    *("--completion-len", str(args.completion_len), "--steps", str(args.steps)),
                ]
                r = run_on_threads(script, child_args, args.threads, f"{arch} {kind} {precision}")
                base = r["step_s"] if precision == "float32" else base
                tok_s = args.batch * args.completion_len / r["step_s"]  # completion tokens trained
                peak = "-" if r["peak_gib"] is None else r["peak_gib"]
                rows.append([arch, kind, precision, r["step_s"], tok_s, peak, f"{base / r['step_s']:.2f}x"])
    print(
        f"device {args.device}, {args.threads} torch threads, batch {args.batch}, "
        f"prompt {args.prompt_len} + completion {args.completion_len} tokens "
        f"a row (SFT: two examples of half that packed in a row), mean of {args.steps} steps after 1 warm-up"
    )
    headers = ["shapes", "step", "precision", "s / step", "trained tok/s", "peak GiB", "vs float32"]
    print(table(headers, rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="smollm2-135m", help=f"comma-separated, of {sorted(ARCHS)}")
    p.add_argument("--kinds", default="rl,sft")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--completion-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="rl", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    run(args)


if __name__ == "__main__":
    main()
