"""Sampling throughput: vLLM backend vs transformers ``generate``, and 1 vs 2 actors.

Same model, same prompts, same max new tokens, one torch thread per process,
each configuration in a fresh process. Tokens/s counts generated tokens.

    python benchmarks/rollout_throughput.py [--model builtin:smollm2-135m-instruct]
        [--max-new-tokens 128] [--batches 1,8,32] [--device cpu|cuda] [--no-scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ARCHS, random_model, run_isolated, table  # noqa: E402

QUESTIONS = [
    "Explain how vaccines train the immune system.",
    "Write a short poem about autumn rain.",
    "What are good habits for writing maintainable code?",
    "Summarise the causes of the French Revolution.",
    "How do I kill a zombie process on Linux?",
    "Give me three tips for a job interview.",
    "Why is the sky blue?",
    "What is the difference between a virus and a bacterium?",
]


def _prompts(k: int):
    from rayalign.types import Message, Prompt

    return [Prompt(id=f"b{i}", messages=(Message("user", QUESTIONS[i % len(QUESTIONS)]),)) for i in range(k)]


def child_single(backend: str, model: str, batch: int, max_new: int, device: str) -> dict:
    from rayalign.rollout.engine import EngineConfig
    from rayalign.rollout.worker import RolloutWorker
    from rayalign.types import SamplingSettings

    engine = EngineConfig(model=model, backend=backend, max_model_len=1024, threads=1, device=device)
    worker = RolloutWorker(engine)
    settings = SamplingSettings(n=1, temperature=0.8, max_new_tokens=max_new, seed=0)
    worker.generate(_prompts(1), SamplingSettings(max_new_tokens=4))  # warm-up
    rounds = 2 if batch == 1 else 1  # batch 1: a few prompts in sequence
    tokens, completions, start = 0, 0, time.perf_counter()
    for r in range(rounds * (4 if batch == 1 else 1)):
        rollouts = worker.generate(_prompts(batch), SamplingSettings(**{**settings.__dict__, "seed": r}))
        tokens += sum(len(x.token_ids) for x in rollouts)
        completions += len(rollouts)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "completions_per_s": completions / seconds, "tokens": tokens}


def child_pool(model: str, actors: int, per_actor: int, max_new: int) -> dict:
    from rayalign.cluster import init_ray
    from rayalign.config import ClusterConfig
    from rayalign.rollout.engine import EngineConfig
    from rayalign.rollout.pool import PoolResources, RolloutPool
    from rayalign.types import SamplingSettings

    init_ray(ClusterConfig(num_cpus=2, object_store_mib=512))
    engine = EngineConfig(model=model, backend="vllm", max_model_len=1024, threads=1)
    pool = RolloutPool(engine, PoolResources(num_workers=actors, cpus=1.0))
    pool.wait_ready()
    pool.generate(_prompts(actors), SamplingSettings(max_new_tokens=4))
    start = time.perf_counter()
    rollouts = pool.generate(_prompts(actors * per_actor), SamplingSettings(max_new_tokens=max_new, temperature=0.8))
    seconds = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in rollouts)
    return {"tokens_per_s": tokens / seconds, "completions_per_s": len(rollouts) / seconds, "tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backends", default="transformers,vllm")
    p.add_argument("--random-arch", choices=sorted(ARCHS), help="random weights with this model's shapes")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 actor comparison")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="single", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="vllm", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--actors", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        if args.mode == "single":
            result = child_single(args.backend, args.model, args.batch, args.max_new_tokens, args.device)
        else:
            result = child_pool(args.model, args.actors, 16, args.max_new_tokens)
        print(json.dumps(result))
        return
    run(args)


def run(args) -> None:
    if args.random_arch:
        args.model = random_model(args.random_arch)
    env = {"OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    script = str(Path(__file__).resolve())
    common = ["--model", args.model, "--max-new-tokens", str(args.max_new_tokens), "--device", args.device]
    backends = args.backends.split(",")
    rows, results = [], {}
    for batch in [int(b) for b in args.batches.split(",")]:
        for backend in backends:
            results[backend, batch] = run_isolated(script, [*common, "--backend", backend, "--batch", str(batch)], env)
        row = [batch] + [results[b, batch]["tokens_per_s"] for b in backends]
        row += [results[b, batch]["completions_per_s"] for b in backends]
        if len(backends) == 2:
            row.append(
                f"{results[backends[1], batch]['tokens_per_s'] / results[backends[0], batch]['tokens_per_s']:.2f}x"
            )
        rows.append(row)
    headers = ["batch"] + [f"{b} tok/s" for b in backends] + [f"{b} compl/s" for b in backends]
    headers += [f"{backends[1]}/{backends[0]}"] if len(backends) == 2 else []
    print(f"\nSampling throughput, {args.model}, {args.max_new_tokens} new tokens, 1 thread per process, {args.device}")
    print(table(headers, rows))
    if not args.no_scaling and args.device == "cpu":
        scale = {n: run_isolated(script, [*common, "--mode", "pool", "--actors", str(n)], env) for n in (1, 2)}
        print(f"\nvLLM actors on Ray, 16 prompts per actor, {args.max_new_tokens} new tokens")
        print(
            table(
                ["actors", "tok/s", "compl/s", "vs 1 actor"],
                [
                    [
                        n,
                        scale[n]["tokens_per_s"],
                        scale[n]["completions_per_s"],
                        f"{scale[n]['tokens_per_s'] / scale[1]['tokens_per_s']:.2f}x",
                    ]
                    for n in (1, 2)
                ],
            )
        )
    print(f"\nmachine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
