"""SFT training throughput: rayalign (Ray Train + DeepSpeed ZeRO-2) vs TRL ``SFTTrainer``.

Same model, same synthetic examples (varied lengths), same max sequence
length, same global batch (rows of packed examples) and number of steps,
completion-only loss, float32, no gradient checkpointing, AdamW, one torch
thread per process; each side runs in a fresh process. Tokens/s counts the
non-padding tokens of the training steps, start-up and checkpoints excluded;
"wall s" is the whole child process (model load, Ray start, final save).

    python benchmarks/sft_throughput.py [--model builtin:smollm2-135m-instruct|builtin:tiny]
        [--steps 4] [--batch 4] [--max-seq-len 256] [--examples 64] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_isolated, table  # noqa: E402

TOPICS = [
    "kill a zombie process",
    "write a poem about rain",
    "pick a strong password",
    "bake bread",
    "explain vaccines",
    "prepare for an interview",
    "learn a language",
    "fix a flat tyre",
]


def _examples(k: int):
    """Varied-length examples: 1-6 sentences of reasoning, 1-8 of answer."""
    from rayalign.types import Message, Prompt, SFTExample

    out = []
    for i in range(k):
        topic = TOPICS[i % len(TOPICS)]
        reasoning = " ".join(
            f"Step {j}: the request to {topic} is allowed under general.P{j}." for j in range(1 + i % 6)
        )
        answer = " ".join(f"Point {j} about how to {topic}, explained plainly." for j in range(1 + (i * 5) % 8))
        prompt = Prompt(id=f"b{i}", messages=(Message("user", f"Question {i}: how do I {topic}?"),))
        out.append(SFTExample(prompt=prompt, reasoning=reasoning, answer=answer))
    return out


def _write_examples(k: int, path: Path) -> None:
    from rayalign.types import to_json

    path.write_text("".join(to_json(e) + "\n" for e in _examples(k)))


def child_rayalign(args, workers: int) -> dict:
    from rayalign.config import load_config
    from rayalign.sft.train import run_sft

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp:
        tmp = Path(tmp)
        _write_examples(args.examples, tmp / "sft.jsonl")
        cfg = load_config(
            None,
            [
                f"--model.policy={args.model}",
                "--model.threads=1",
                "--cluster.num_cpus=2",
                f"--sft.learner.num_workers={workers}",
                f"--sft.micro_batch_size={args.batch // workers}",
                "--sft.grad_accum=1",
                f"--sft.max_seq_len={args.max_seq_len}",
                f"--sft.max_steps={args.steps}",
                f"--sft.learner.checkpoint_every={args.steps}",
                "--sft.lr=1e-5",
                "--sft.learner.strategy=deepspeed",
                "--sft.learner.zero_stage=2",
                f"--tracking.run_dir={tmp}",
                "--tracking.wandb_mode=disabled",
            ],
        )
        result = run_sft(cfg, tmp / "sft.jsonl", tmp / "sft", resume=False)
        lines = [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]
        tokens = max(x.get("sft/tokens_seen", 0) for x in lines)
    return {
        "tokens_per_s": result.tokens_per_s,
        "tokens": tokens,
        "train_s": tokens / result.tokens_per_s,
        "wall_s": time.perf_counter() - began,
        "final_loss": result.final_loss,
    }


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rayalign.models import load_tokenizer, resolve_model
    from rayalign.rollout.format import join_completion

    began = time.perf_counter()
    torch.set_num_threads(1)
    rows = [
        {
            "prompt": [{"role": "user", "content": e.prompt.messages[0].content}],
            "completion": [{"role": "assistant", "content": join_completion(e.reasoning, e.answer)}],
        }
        for e in _examples(args.examples)
    ]
    tokenizer = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32)
    counted = {"tokens": 0, "train_s": 0.0, "began": 0.0}

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            counted["began"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            counted["train_s"] += time.perf_counter() - counted["began"]

    class CountingTrainer(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            counted["tokens"] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, num_items_in_batch)

    with tempfile.TemporaryDirectory(prefix="sft-bench-trl-") as tmp:
        config = SFTConfig(
            output_dir=tmp,
            max_length=args.max_seq_len,
            packing=True,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=args.steps,
            learning_rate=1e-5,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        trainer = CountingTrainer(
            model=model,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[Timer()],
        )
        out = trainer.train()
    return {
        "tokens_per_s": counted["tokens"] / counted["train_s"],
        "tokens": counted["tokens"],
        "train_s": counted["train_s"],
        "wall_s": time.perf_counter() - began,
        "final_loss": out.training_loss,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="rows per optimizer step, all workers together")
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--workers", default="1,2", help="rayalign Ray Train worker counts to run")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="trl", help=argparse.SUPPRESS)
    p.add_argument("--num-workers", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child_trl(args) if args.side == "trl" else child_rayalign(args, args.num_workers)
        print(json.dumps(result))
        return
    run(args)


def run(args) -> None:
    env = {
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "WANDB_MODE": "disabled",
    }
    script = str(Path(__file__).resolve())
    common = [
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--max-seq-len",
        str(args.max_seq_len),
        "--examples",
        str(args.examples),
    ]
    trl = run_isolated(script, [*common, "--side", "trl"], env)
    results = [("TRL SFTTrainer, 1 process", trl)]
    for n in [int(w) for w in args.workers.split(",")]:
        side = run_isolated(script, [*common, "--side", "rayalign", "--num-workers", str(n)], env)
        results.append((f"rayalign, {n} Ray Train worker{'s' if n > 1 else ''} (ZeRO-2)", side))
    rows = [
        [
            name,
            r["tokens_per_s"],
            r["tokens"],
            r["train_s"],
            r["wall_s"],
            f"{r['final_loss']:.3f}",
            f"{r['tokens_per_s'] / trl['tokens_per_s']:.2f}x",
        ]
        for name, r in results
    ]
    print(
        f"\nSFT throughput, {args.model}, {args.steps} steps x {args.batch} rows of <= {args.max_seq_len} tokens "
        f"(packed), fp32, 1 thread per process, CPU"
    )
    print(table(["run", "train tok/s", "tokens", "train s", "wall s", "final loss", "vs TRL"], rows))
    print(f"\nmachine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
