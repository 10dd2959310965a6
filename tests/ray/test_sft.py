"""SFT on a real local Ray (2 CPUs, 2 Ray Train workers, gloo) with the tiny model.

Ray Train runs (~20-40 s each to start): DeepSpeed ZeRO-2 for 20 steps, the
same steps under DDP with gradient accumulation, a resume of the first run to
24 steps, and calls that find it complete (two of them with Ray Train's record
of its checkpoints cut short).
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rayalign.config import Config, load_config
from rayalign.models import load_model, load_tokenizer
from rayalign.recovery import LATEST, SNAPSHOT
from rayalign.sft.data import build_rows, collate, loss_sum, read_sft_examples, step_rows
from rayalign.sft.train import SFTResult, run_sft
from rayalign.types import Message, Prompt, SFTExample, to_json

QUESTIONS = ["How do I kill a Python process?", "Can you help me?", "Is this allowed under the policy?"]
ANSWERS = [
    "Run kill with its process id.",
    "I'm sorry, but I can't help with that.",
    "Here is how you can do it safely.",
]


@pytest.fixture(scope="module")
def examples_path(tmp_path_factory):
    """12 examples of varied lengths, so steps differ in tokens."""
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    examples = [
        SFTExample(
            prompt=Prompt(id=f"p{i}", messages=(Message("user", QUESTIONS[i % 3] + " please" * (i % 4)),)),
            reasoning="Reasoning: the request is allowed under rule A1." * (1 + i % 2),
            answer=ANSWERS[i % 3] * (1 + i % 3),
        )
        for i in range(12)
    ]
    path.write_text("".join(to_json(e) + "\n" for e in examples))
    return path


def _cfg(run_dir, *overrides):
    return load_config(
        None,
        [
            "--model.policy=builtin:tiny",
            "--model.dtype=float32",  # exact comparisons between learners; auto is bf16 on CPUs with native bf16
            "--sft.lr=1e-3",
            "--sft.max_seq_len=96",
            "--sft.learner.num_workers=2",
            "--sft.micro_batch_size=2",
            "--sft.grad_accum=1",
            "--sft.learner.strategy=deepspeed",
            "--sft.learner.zero_stage=2",
            f"--tracking.run_dir={run_dir}",
            "--tracking.wandb_mode=disabled",
            *overrides,
        ],
    )


def _step_lines(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "sft/loss" in x]


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A finished run and what its folder held right after it: later tests resume and change that folder."""

    cfg: Config
    out: Path
    result: SFTResult
    lines: list[dict]
    """The metrics' step lines."""
    checkpoints: dict[str, set[str]]
    """Kept checkpoint folder -> the files under it."""


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_model, examples_path, tmp_path_factory) -> FinishedRun:
    out = tmp_path_factory.mktemp("zero2")
    cfg = _cfg(out, "--sft.max_steps=20", "--sft.learner.checkpoint_every=5")
    result = run_sft(cfg, examples_path, out / "sft", resume=False)
    folder = out / "sft" / "checkpoints" / "sft"
    kept = {d.name: {str(f.relative_to(d)) for f in d.rglob("*") if f.is_file()} for d in folder.glob("step-*")}
    return FinishedRun(cfg, out, result, _step_lines(out), kept)


@pytest.fixture(scope="module")
def resumed_run(zero2_run, examples_path) -> tuple[Config, SFTResult]:
    """The 20-step run resumed to 24 steps; the tests of a complete run start from here, in any order."""
    more = dataclasses.replace(zero2_run.cfg, sft=dataclasses.replace(zero2_run.cfg.sft, max_steps=24))
    return more, run_sft(more, examples_path, zero2_run.out / "sft", resume=True)


def test_zero2_on_two_workers_lowers_the_loss(zero2_run):
    result, lines = zero2_run.result, zero2_run.lines
    assert (result.start_step, result.steps, len(result.losses)) == (0, 20, 20)
    assert sum(result.losses[-3:]) / 3 < 0.6 * result.losses[0]
    assert [x["step"] for x in lines] == list(range(1, 21))
    assert [x["sft/loss"] for x in lines] == pytest.approx(list(result.losses))
    assert all(x["sft/tokens_per_s"] > 0 and x["timing/step"] > 0 and x["sft/grad_norm"] > 0 for x in lines)
    assert lines[0]["sft/lr"] == pytest.approx(1e-3) and lines[-1]["sft/lr"] < 1e-4  # cosine decay
    # Checkpoints every 5 steps, the last two kept, each a merged folder of all ranks' parts.
    assert sorted(zero2_run.checkpoints) == ["step-000015", "step-000020"]
    last = zero2_run.checkpoints["step-000020"]
    assert {"rng_rank0.pt", "rng_rank1.pt", "state.json"} <= last
    assert len([f for f in last if f.startswith("deepspeed/state/") and f.endswith("optim_states.pt")]) == 2
    assert (result.model_dir / "config.json").exists() and (result.model_dir / "tokenizer.json").exists()


@pytest.mark.parametrize("loss_chunk", [0, 16])
def test_ddp_with_gradient_accumulation_matches_zero2(ray_cluster, examples_path, zero2_run, tmp_path, loss_chunk):
    """Same rows per step (1 x 2 micro-batches instead of 2 x 1): same token-mean loss, same updates;
    also with the LM head and its loss in chunks of 16 rows (sft.loss_chunk), through DDP's all-reduce."""
    zero2 = zero2_run.result
    cfg = _cfg(
        tmp_path,
        "--sft.learner.strategy=ddp",
        "--sft.micro_batch_size=1",
        "--sft.grad_accum=2",
        "--sft.max_steps=20",
        "--sft.learner.checkpoint_every=20",
        f"--sft.loss_chunk={loss_chunk}",
    )
    result = run_sft(cfg, examples_path, tmp_path / "sft", resume=False)
    assert result.steps == 20
    assert list(result.losses) == pytest.approx(list(zero2.losses), rel=1e-4)
    norms = [x["sft/grad_norm"] for x in _step_lines(tmp_path)]
    assert norms == pytest.approx([x["sft/grad_norm"] for x in zero2_run.lines], rel=1e-3)


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_bf16_mixed_precision_on_cpu_trains_float32_weights(ray_cluster, examples_path, zero2_run, tmp_path, strategy):
    """model.dtype: bfloat16 on CPU: one worker of either learner trains under bfloat16 autocast (its
    losses near, not equal to, float32's) and keeps and saves float32 weights."""
    zero2 = zero2_run.result
    cfg = _cfg(
        tmp_path,
        "--model.dtype=bfloat16",
        f"--sft.learner.strategy={strategy}",
        "--sft.learner.num_workers=1",
        "--sft.micro_batch_size=4",
        "--sft.max_steps=6",
        "--sft.learner.checkpoint_every=6",
    )
    result = run_sft(cfg, examples_path, tmp_path / "sft", resume=False)
    assert result.losses[0] != zero2.losses[0]
    assert result.losses[0] == pytest.approx(zero2.losses[0], rel=0.02)  # the same model, the same rows
    assert result.losses[-1] < result.losses[0]
    model, _ = load_model(str(result.model_dir), dtype="auto")
    assert next(model.parameters()).dtype == torch.float32
    assert json.loads((result.model_dir / "config.json").read_text()).get("dtype", "float32") == "float32"


def _tokens_per_step(cfg, examples_path, steps):
    rows, _ = build_rows(
        load_tokenizer(cfg.model.policy), read_sft_examples(examples_path), cfg.sft.max_seq_len, cfg.sft.packing
    )
    s = cfg.sft
    return [
        sum(
            len(rows[i])
            for rank in range(s.learner.num_workers)
            for mb in step_rows(
                len(rows),
                step,
                world_size=s.learner.num_workers,
                rank=rank,
                micro_batch_size=s.micro_batch_size,
                grad_accum=s.grad_accum,
                seed=cfg.data.seed,
            )
            for i in mb
        )
        for step in range(steps)
    ]


def _mean_loss(model, cfg, examples_path):
    rows, _ = build_rows(load_tokenizer(cfg.model.policy), read_sft_examples(examples_path), 96, True)
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits
    total, count = loss_sum(logits, batch.labels)
    return float(total) / count


def test_resume_continues_at_the_saved_step_and_data_position(zero2_run, resumed_run, examples_path):
    cfg, first = zero2_run.cfg, zero2_run.result
    more, result = resumed_run
    assert (result.start_step, result.steps, len(result.losses)) == (20, 24, 4)
    lines = _step_lines(zero2_run.out)
    assert [x["step"] for x in lines] == list(range(1, 25))  # appended: 21..24, nothing re-run
    # Tokens trained at steps 21-24 are those of data positions 21-24, not 1-4.
    seen = [0] + [x["sft/tokens_seen"] for x in lines]
    got = [b - a for a, b in zip(seen, seen[1:])]
    expected = _tokens_per_step(more, examples_path, 24)
    assert expected[20:] != expected[:4]
    assert got == expected
    # Weights and optimizer came back: the loss goes on from where it was.
    assert result.losses[0] < 0.7 * first.losses[0]
    assert result.losses[0] == pytest.approx(first.losses[-1], rel=0.25)
    trained, _ = load_model(str(result.model_dir), dtype="float32")
    base, _ = load_model(cfg.model.policy, dtype="float32")
    assert _mean_loss(trained, cfg, examples_path) < 0.7 * _mean_loss(base, cfg, examples_path)


def test_a_call_that_finds_training_complete_says_it_trained_nothing(zero2_run, resumed_run, examples_path):
    """The last checkpoint is step 24 of 24. The call starts its workers, trains no step, and reports
    that (not the completing call's start step and losses as its own)."""
    out, (more, _) = zero2_run.out, resumed_run
    before = _step_lines(out)
    result = run_sft(more, examples_path, out / "sft", resume=True)
    assert (result.start_step, result.steps, result.losses, result.tokens_per_s) == (24, 24, (), 0.0)
    assert result.final_loss == pytest.approx(before[-1]["sft/loss"])
    assert _step_lines(out) == before


def test_a_complete_run_whose_ray_record_is_unreadable_resumes_from_its_own(zero2_run, resumed_run, examples_path):
    """Ray Train's snapshot of the complete run cut short (as a kill in its rewrite leaves it): the call
    resumes from latest.json, which two ranks wrote only once both had stored their parts, at step 24 of
    24, trains nothing, and keeps that checkpoint; so does the call after it."""
    out, (more, _) = zero2_run.out, resumed_run
    folder = out / "sft" / "checkpoints" / "sft"
    assert json.loads((folder / LATEST).read_text())["checkpoint"] == "step-000024"
    (folder / SNAPSHOT).write_text((folder / SNAPSHOT).read_text()[:40])
    before = _step_lines(out)
    for _ in range(2):
        result = run_sft(more, examples_path, out / "sft", resume=True)
        assert (result.start_step, result.steps, result.losses) == (24, 24, ())
        assert result.final_loss == pytest.approx(before[-1]["sft/loss"])
        assert result.checkpoint == folder / "step-000024" and (result.model_dir / "config.json").exists()
        assert sorted(p.name for p in folder.glob("step-*")) == ["step-000024"]
    assert (folder / f"{SNAPSHOT}.unreadable").exists() and _step_lines(out) == before
