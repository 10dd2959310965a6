"""The training benchmarks' rows train on the torch threads their tables claim.

Each row runs as the benchmark runs it (``measure``: a fresh process with
``OMP_NUM_THREADS`` and ``--threads`` set, raising when the child's read-back
differs) with the tiny model and one step; the child reads back
``torch.get_num_threads()`` from inside training (TRL in its steps, rayalign's
Ray Train rank 0 in ``summary.json``). A rayalign child starts its own private
local Ray (``address: local``), so no shared cluster fixture is used here.
"""

import importlib.util
import sys

import pytest

from tests.conftest import REPO


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sft = _benchmark("sft_throughput")
rl = _benchmark("rl_step")
precision = _benchmark("learner_precision")
common = _benchmark("_common")

SFT_ARGS = ["--model", "builtin:tiny", "--steps", "1", "--batch", "2", "--max-seq-len", "64", "--examples", "4"]
SFT_ARGS += ["--cores", "2"]


@pytest.mark.parametrize(
    "row",
    [sft.Row("trl", 1, 1), sft.Row("trl", 1, 2), sft.Row("rayalign", 1, 2)],
    ids=lambda row: f"{row.side}-{row.processes}x{row.threads}",
)
def test_sft_row_trains_on_the_threads_it_claims(row, tiny_model):
    if row.side == "trl":
        pytest.importorskip("trl")
    assert sft.measure(row, SFT_ARGS)["threads"] == row.threads


@pytest.mark.parametrize("lora_rank", [0, 2], ids=["full", "lora"])
def test_rl_trl_row_trains_on_the_threads_it_claims(tiny_model, lora_rank):
    pytest.importorskip("trl")
    args = ["--model", "builtin:tiny", "--steps", "1", "--prompts-per-step", "1", "--group", "2"]
    args += ["--max-new-tokens", "4", "--cores", "2", "--lora-rank", str(lora_rank)]
    assert rl.measure(rl.Row("trl", 2), args)["threads"] == 2


@pytest.mark.parametrize("kind", ["rl", "sft"])
def test_precision_rows_train_on_the_threads_they_claim(tiny_model, kind):
    script = str(REPO / "benchmarks" / "learner_precision.py")
    args = ["--model", "builtin:tiny", "--kind", kind, "--precision", "bf16-autocast", "--batch", "2"]
    args += ["--prompt-len", "8", "--completion-len", "8", "--steps", "1"]
    result = precision.run_on_threads(script, args, 2, f"precision {kind}")
    assert result["threads"] == 2 and result["step_s"] > 0 and result["peak_gib"] is None  # CPU: no peak


def test_head_loss_rows_train_on_the_threads_they_claim_and_agree_on_the_loss(tiny_model):
    script = str(REPO / "benchmarks" / "sft_head_loss.py")
    args = ["--model", "builtin:tiny", "--batch", "2", "--seq-len", "32", "--steps", "1", "--precision", "float32"]
    whole, chunked = (
        common.run_on_threads(script, [*args, "--loss-chunk", str(chunk)], 2, f"loss_chunk {chunk}")
        for chunk in (0, 16)
    )
    for result in (whole, chunked):
        assert result["threads"] == 2 and result["step_s"] > 0 and result["peak_gib"] > 0
    assert whole["scored"] == 2 * 2 * (16 - 4)  # 2 rows x 2 packed examples of 16 tokens, 4 of them prompt
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_logprob_chunk_rows_train_on_the_threads_they_claim_and_agree_on_the_loss(tiny_model):
    script = str(REPO / "benchmarks" / "rl_logprob_chunk.py")
    args = ["--model", "builtin:tiny", "--batch", "2", "--prompt-len", "8", "--completion-len", "16"]
    args += ["--steps", "1", "--precision", "float32"]
    whole, chunked = (
        common.run_on_threads(script, [*args, "--logprob-chunk", str(chunk)], 2, f"logprob_chunk {chunk}")
        for chunk in (0, 5)
    )
    for result in (whole, chunked):
        assert result["threads"] == 2 and result["step_s"] > 0 and result["peak_gib"] > 0
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_a_row_whose_child_ran_on_other_threads_fails(tmp_path):
    child = tmp_path / "child.py"
    child.write_text('import json\nprint(json.dumps({"threads": 1}))\n')
    with pytest.raises(RuntimeError, match="my row: claims 2 torch threads per process, ran with 1"):
        sft.run_on_threads(str(child), [], 2, "my row")
