"""RL training throughput: rayalign (vLLM sampler actor + Serve judge + Ray Train
learner) vs TRL ``GRPOTrainer``, completions trained per second, at equal
total cores, each side at its own best setting.

Both sides: the same model, the same prompts (the quickstart set), the same
group size, prompts per step, completion cap, temperature 1, learning rate,
KL coefficient (so both keep a reference model), one optimizer step per
generation, float32 (or, with ``--dtype bfloat16``, bfloat16 mixed precision
on both sides: float32 weights under bfloat16 autocast, TRL's ``bf16=True``
and rayalign's ``model.dtype: bfloat16``, its vLLM sampler in bfloat16), and
the same reward: a Python function
(``rayalign.testing.length_judge``) that costs nothing, so the judge cost is
equal (and takes no core). rayalign calls it through the Serve judge as a
``function`` judge backend; TRL as a reward function. Each run is a fresh
process. A step is generate + reward + learn (+ sync of the new weights into
the sampler for rayalign); the first step (warm-up) is reported apart from
the steady-state mean of the others. The rows, for ``--cores C`` (default 2,
at least 2):

- TRL, 1 process x 1 torch thread, and 1 process x C threads (with
  ``--dtype bfloat16`` also 1 process x C threads in float32, TRL's best
  precision on some CPUs);
- rayalign, sampler 1 thread + 1 learner x 1 thread, ``rl.overlap`` off
  (the phases alternate, so 1 core is busy at a time) and on (generation of
  step t+1 runs during learning of step t: 2 cores);
- rayalign, sampler C threads + 1 learner x C threads, overlap off;
- rayalign, sampler 1 thread + C learners x 1 thread, overlap off;
- rayalign, sampler 1 thread + 1 learner x 1 thread + the reference on an
  actor of its own (1 thread, ``rl.reference.placement: engine``), overlap
  on: the reference scores step t + 1 after its generation, while the
  learner trains step t (2 cores);
- rayalign, sampler C threads + 1 learner x C threads, overlap off, with
  ``rl.sync: object_store`` (the whole state dict through the Ray object
  store) instead of the default collective broadcast (``rl.sync: collective``,
  gloo, buckets of ``rl.sync_bucket_mib``).

Every rayalign row reports its sync seconds and bytes per step.

With ``--lora-rank R`` both sides train LoRA adapters of rank R on every
linear layer but the head (peft, alpha 16), the reference being the model
with its adapters off, and the rows are TRL at 1 and C threads against
rayalign's LoRA layouts (1 + 1 threads with and without overlap, C + C):
LoRA is compared only with LoRA. rayalign then syncs only the adapters
(merged on the sampler); its reference is never an actor of its own, and
the object store does not carry adapter syncs.

Equal-cores rule: a row's "cores" is the most cores its processes keep busy
at once (sampler + learners + judge, the judge's ~0 included); no row
exceeds C. The "vs best TRL" ratio divides by the TRL row with the most
completions/s. A row's threads are set with ``OMP_NUM_THREADS`` and
``torch.set_num_threads`` (TRL) or ``--model.threads`` (rayalign's sampler
and learners alike), and each child reads back the torch thread count it
trained with (``torch.get_num_threads()``: TRL in its training steps,
rayalign's learner rank 0 in ``summary.json`` as ``rl/torch_threads``); a
row whose read-back differs from its claim fails the run. The sampler's
threads are not read back.

    python benchmarks/rl_step.py [--model builtin:smollm2-135m-instruct] [--steps 5]
        [--prompts-per-step 2] [--group 4] [--max-new-tokens 64] [--cores 2] [--lora-rank 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import plural, run_on_threads, summary_threads, table  # noqa: E402

LORA_ALPHA = 16.0
"""LoRA alpha on both sides (``--lora-rank``)."""

PRECISION = {"float32": "fp32", "bfloat16": "bf16 mixed precision (fp32 weights)"}
PHASES = ("generate", "reward", "advantage", "reference", "wait_rollouts", "learn", "sync")


@dataclass(frozen=True)
class Row:
    """One run of the matrix. TRL: 1 process x ``threads``. rayalign: a sampler and
    ``learners`` Ray Train learners, each process on ``threads`` threads."""

    side: str
    threads: int
    learners: int = 1
    overlap: bool = False
    sync: str = "collective"
    """rayalign: rl.sync."""
    reference: str = "learner"
    """rayalign: rl.reference.placement."""
    dtype: str = ""
    """TRL: a precision other than the run's ``--dtype`` (its best may be the other one); "": the run's."""

    @property
    def cores(self) -> int:
        """The most cores busy at once: without overlap, sampling and learning alternate."""
        if self.side == "trl":
            return self.threads
        learning = self.learners * self.threads  # the reference actor scores right after generating, before learning
        return self.threads + learning if self.overlap else max(self.threads, learning)

    @property
    def label(self) -> str:
        if self.side == "trl":
            precision = f" {PRECISION[self.dtype]}," if self.dtype else ""
            return f"TRL GRPOTrainer,{precision} 1 process x {plural(self.threads, 'thread')}: {plural(self.cores, 'core')}"
        learners = f"{plural(self.learners, 'learner')} x {plural(self.threads, 'thread')}"
        phases = "rl.overlap on" if self.overlap else "rl.overlap off"
        sync = "object-store sync" if self.sync == "object_store" else "collective sync"
        reference = " + reference actor" if self.reference == "engine" else ""
        return (
            f"rayalign, sampler {plural(self.threads, 'thread')} + {learners}{reference} + judge fn, {phases}, "
            f"{sync}: {plural(self.cores, 'core')}"
        )

    def args(self) -> list[str]:
        """The child's own flags (``run_on_threads`` adds ``--threads``)."""
        overlap = str(self.overlap).lower()
        return [
            *("--side", self.side, "--learners", str(self.learners), "--overlap", overlap),
            *("--sync", self.sync, "--reference", self.reference),
            *(("--dtype", self.dtype) if self.dtype else ()),
        ]


def matrix(cores: int, lora: bool = False, dtype: str = "float32") -> list[Row]:
    """The rows on ``cores`` cores: TRL at 1 and ``cores`` threads; rayalign at 1 thread
    (overlap off and on), at ``cores`` threads (collective and object-store sync), and with
    ``cores`` learners. ``lora``: TRL's two rows and rayalign's 1-thread and ``cores``-thread
    layouts, collective sync and the reference on the learner (adapters off). A ``dtype``
    other than float32 adds TRL at ``cores`` threads in float32: the ratio is against TRL's
    best precision as well as its best threads.

    >>> [(r.side, r.threads, r.learners, r.overlap, r.sync[0], r.reference[0], r.cores)
    ...  for r in matrix(2)]  # doctest: +NORMALIZE_WHITESPACE
    [('trl', 1, 1, False, 'c', 'l', 1), ('trl', 2, 1, False, 'c', 'l', 2), ('rayalign', 1, 1, False, 'c', 'l', 1),
     ('rayalign', 1, 1, True, 'c', 'l', 2), ('rayalign', 1, 1, True, 'c', 'e', 2), ('rayalign', 2, 1, False, 'c', 'l', 2),
     ('rayalign', 2, 1, False, 'o', 'l', 2), ('rayalign', 1, 2, False, 'c', 'l', 2)]
    >>> [(r.side, r.threads, r.overlap, r.cores) for r in matrix(2, lora=True)]  # doctest: +NORMALIZE_WHITESPACE
    [('trl', 1, False, 1), ('trl', 2, False, 2), ('rayalign', 1, False, 1), ('rayalign', 1, True, 2),
     ('rayalign', 2, False, 2)]
    >>> [(r.threads, r.dtype) for r in matrix(2, dtype="bfloat16") if r.side == "trl"]
    [(1, ''), (2, ''), (2, 'float32')]
    """
    trl = [Row("trl", 1), Row("trl", cores)] + ([Row("trl", cores, dtype="float32")] if dtype != "float32" else [])
    if lora:
        return [
            *trl,
            Row("rayalign", 1),
            Row("rayalign", 1, overlap=True),
            Row("rayalign", cores),
        ]
    return [
        *trl,
        Row("rayalign", 1),
        Row("rayalign", 1, overlap=True),
        Row("rayalign", 1, overlap=True, reference="engine"),
        Row("rayalign", cores),
        Row("rayalign", cores, sync="object_store"),
        Row("rayalign", 1, learners=cores),
    ]


def _overrides(args, tmp: Path) -> list[str]:
    # CPU shares are Ray's bookkeeping only (threads come from model.threads): sampler,
    # judge and learners together fit in the --cores the cluster has.
    return [
        f"--model.policy={args.model}",
        f"--model.threads={args.threads}",
        f"--model.dtype={args.dtype}",  # never `auto`: bfloat16 for the sampler on CPUs with native bf16
        "--model.max_model_len=1024",
        f"--cluster.num_cpus={args.cores}",
        "--cluster.object_store_mib=1536",
        "--data.max_prompts=0",
        "--data.eval_fraction=0",
        "--rollout.backend=vllm",
        "--rollout.num_workers=1",
        f"--rollout.cpus_per_worker={args.cores / 2}",
        "--judge.backend=function",
        "--judge.function=rayalign.testing:length_judge",
        f"--judge.cpus_per_replica={args.cores / 8}",
        f"--rl.steps={args.steps}",
        f"--rl.prompts_per_step={args.prompts_per_step}",
        f"--rl.group_size={args.group}",
        f"--rl.max_new_tokens={args.max_new_tokens}",
        f"--rl.micro_batch_size={args.prompts_per_step * args.group // args.learners}",
        f"--rl.lr={args.lr}",
        f"--rl.kl_coef={args.beta}",
        f"--rl.learner.num_workers={args.learners}",
        f"--rl.learner.cpus_per_worker={args.cores / 4 / args.learners}",
        f"--rl.learner.checkpoint_every={args.steps}",
        "--rl.malformed_penalty=0.0",
        f"--rl.overlap={args.overlap}",
        f"--rl.sync={args.sync}",
        f"--rl.reference.placement={args.reference}",
        f"--rl.reference.cpus_per_worker={args.cores / 8}",
        f"--rl.learner.strategy={args.strategy}",
        f"--rl.lora_rank={args.lora_rank}",
        f"--rl.lora_alpha={LORA_ALPHA}",
        "--rl.learner.zero_stage=2",
        f"--tracking.run_dir={tmp}",
        "--tracking.wandb_mode=disabled",
    ]


def child_rayalign(args) -> dict:
    from rayalign.config import load_config
    from rayalign.rl.train import run_rl

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        tmp = Path(tmp)
        cfg = load_config(None, _overrides(args, tmp))
        run_rl(cfg, tmp / "rl", resume=False, log=lambda *_: None)
        lines = [json.loads(x) for x in (tmp / "metrics.jsonl").read_text().splitlines()]
        ran_with = summary_threads(tmp, "rl/torch_threads")
    steps = [x for x in lines if "timing/step" in x]
    return {
        "threads": ran_with,
        "step_s": [x["timing/step"] for x in steps],
        "tokens": [x["rl/completion_tokens"] for x in steps],
        "sync_mb": statistics.mean(x["rl/sync_bytes"] for x in steps) / 1e6,
        "phases": {
            p: statistics.mean(x[f"timing/{p}"] for x in steps[1:] or steps)
            for p in PHASES
            if f"timing/{p}" in steps[0]
        },
        "wall_s": time.perf_counter() - began,
    }


def _prompt_texts(args) -> list[str]:
    from rayalign.config import load_config
    from rayalign.spec import load_spec
    from rayalign.stage1.prompts import training_prompts

    cfg = load_config(None, _overrides(args, Path(tempfile.gettempdir())))
    prompts, _, _ = training_prompts(cfg, load_spec(cfg.spec.path))
    return [p.messages[-1].content for p in prompts]


def child_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rayalign.models import load_tokenizer, resolve_model
    from rayalign.testing import length_judge
    from rayalign.types import JudgeRequest, Message, Prompt

    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    rows = [{"prompt": [{"role": "user", "content": text}]} for text in _prompt_texts(args)]
    times: list[float] = []
    tokens: list[float] = []
    ran_with: set[int] = set()

    def reward(prompts, completions, **kwargs) -> list[float]:
        out = []
        for c in completions:
            text = c[-1]["content"] if isinstance(c, list) else c
            request = JudgeRequest(Prompt("b", (Message("user", "x"),)), text)
            out.append(length_judge(request)["score"] * 0.1)
        return out

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.began = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.began)
            ran_with.add(torch.get_num_threads())

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                tokens.append(logs["completions/mean_length"])

    batch = args.prompts_per_step * args.group
    with tempfile.TemporaryDirectory(prefix="rl-bench-trl-") as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            num_generations=args.group,
            max_completion_length=args.max_new_tokens,
            temperature=1.0,
            learning_rate=args.lr,
            beta=args.beta,
            num_iterations=1,
            max_steps=args.steps,
            use_cpu=True,
            bf16=args.dtype == "bfloat16",  # mixed precision: float32 weights, bfloat16 autocast
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
            dataloader_num_workers=0,
            gradient_checkpointing=False,
        )
        trainer = GRPOTrainer(
            model=str(resolve_model(args.model)),
            reward_funcs=reward,
            args=config,
            train_dataset=Dataset.from_list(rows),
            processing_class=load_tokenizer(args.model),
            callbacks=[Timer()],
            peft_config=_trl_lora(args.lora_rank),
        )
        trainer.train()
    return {
        "threads": ran_with.pop() if len(ran_with) == 1 else sorted(ran_with),
        "step_s": times,
        "tokens": tokens,
        "phases": {},
        "wall_s": time.perf_counter() - began,
    }


def _trl_lora(rank: int):
    """TRL's LoRA: the adapters rayalign's learner puts on (every linear layer but the head)."""
    if rank <= 0:
        return None
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=LORA_ALPHA, target_modules="all-linear", task_type="CAUSAL_LM")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--strategy", default="deepspeed", choices=["deepspeed", "ddp"], help="rayalign learner")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="both sides; bfloat16: mixed")
    p.add_argument("--cores", type=int, default=2, help="total cores every row may use (at least 2)")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA adapters of this rank on both sides (0: full)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="trl", help=argparse.SUPPRESS)
    p.add_argument("--overlap", default="false", help=argparse.SUPPRESS)
    p.add_argument("--learners", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--sync", default="collective", help=argparse.SUPPRESS)
    p.add_argument("--reference", default="learner", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cores < 2:
        p.error("--cores must be at least 2: on 1 core there is no threads-or-processes choice to compare")
    if args.child:
        print(json.dumps(child_trl(args) if args.side == "trl" else child_rayalign(args)))
        return
    run(args)


def common_args(args) -> list[str]:
    """The flags every child of one benchmark run shares."""
    names = (
        "model",
        "steps",
        "prompts_per_step",
        "group",
        "max_new_tokens",
        "lr",
        "beta",
        "strategy",
        "dtype",
        "cores",
        "lora_rank",
    )
    return [x for name in names for x in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]


def measure(row: Row, common: list[str]) -> dict:
    """One row in a fresh process; raises unless it trained on the threads it claims."""
    return run_on_threads(str(Path(__file__).resolve()), [*common, *row.args()], row.threads, row.label)


def _steady(r: dict) -> float:
    """Mean step seconds after the first (warm-up) step."""
    return statistics.mean(r["step_s"][1:] or r["step_s"])


def _row(row: Row, r: dict, per_step: int, baseline: float) -> list:
    rate = per_step / _steady(r)
    return [
        row.label,
        r["threads"],
        r["step_s"][0],
        _steady(r),
        rate,
        statistics.mean(r["tokens"]) if r["tokens"] else "-",
        r["phases"].get("sync", "-") if r["phases"] else "-",
        r.get("sync_mb", "-"),
        r["wall_s"],
        f"{rate / baseline:.2f}x",
    ]


def run(args) -> None:
    rows = matrix(args.cores, lora=args.lora_rank > 0, dtype=args.dtype)
    if uneven := [r.label for r in rows if (args.prompts_per_step * args.group) % r.learners]:
        raise SystemExit(f"a step's completions do not split evenly over the learners of: {', '.join(uneven)}")
    common = common_args(args)
    results = [(row, measure(row, common)) for row in rows]
    per_step = args.prompts_per_step * args.group
    best_row, best = max(((r, x) for r, x in results if r.side == "trl"), key=lambda rx: -_steady(rx[1]))
    learner = "DeepSpeed ZeRO-2" if args.strategy == "deepspeed" else "DDP"
    if args.lora_rank > 0:
        learner += f"; LoRA rank {args.lora_rank} on every linear layer, both sides"
    print(
        f"\nRL step throughput, {args.model}, {args.steps} steps x {args.prompts_per_step} prompts x {args.group} "
        f"completions of <= {args.max_new_tokens} tokens, {PRECISION[args.dtype]}, CPU, rayalign learners {learner}, "
        f"at most {plural(args.cores, 'core')} busy at once per row (without rl.overlap, sampling and learning "
        f"alternate); ratio against the best TRL row ({best_row.label})"
    )
    headers = ["run", "learner threads (read back)", "step 1 s", "steady step s", "completions/s"]
    print(
        table(
            [*headers, "mean completion tokens", "sync s", "sync MB/step", "wall s", "vs best TRL"],
            [_row(row, r, per_step, per_step / _steady(best)) for row, r in results],
        )
    )
    for row, r in results:
        if r["phases"]:
            print(
                f"\n{row.label} per-phase seconds (steady-state mean): "
                + ", ".join(f"{p} {s:.2f}" for p, s in r["phases"].items())
            )
    print(f"\nmachine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
