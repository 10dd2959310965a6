"""RL training throughput: rayalign (vLLM sampler actor + Serve judge + Ray Train
learner) vs TRL ``GRPOTrainer``, completions trained per second.

Both sides: the same model, the same prompts (the quickstart set), the same
group size, prompts per step, completion cap, temperature 1, learning rate,
KL coefficient (so both keep a reference model), one optimizer step per
generation, float32, one torch thread per process, and the same reward: a
Python function (``rayalign.testing.length_judge``) that costs nothing, so
the judge cost is equal. rayalign calls it through the Serve judge as a
``function`` judge backend; TRL as a reward function. Each side runs in a
fresh process. A step is generate + reward + learn (+ sync of the new
weights into the sampler for rayalign); the first step (warm-up) is reported
apart from the steady-state mean of the others.

    python benchmarks/rl_step.py [--model builtin:smollm2-135m-instruct] [--steps 5]
        [--prompts-per-step 2] [--group 4] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_isolated, table  # noqa: E402

PHASES = ("generate", "reward", "advantage", "wait_rollouts", "learn", "sync")


def _overrides(args, tmp: Path) -> list[str]:
    return [
        f"--model.policy={args.model}",
        "--model.threads=1",
        "--model.max_model_len=1024",
        "--cluster.num_cpus=2",
        "--cluster.object_store_mib=1536",
        "--data.max_prompts=0",
        "--data.eval_fraction=0",
        "--rollout.backend=vllm",
        "--rollout.num_workers=1",
        "--rollout.cpus_per_worker=1.0",
        "--judge.backend=function",
        "--judge.function=rayalign.testing:length_judge",
        "--judge.cpus_per_replica=0.25",
        f"--rl.steps={args.steps}",
        f"--rl.prompts_per_step={args.prompts_per_step}",
        f"--rl.group_size={args.group}",
        f"--rl.max_new_tokens={args.max_new_tokens}",
        f"--rl.micro_batch_size={args.prompts_per_step * args.group // args.learners}",
        f"--rl.lr={args.lr}",
        f"--rl.kl_coef={args.beta}",
        f"--rl.learner.num_workers={args.learners}",
        f"--rl.learner.cpus_per_worker={0.5 / args.learners}",
        f"--rl.learner.checkpoint_every={args.steps}",
        "--rl.malformed_penalty=0.0",
        f"--rl.overlap={args.overlap}",
        f"--rl.learner.strategy={args.strategy}",
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
    steps = [x for x in lines if "timing/step" in x]
    return {
        "step_s": [x["timing/step"] for x in steps],
        "tokens": [x["rl/completion_tokens"] for x in steps],
        "phases": {p: statistics.mean(x[f"timing/{p}"] for x in steps[1:] or steps) for p in PHASES},
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
    torch.set_num_threads(1)
    rows = [{"prompt": [{"role": "user", "content": text}]} for text in _prompt_texts(args)]
    times: list[float] = []
    tokens: list[float] = []

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
            bf16=False,
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
        )
        trainer.train()
    return {"step_s": times, "tokens": tokens, "phases": {}, "wall_s": time.perf_counter() - began}


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
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", default="trl", help=argparse.SUPPRESS)
    p.add_argument("--overlap", default="false", help=argparse.SUPPRESS)
    p.add_argument("--learners", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child_trl(args) if args.side == "trl" else child_rayalign(args)))
        return
    run(args)


def _row(name: str, r: dict, per_step: int, baseline: float | None) -> list:
    steady = statistics.mean(r["step_s"][1:] or r["step_s"])
    rate = per_step / steady
    return [
        name,
        r["step_s"][0],
        steady,
        rate,
        statistics.mean(r["tokens"]) if r["tokens"] else "-",
        r["wall_s"],
        f"{rate / baseline:.2f}x" if baseline else "1.00x",
    ]


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
        "--prompts-per-step",
        str(args.prompts_per_step),
        "--group",
        str(args.group),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--lr",
        str(args.lr),
        "--beta",
        str(args.beta),
    ]
    trl = run_isolated(script, [*common, "--side", "trl"], env)
    common += ["--strategy", args.strategy]
    ours = run_isolated(script, [*common, "--side", "rayalign"], env)
    overlapped = run_isolated(script, [*common, "--side", "rayalign", "--overlap", "true"], env)
    two = run_isolated(script, [*common, "--side", "rayalign", "--learners", "2"], env)
    per_step = args.prompts_per_step * args.group
    base = per_step / statistics.mean(trl["step_s"][1:] or trl["step_s"])
    learner = "DeepSpeed ZeRO-2" if args.strategy == "deepspeed" else "DDP"
    runs = [
        (f"rayalign (vLLM actor + Serve judge + 1 {learner} learner)", ours),
        ("rayalign, rl.overlap (generate+judge step t+1 during learn t)", overlapped),
        (f"rayalign, 2 {learner} learners (1 thread each)", two),
    ]
    rows = [_row("TRL GRPOTrainer (transformers generate)", trl, per_step, None)]
    rows += [_row(name, r, per_step, base) for name, r in runs]
    print(
        f"\nRL step throughput, {args.model}, {args.steps} steps x {args.prompts_per_step} prompts x {args.group} "
        f"completions of <= {args.max_new_tokens} tokens, fp32, 1 thread per process, CPU"
    )
    print(
        table(["run", "step 1 s", "steady step s", "completions/s", "mean completion tokens", "wall s", "vs TRL"], rows)
    )
    for name, r in runs:
        print(
            f"\n{name} per-phase seconds (steady-state mean): "
            + ", ".join(f"{p} {s:.2f}" for p, s in r["phases"].items())
        )
    print(f"\nmachine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
