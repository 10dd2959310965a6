"""The run directory: where every stage reads and writes, named once.

::

    <run_dir>/
      stage1/  prompts_train.jsonl prompts_eval.jsonl categories.jsonl
               shards/shard-00000.jsonl ... sft.jsonl filter_report.md
               regeneration.md regeneration.json
      sft/     checkpoints/ model/
      rl/      checkpoints/ model/
      eval/    answers/ report.md *.png coverage.md coverage.png
      metrics.jsonl  tables.jsonl  wandb/  logs/

A stage finds another stage's output through :class:`RunLayout`, never by
importing that stage's driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """Paths under one run directory (``tracking.run_dir``).

    >>> RunLayout("runs/x").sft_data.as_posix()
    'runs/x/stage1/sft.jsonl'
    """

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of(cls, cfg) -> RunLayout:
        return cls(cfg.tracking.run_dir)

    # stage 1
    @property
    def stage1(self) -> Path:
        return self.root / "stage1"

    @property
    def shards(self) -> Path:
        return self.stage1 / "shards"

    def shard(self, index: int) -> Path:
        return self.shards / f"shard-{index:05d}.jsonl"

    def shard_files(self) -> dict[int, Path]:
        """The shard files present, by index (a re-run reuses their decisions)."""
        found = sorted(self.shards.glob("shard-*.jsonl")) if self.shards.is_dir() else []
        return {int(p.stem.removeprefix("shard-")): p for p in found if p.stem.removeprefix("shard-").isdigit()}

    @property
    def prompts_train(self) -> Path:
        return self.stage1 / "prompts_train.jsonl"

    @property
    def prompts_eval(self) -> Path:
        return self.stage1 / "prompts_eval.jsonl"

    @property
    def categories(self) -> Path:
        """The judge's answers for prompts that had no category (shared by stage 1 and RL)."""
        return self.stage1 / "categories.jsonl"

    @property
    def sft_data(self) -> Path:
        return self.stage1 / "sft.jsonl"

    @property
    def filter_report(self) -> Path:
        return self.stage1 / "filter_report.md"

    @property
    def regeneration_report(self) -> Path:
        """What the last stage-1 run reused and regenerated, per category (Markdown)."""
        return self.stage1 / "regeneration.md"

    @property
    def regeneration_json(self) -> Path:
        """The same, per prompt, as JSON."""
        return self.stage1 / "regeneration.json"

    # training stages and eval
    def stage(self, name: str) -> Path:
        """A training stage's output directory (``sft``, ``rl``): checkpoints/ and model/."""
        return self.root / name

    def model(self, stage: str) -> Path:
        """The model a training stage publishes when it finishes."""
        return self.stage(stage) / "model"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def eval_answers(self) -> Path:
        """``<target>.jsonl`` per evaluated target: answers with their verdicts."""
        return self.eval / "answers"

    @property
    def tables(self) -> Path:
        """Sample tables the tracker writes (``tracking.TABLES_FILE``), e.g. RL's ``rl/samples``."""
        return self.root / "tables.jsonl"

    @property
    def coverage_dir(self) -> Path:
        """Where ``rayalign spec coverage`` writes: next to the eval report, else the run directory.

        >>> RunLayout("/nonexistent/run").coverage_dir.as_posix()
        '/nonexistent/run'
        """
        return self.eval if self.eval.is_dir() else self.root

    @property
    def logs(self) -> Path:
        return self.root / "logs"
