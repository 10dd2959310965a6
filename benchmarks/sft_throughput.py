"""SFT training throughput: rayalign (Ray Train + DeepSpeed ZeRO-2) vs TRL ``SFTTrainer``,
at equal total cores, each side at its own best setting.

Same model, same synthetic examples (varied lengths), same max sequence
length, same global batch (rows of packed examples) and number of steps,
completion-only loss, float32, no gradient checkpointing, AdamW; each run in a
fresh process. The rows, for ``--cores C`` (default 2, at least 2):

- TRL, 1 process x 1 torch thread, and 1 process x C threads;
- rayalign, 1 Ray Train worker x C threads (DeepSpeed ZeRO-2, and DDP: on
  one worker plain torch AdamW) and C workers x 1 thread (ZeRO-2);
- rayalign, 1 worker x 1 thread, for reference.

Equal-cores rule: no row keeps more than C cores busy (processes x threads
<= C; Ray's own processes and the driver idle while the learners train), and
the "vs best TRL" ratio divides by the TRL row with the highest tokens/s, so
rayalign is compared with TRL at TRL's best use of the same cores. A row's
threads are set with ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` (TRL)
or ``--sft.learner.threads`` (rayalign's Ray Train workers), and each child reads
back the torch thread count it trained with (``torch.get_num_threads()``: TRL
in its training steps, rayalign's rank 0 in ``summary.json`` as
``sft/torch_threads``); a row whose read-back differs from its claim fails
the run. Tokens/s counts the non-padding tokens of the training steps,
start-up and checkpoints excluded; "wall s" is the whole child process
(model load, Ray start, final save).

    python benchmarks/sft_throughput.py [--model builtin:smollm2-135m-instruct|builtin:tiny]
        [--steps 4] [--batch 4] [--max-seq-len 256] [--examples 64] [--cores 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import plural, run_on_threads, summary_threads, table  # noqa: E402

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


@dataclass(frozen=True)
class Row:
    """One run of the matrix: a side, its processes (TRL: 1; rayalign: Ray Train workers)
    and the torch threads of each."""

    side: str
    processes: int
    threads: int
    strategy: str = "deepspeed"
    """rayalign's sft.learner.strategy: deepspeed (ZeRO-2) or ddp (torch AdamW; one worker: no wrapper)."""

    @property
    def cores(self) -> int:
        return self.processes * self.threads

    @property
    def label(self) -> str:
        if self.side == "trl":
            who = f"TRL SFTTrainer, {plural(self.processes, 'process')}"
        else:
            learner = "ZeRO-2" if self.strategy == "deepspeed" else "DDP (torch AdamW)"
            who = f"rayalign {learner}, {plural(self.processes, 'Ray Train worker')}"
        return f"{who} x {plural(self.threads, 'thread')}: {plural(self.cores, 'core')}"

    def args(self) -> list[str]:
        """The child's own flags (``run_on_threads`` adds ``--threads``)."""
        return ["--side", self.side, "--num-workers", str(self.processes), "--strategy", self.strategy]


def matrix(cores: int) -> list[Row]:
    """The rows on ``cores`` cores: each side's 1-process and all-cores settings, and rayalign
    1 x 1 for reference.

    >>> [(r.side, r.processes, r.threads, r.strategy[:2]) for r in matrix(2)]  # doctest: +NORMALIZE_WHITESPACE
    [('trl', 1, 1, 'de'), ('trl', 1, 2, 'de'), ('rayalign', 1, 2, 'de'), ('rayalign', 1, 2, 'dd'),
     ('rayalign', 2, 1, 'de'), ('rayalign', 1, 1, 'de')]
    """
    return [
        Row("trl", 1, 1),
        Row("trl", 1, cores),
        Row("rayalign", 1, cores),
        Row("rayalign", 1, cores, "ddp"),
        Row("rayalign", cores, 1),
        Row("rayalign", 1, 1),
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


def child_rayalign(args) -> dict:
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
                f"--sft.learner.threads={args.threads}",  # the learners only: nothing else runs
                f"--sft.learner.cpus_per_worker={args.cores / args.num_workers}",
                f"--cluster.num_cpus={args.cores}",
                f"--sft.learner.num_workers={args.num_workers}",
                f"--sft.micro_batch_size={args.batch // args.num_workers}",
                "--sft.grad_accum=1",
                f"--sft.max_seq_len={args.max_seq_len}",
                f"--sft.max_steps={args.steps}",
                f"--sft.learner.checkpoint_every={args.steps}",
                "--sft.lr=1e-5",
                f"--sft.learner.strategy={args.strategy}",
                "--sft.learner.zero_stage=2",
                f"--tracking.run_dir={tmp}",
                "--tracking.wandb_mode=disabled",
            ],
        )
        result = run_sft(cfg, tmp / "sft.jsonl", tmp / "sft", resume=False)
        lines = [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]
        tokens = max(x.get("sft/tokens_seen", 0) for x in lines)
        ran_with = summary_threads(tmp, "sft/torch_threads")
    return {
        "threads": ran_with,
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
    torch.set_num_threads(args.threads)
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
    ran_with: set[int] = set()

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            counted["began"] = time.perf_counter()

        def on_step_end(self, *a, **k):
            counted["train_s"] += time.perf_counter() - counted["began"]
            ran_with.add(torch.get_num_threads())

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
        "threads": ran_with.pop() if len(ran_with) == 1 else sorted(ran_with),
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
    p.add_argument("--cores", type=int, default=2, help="total cores every row may use (at least 2)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="trl", help=argparse.SUPPRESS)
    p.add_argument("--num-workers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="deepspeed", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cores < 2:
        p.error("--cores must be at least 2: on 1 core there is no threads-or-processes choice to compare")
    if args.child:
        print(json.dumps(child_trl(args) if args.side == "trl" else child_rayalign(args)))
        return
    run(args)


def common_args(args) -> list[str]:
    """The flags every child of one benchmark run shares."""
    names = ("model", "steps", "batch", "max_seq_len", "examples", "cores")
    return [x for name in names for x in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


def measure(row: Row, common: list[str]) -> dict:
    """One row in a fresh process; raises unless it trained on the threads it claims."""
    return run_on_threads(str(Path(__file__).resolve()), [*common, *row.args()], row.threads, row.label)


def run(args) -> None:
    rows = matrix(args.cores)
    if uneven := [r.label for r in rows if args.batch % r.processes]:
        raise SystemExit(f"--batch {args.batch} does not split evenly over the workers of: {', '.join(uneven)}")
    common = common_args(args)
    results = [(row, measure(row, common)) for row in rows]
    best_row, best = max(((r, x) for r, x in results if r.side == "trl"), key=lambda rx: rx[1]["tokens_per_s"])
    table_rows = [
        [
            row.label,
            r["threads"],
            r["tokens_per_s"],
            r["tokens"],
            r["train_s"],
            r["wall_s"],
            f"{r['final_loss']:.3f}",
            f"{r['tokens_per_s'] / best['tokens_per_s']:.2f}x",
        ]
        for row, r in results
    ]
    print(
        f"\nSFT throughput, {args.model}, {args.steps} steps x {args.batch} rows of <= {args.max_seq_len} tokens "
        f"(packed), fp32, CPU, at most {plural(args.cores, 'core')} per row; "
        f"ratio against the best TRL row ({best_row.label})"
    )
    headers = ["run", "threads (read back)", "train tok/s", "tokens", "train s", "wall s", "final loss"]
    print(table([*headers, "vs best TRL"], table_rows))
    print(f"\nmachine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
