"""Shared helpers for benchmark scripts: subprocess isolation, thread pinning and tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

# Every benchmark child: offline, quiet, no telemetry, no W&B.
CHILD_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "WANDB_MODE": "disabled",
}


def run_isolated(script: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``script --child ...`` in a fresh interpreter; it prints one JSON line last."""
    full_env = {**os.environ, **(env or {})}
    out = subprocess.run(
        [sys.executable, script, "--child", *args], capture_output=True, text=True, env=full_env, check=False
    )
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise RuntimeError(f"{script} {' '.join(args)} failed with {out.returncode}")
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{script} {' '.join(args)} printed no result")


def run_on_threads(script: str, args: list[str], threads: int, label: str, env: dict[str, str] | None = None) -> dict:
    """``run_isolated`` with ``threads`` torch threads per process (``OMP_NUM_THREADS`` and
    ``--threads``) and ``env``; raises unless the child read back that many (its ``"threads"`` key)."""
    env = {**CHILD_ENV, **(env or {}), "OMP_NUM_THREADS": str(threads)}
    result = run_isolated(script, [*args, "--threads", str(threads)], env)
    if result.get("threads") != threads:
        raise RuntimeError(f"{label}: claims {threads} torch threads per process, ran with {result.get('threads')}")
    return result


def summary_threads(run_dir: str | Path, key: str) -> int | None:
    """The torch thread count a Ray Train learner recorded under ``key`` in its run's summary.json
    (rank 0 reads ``torch.get_num_threads()`` after its set-up)."""
    from rayalign.tracking import SUMMARY_FILE

    return json.loads((Path(run_dir) / SUMMARY_FILE).read_text()).get(key)


def plural(n: int, word: str) -> str:
    """``plural(2, "thread")`` is ``"2 threads"``, ``plural(2, "process")`` ``"2 processes"``."""
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('s') else 's'}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""

    def cell(v):  # two significant digits below 1: a 0.085 req/s judge is not "0.1"
        if not isinstance(v, float):
            return str(v)
        return f"{v:.1f}" if abs(v) >= 1 or v == 0 else f"{v:.2g}"

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# Architectures for throughput runs where real weights cannot be shipped (e.g. a
# lent GPU machine with no package index): same shapes, random weights, the
# tiny model's tokenizer (ids it cannot decode print as nothing). Speed depends
# on shapes, not on weight values.
ARCHS = {
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "gemma3-270m": dict(  # Gemma-3-270M's sizes in a Llama: a 262k vocabulary on a 640-wide model
        hidden_size=640,
        intermediate_size=2048,
        num_hidden_layers=18,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=256,
        vocab_size=262144,
        tie_word_embeddings=True,
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
}


def random_model(arch: str) -> str:
    """A local model directory with ``arch``'s shapes and random weights (built once)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rayalign.models import TINY, cache_dir, resolve_model

    path = cache_dir() / "models" / f"random-{arch}"
    if (path / "config.json").exists():
        return str(path)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY))
    config = LlamaConfig(
        **ARCHS[arch],
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def packed_sft_batch(vocab: int, rows: int, example_len: int, prompt_len: int):
    """An SFT micro-batch of ``rows`` rows, each two packed examples of ``example_len`` random tokens
    (positions restart at the second) whose first ``prompt_len`` carry no loss."""
    import torch

    from rayalign.sft.data import IGNORE_INDEX, Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (rows, 2 * example_len), generator=g)
    labels = ids.clone()
    for start in (0, example_len):
        labels[:, start : start + prompt_len] = IGNORE_INDEX
    positions = torch.arange(example_len).repeat(2).expand(rows, -1).contiguous()
    return Batch(input_ids=ids, labels=labels, position_ids=positions, num_tokens=int(ids.numel()))


def chunk_rows(script: str, archs: str, chunks: str, flag: str, child_args: list[str], threads: int, whole: str):
    """Table rows [shapes, chunk, s / step, speed vs the first chunk, peak GiB, GiB saved, loss] of a
    benchmark that runs its child once per (arch, chunk) under :data:`EXACT_RSS_ENV`, and the last
    child's result; the first chunk of ``chunks`` (comma-separated; 0 reads ``whole``) is each arch's
    baseline."""
    rows, r = [], {}
    for arch in archs.split(","):
        model, base = random_model(arch), None
        for chunk in (int(c) for c in chunks.split(",")):
            args = ["--model", model, flag, str(chunk), *child_args]
            r = run_on_threads(script, args, threads, f"{arch} {flag} {chunk}", EXACT_RSS_ENV)
            base = base or r
            speed, saved = f"{base['step_s'] / r['step_s']:.2f}x", f"{base['peak_gib'] - r['peak_gib']:.2f}"
            rows.append([arch, chunk or whole, r["step_s"], speed, r["peak_gib"], saved, f"{r['loss']:.5f}"])
    return rows, r


def rl_batch(vocab: int, rows: int, prompt_len: int, completion_len: int):
    """An RL micro-batch (``PolicyBatch``) of ``rows`` random prompts and completions of the given
    lengths, advantages alternating +1 / -1, sampler log-probs -1."""
    import random

    from rayalign.rl.batch import pad_experiences
    from rayalign.types import Experience

    rng = random.Random(0)
    experiences = []
    for i in range(rows):
        prompt = tuple(rng.randrange(3, vocab) for _ in range(prompt_len))
        tokens = tuple(rng.randrange(3, vocab) for _ in range(completion_len))
        experiences.append(Experience(f"p{i}", prompt, tokens, tuple(-1.0 for _ in tokens), (-1.0) ** i, 1.0))
    return pad_experiences(experiences, 0)


def rl_learner_step(model, reference, batch, optimizer, device: str, bf16: bool, rl) -> float:
    """One RL learner step as rayalign's learners take it; its loss. The frozen reference's log-probs,
    the learners' own closure (``rayalign.rl.learn.micro_step``: the policy's token log-probs and
    entropies, the clipped loss with the KL penalty) under autocast, backward, clip, AdamW.
    ``rl`` is an ``RLConfig`` (its ``logprob_chunk``, ``clip_eps``, ``kl_coef``)."""
    from collections import defaultdict

    import torch

    from rayalign.models import autocast
    from rayalign.rl.batch import reference_logprobs
    from rayalign.rl.learn import MicroBatch, micro_step

    ref = reference_logprobs(reference, batch, device, bf16=bf16, chunk=rl.logprob_chunk)
    m = MicroBatch(batch, ref, batch.old_logprobs.to(device), weight=1.0)
    with autocast(device, bf16):
        loss = micro_step(m, rl, defaultdict(float))(model)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def time_steps(step, steps: int, device: str, *, cpu_peak: bool = False) -> tuple[float, float | None]:
    """Mean seconds of ``steps`` calls of ``step`` after one warm-up call, and the peak GiB over the
    timed ones: allocated on CUDA; with ``cpu_peak`` on CPU, the process's peak resident set (Linux;
    reset after the warm-up; run the child under :data:`EXACT_RSS_ENV` so that freed tensors leave it).
    None otherwise."""
    import torch

    cuda = device.startswith("cuda")
    step()  # warm-up: kernels, allocator, optimizer state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    elif cpu_peak:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    if cuda:
        return seconds, torch.cuda.max_memory_allocated() / 2**30
    return seconds, _peak_rss_gib() if cpu_peak else None


EXACT_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
"""glibc serves every allocation of 64 KiB or more (every sizeable tensor) by its own mapping and
unmaps it when freed, instead of keeping it in a heap; the resident set then follows live tensors."""


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB
    raise RuntimeError("/proc/self/status has no VmHWM: peak memory needs Linux")


def trainable_model(source: str, device: str, threads: int):
    """(model, AdamW) for a benchmark child: ``threads`` torch threads, float32 weights in train mode
    (mixed precision is the step's autocast, as in the learners)."""
    import torch

    from rayalign.models import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(source, dtype="float32", device=device)
    return model.train(), torch.optim.AdamW(model.parameters(), lr=1e-6)
