"""`rayalign run` without Ray: stage parsing, per-stage overrides, the order the stages run in,
and which stages a re-run skips (the stage functions are stand-ins that write each stage's output)."""

import json

import pytest

from rayalign import pipeline
from rayalign.errors import ConfigError, RayalignError
from rayalign.pipeline import STAGES, StageSummary, parse_stages, run_pipeline, split_overrides, stage_outputs


@pytest.mark.parametrize(
    ("text", "stages"),
    [
        ("generate,sft,rl,eval", STAGES),
        ("eval, sft", ("sft", "eval")),  # pipeline order whatever the written order
        ("rl,rl", ("rl",)),
    ],
)
def test_parse_stages(text, stages):
    assert parse_stages(text) == stages


@pytest.mark.parametrize("text", ["", "sft,train", "stage1"])
def test_parse_stages_names_the_stages_it_knows(text):
    with pytest.raises(ConfigError, match="stages: generate,sft,rl,eval"):
        parse_stages(text)


def test_split_overrides_scopes_stage_prefixed_ones():
    common, scoped = split_overrides(["--tracking.run_dir=r", "--rl:judge.k=1", "--eval:judge.k=1", "--rl:rl.lr=1"])
    assert common == ["--tracking.run_dir=r"]
    assert scoped == {"rl": ["--judge.k=1", "--rl.lr=1"], "eval": ["--judge.k=1"]}
    with pytest.raises(ConfigError, match="no stage 'train'"):
        split_overrides(["--train:judge.k=1"])


class FakeStages:
    """Stand-ins for the stage functions: record the call and the judge's k, write the stage's output."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def runners(self):
        return {stage: (lambda cfg, stage=stage: self._run(stage, cfg)) for stage in STAGES}

    def _run(self, stage, cfg) -> StageSummary:
        self.calls.append((stage, cfg.judge.k))
        out = stage_outputs(cfg, stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        return StageSummary(stage, f"{stage} done in 1s", (("wrote", str(out)),), 1.0)


@pytest.fixture
def run(repo, tmp_path):
    fake, lines = FakeStages(), []

    def run(*overrides, stages=STAGES, force=False):
        fake.calls.clear()
        config = repo / "configs/quickstart.yaml"
        overrides = [f"--tracking.run_dir={tmp_path / 'run'}", *overrides]
        run_pipeline(config, overrides, stages, force=force, runners=fake.runners(), log=lines.append)
        return [stage for stage, _ in fake.calls]

    run.fake, run.lines, run.dir = fake, lines, tmp_path / "run"
    return run


def test_the_stages_run_in_order_with_their_own_overrides(run):
    assert run("--rl:judge.k=1", "--eval:judge.k=3") == list(STAGES)
    assert run.fake.calls == [("generate", 2), ("sft", 2), ("rl", 1), ("eval", 3)]  # quickstart's judge.k is 2
    assert "rl done in 1s\n  wrote  " in "\n".join(run.lines)  # each stage's summary block
    records = json.loads((run.dir / "pipeline.json").read_text())
    assert list(records) == list(STAGES) and records["sft"]["headline"] == "sft done in 1s"


def test_a_rerun_skips_finished_stages_and_redoes_those_after_a_change(run):
    run()
    assert run() == []  # everything finished with these settings
    assert "[run] sft: finished" in run.lines[-3] and "skipped" in run.lines[-3]
    assert run("--sft.lr=2e-5") == ["sft", "rl", "eval"]  # sft's settings changed; the stages after it follow
    assert run("--sft.lr=2e-5") == []
    assert run("--sft.lr=2e-5", "--eval.limit=3") == ["eval"]  # eval's own section: only eval
    assert run("--sft.lr=2e-5", "--eval.limit=3", force=True) == list(STAGES)


def test_a_stage_whose_output_is_gone_runs_again(run):
    run()
    (run.dir / "rl" / "model" / "config.json").unlink()
    assert run() == ["rl", "eval"]


def test_a_subset_of_stages_runs_alone(run):
    assert run(stages=("generate", "eval")) == ["generate", "eval"]
    assert run(stages=("sft",)) == ["sft"]


def test_every_stage_config_is_checked_before_the_first_stage_starts(run):
    with pytest.raises(ConfigError, match="eval.lmit"):
        run("--eval:eval.lmit=3")
    assert run.fake.calls == []


def test_eval_targets_name_this_runs_models(repo, tmp_path):
    from rayalign.config import load_config

    cfg = load_config(repo / "configs/quickstart.yaml", [f"--tracking.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="sft: no model at .*sft/model: run the sft stage first"):
        pipeline.eval_targets(cfg)
    for stage in ("sft", "rl"):
        (tmp_path / stage / "model").mkdir(parents=True)
    targets = pipeline.eval_targets(cfg)
    assert [(t.name, t.spec_in_context) for t in targets] == [
        ("base", False),
        ("sft", False),
        ("rl", False),
        ("base+spec", True),
    ]
    assert targets[0].model == cfg.model.policy and targets[2].model == str(tmp_path / "rl" / "model")
    # --checkpoints replaces eval.targets, and then only --spec-in-context adds spec variants.
    named = pipeline.eval_targets(cfg, "x=builtin:tiny", None)
    assert [t.name for t in named] == ["x"]


def test_rl_in_the_pipeline_starts_from_the_sft_model(repo, tmp_path):
    from rayalign.config import load_config

    cfg = load_config(repo / "configs/quickstart.yaml", [f"--tracking.run_dir={tmp_path}"])
    with pytest.raises(RayalignError, match=f"rl.init: no model at {tmp_path}/sft/model"):
        pipeline.RUNNERS["rl"](cfg)
