"""The tracking module: JSONL always, W&B offline when asked, nothing W&B when disabled."""

import json

import pytest

from rayalign.config import TrackingConfig
from rayalign.tracking import Tracker, forget_run, run_id_path, start_tracking, wandb_mode


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_disabled_tracker_writes_metrics_jsonl_and_no_wandb(tmp_path):
    cfg = TrackingConfig(wandb_mode="disabled", run_dir=str(tmp_path))
    tracker = start_tracking(cfg, "sft", {"sft": {"lr": 1e-5}})
    assert tracker.wandb_run is None
    tracker.log({"sft/loss": 2.5, "timing/step": 0.25}, step=1)
    tracker.log({"sft/loss": float("nan")}, step=2)
    tracker.table("samples", ["prompt", "answer"], [["hi", "hello"]], step=2)
    tracker.summary({"sft/final_loss": 1.5})
    tracker.finish()
    lines = _lines(tmp_path / "metrics.jsonl")
    assert [(x["step"], x["sft/loss"]) for x in lines] == [(1, 2.5), (2, None)]  # NaN is written as null
    assert lines[0]["timing/step"] == 0.25
    assert _lines(tmp_path / "tables.jsonl")[0]["rows"] == [["hi", "hello"]]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"sft/final_loss": 1.5}
    assert not (tmp_path / "wandb").exists()


def test_a_resumed_run_appends_to_the_same_log(tmp_path):
    Tracker(tmp_path).log({"sft/loss": 3.0}, step=1)
    Tracker(tmp_path).log({"sft/loss": 2.0}, step=2)
    assert [x["step"] for x in _lines(tmp_path / "metrics.jsonl")] == [1, 2]


def test_environment_disabled_wins_over_config(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode(TrackingConfig(wandb_mode="online")) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(TrackingConfig(wandb_mode="online")) == "online"


def test_offline_mode_writes_an_offline_wandb_run_under_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", "")  # start_tracking sets it; restored after the test
    cfg = TrackingConfig(wandb_mode="offline", run_dir=str(tmp_path), project="rayalign-test")
    tracker = start_tracking(cfg, "sft", {"sft": {"lr": 1e-5}})
    assert tracker.wandb_run is not None
    tracker.log({"sft/loss": 2.5}, step=1)
    tracker.table("samples", ["prompt", "answer"], [["hi", "hello"]], step=1)
    tracker.summary({"sft/final_loss": 2.5})
    tracker.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))  # the run's event log, for `wandb sync`
    assert _lines(tmp_path / "metrics.jsonl")[0]["sft/loss"] == 2.5


def test_a_resumed_stage_continues_its_wandb_run_until_forgotten(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", "")
    cfg = TrackingConfig(wandb_mode="offline", run_dir=str(tmp_path), project="rayalign-test")

    def start(step):
        tracker = start_tracking(cfg, "rl", {}, resume=True)
        run_id = tracker.wandb_run.id
        tracker.log({"rl/reward_mean": 0.5}, step=step)
        tracker.finish()
        return run_id

    first, resumed = start(1), start(2)  # killed after step 1, resumed at step 2
    assert first == resumed == run_id_path(tmp_path, "rl").read_text().strip()
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{first}"))  # pieces of one id: `wandb sync` joins them
    forget_run(tmp_path, "rl")  # rayalign rl --restart
    assert start(1) != first
    eval_tracker = start_tracking(cfg, "eval", {})  # not resumable: a new run each time
    assert eval_tracker.wandb_run.id != first and not run_id_path(tmp_path, "eval").exists()
    eval_tracker.finish()
