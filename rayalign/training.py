"""The training scaffold SFT and RL share on Ray Train: a job, its checkpoints,
their restoration, and the typed summary that crosses back to the driver.

A stage extends :class:`TrainingJob` with its data and writes its own step;
everything around the step is here:

    driver:  checkpoint_storage -> fit(loop, job, storage, output_dir, Summary) -> Trained(summary, checkpoint, model)
    worker:  setup_worker -> build_learner(learner_settings(job, ...)) -> restore(learner, job, rank, world, fresh)
             -> for each step: <the stage's step> -> reporter.step(...) -> checkpoint_if_due(...)

Progress crosses back live through a queue: rank 0's :class:`StepReporter`
puts a :class:`StepReport` per step, and a thread of the driver draws them as
the stage's progress line (:mod:`rayalign.progress`), so it reaches the console
even though workers' output is not forwarded to the driver (:mod:`rayalign.cluster`).

A checkpoint is one ``step-NNNNNN`` folder, merged by Ray Train from every
rank's part: ``model/`` (Hugging Face weights + tokenizer, rank 0),
``state.json`` (the stage's state record, rank 0), ``rng_rank<r>.pt`` (each
rank's RNG state) and the learner's optimizer state
(:mod:`rayalign.learners`). The metrics reported with it are the stage's
summary record (:func:`rayalign.types.to_dict`); the driver rebuilds it with
:func:`rayalign.types.from_dict`. Once every rank has stored its part, rank 0
names the folder in ``latest.json``: a run whose Ray Train record of its
checkpoints was left unreadable by a kill resumes from that (:mod:`rayalign.recovery`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue

from rayalign.config import Config, LearnerConfig
from rayalign.config import to_dict as config_dict
from rayalign.learners import Learner, LearnerSettings, ResumeError, rng_state, set_rng_state
from rayalign.models import mixed_precision
from rayalign.progress import ProgressLine
from rayalign.recovery import LATEST, forget_recovered, record_latest, recover
from rayalign.tracking import Tracker, forget_run, start_tracking
from rayalign.types import from_dict, to_dict

S = TypeVar("S")
"""A stage's state record (saved in state.json) or summary record (reported with a checkpoint)."""


@dataclass(frozen=True)
class TrainingJob:
    """What every worker of a training stage needs, built once by the driver; a stage's job adds its data."""

    stage: ClassVar[str] = ""
    """The config section (sft, rl); also the tracker's stage and the Ray Train run name."""
    data_name: ClassVar[str] = "data"
    """What ``fingerprint`` hashes, for the resume error."""
    data_keys: ClassVar[str] = "the same data"
    """What keeps the fingerprint, for the resume error."""

    cfg: Config
    model_path: str
    """Absolute local HF directory of the starting weights."""
    run_dir: str
    """Absolute directory of the tracker's metrics.jsonl."""
    pad_id: int
    fingerprint: str
    """Hash of the training data; a checkpoint made on other data is refused."""
    total_steps: int
    """The step this run ends at (the last checkpoint is written there)."""
    call: str = field(default_factory=lambda: uuid.uuid4().hex[:12], kw_only=True)
    """This driver call's id, stamped on the summaries its workers report: a call that finds training already
    complete gets back the summary of the call that completed it, and must not present it as its own."""
    checkpoints: str = field(default="", kw_only=True)
    """This stage's checkpoint folder (``<storage>/<stage>``), set by :func:`fit`: rank 0 records each
    complete checkpoint there (:data:`LATEST`)."""
    resume_from: str = field(default="", kw_only=True)
    """A checkpoint folder to resume from when Ray Train has none to give (its record of them was
    unreadable, see :func:`recover`); empty: Ray Train's own."""

    @property
    def learner(self) -> LearnerConfig:
        """``<stage>.learner``: strategy, ZeRO stage, resources, clipping, checkpoint cadence."""
        return getattr(self.cfg, self.stage).learner

    @property
    def use_gpu(self) -> bool:
        return self.learner.gpus_per_worker > 0

    @property
    def bf16(self) -> bool:
        """bfloat16 mixed precision (:func:`rayalign.models.mixed_precision`): with ``model.dtype: auto``
        on GPU and on CPUs with native bf16, read where this is called (the learner's own node)."""
        return mixed_precision(self.cfg.model.dtype, "cuda" if self.use_gpu else "cpu")

    def resume_problem(self, saved: Any, checkpoint: str) -> str | None:
        """A stage's own reason to refuse a checkpoint (beyond data and world size), or None."""
        return None


def learner_settings(
    job: TrainingJob, grad_accum: int, *, weight_decay: float = 0.0, lora: bool = False
) -> LearnerSettings:
    """The learner of ``job``'s stage: ``<stage>.learner`` plus the stage's lr and micro-batch size."""
    section, learner = getattr(job.cfg, job.stage), job.learner
    return LearnerSettings(
        strategy=learner.strategy,
        zero_stage=learner.zero_stage,
        lr=section.lr,
        weight_decay=weight_decay,
        max_grad_norm=learner.max_grad_norm,
        micro_batch_size=section.micro_batch_size,
        grad_accum=grad_accum,
        lora=lora,
        use_gpu=job.use_gpu,
        bf16=job.bf16,
    )


# ------------------------------------------------------------ progress


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    """Seconds of the block into ``timings[phase]`` (logged as ``timing/<phase>``)."""
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = time.perf_counter() - began


def due(step: int, every: int, total: int) -> bool:
    """Every ``every`` steps, and at the last.

    >>> [s for s in range(1, 8) if due(s, 3, 7)]
    [3, 6, 7]
    """
    return step % every == 0 or step == total


@dataclass
class Progress:
    """What this call has trained (a resumed run starts at ``start_step``); a
    stage adds its per-step values and builds its summary from them."""

    start_step: int
    call: str = ""
    """The reporting driver call (:attr:`TrainingJob.call`)."""
    seconds: float = 0.0
    """Seconds of the steps this call ran (checkpoints excluded)."""
    items: int = 0
    """What those steps trained on: tokens (SFT) or completions (RL)."""

    def rate(self) -> float:
        """Items per second of steps."""
        return self.items / max(self.seconds, 1e-9)

    def summary(self, state: Any) -> Any:
        """The record reported with a checkpoint; the driver builds the stage's result from it."""
        raise NotImplementedError


@dataclass(frozen=True)
class StepReport:
    """One finished step, from rank 0 to the driver's progress line."""

    step: int
    """Steps done in total."""
    total: int
    values: dict[str, float] = field(default_factory=dict)
    """What the line shows next to the counts, e.g. {"loss": 1.23, "tok/s": 512.0}."""


class StepReporter:
    """Rank 0's end of the progress queue (``config["progress"]``); a no-op elsewhere or without a queue.
    Progress never fails a step: a lost queue only stops the line."""

    def __init__(self, config: Mapping, rank: int):
        self.queue = config.get("progress") if rank == 0 else None

    def step(self, step: int, total: int, values: Mapping[str, float]) -> None:
        if self.queue is None:
            return
        try:
            self.queue.put_nowait(StepReport(step, total, {k: float(v) for k, v in values.items()}))
        except Exception:  # noqa: BLE001 - the queue's actor is gone: train on without a progress line
            self.queue = None


# ------------------------------------------------------- Ray Train workers


def setup_worker(job: TrainingJob) -> tuple[int, int]:
    """Threads and device for this Ray Train worker; its (rank, world size)."""
    torch.set_num_threads(job.learner.threads or job.cfg.model.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if job.use_gpu else "cpu")
    if job.use_gpu:  # DeepSpeed takes the current CUDA device
        torch.cuda.set_device(ray.train.torch.get_device())
    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


@contextmanager
def rank0_tracker(job: TrainingJob, rank: int) -> Iterator[Tracker]:
    """Rank 0 logs to the stage's tracker (a resumed stage continues its W&B run);
    the others get one that writes nowhere."""
    cfg = job.cfg
    tracker = (
        start_tracking(cfg.tracking, job.stage, config_dict(cfg), run_dir=job.run_dir, resume=True)
        if rank == 0
        else Tracker(None)
    )
    try:
        yield tracker
    finally:
        tracker.finish()


def restore(learner: Learner, job: TrainingJob, rank: int, world_size: int, fresh: S) -> S:
    """The state of this run's latest checkpoint (weights, optimizer, RNG loaded into
    ``learner``), or ``fresh`` when there is none. A checkpoint made on other data
    or by another number of workers is refused with :class:`ResumeError`."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and job.resume_from:
        checkpoint = Checkpoint.from_directory(job.resume_from)
    if checkpoint is None:
        return fresh
    with checkpoint.as_directory() as tmp:
        directory = Path(tmp)
        saved = type(fresh)(**json.loads((directory / "state.json").read_text()))
        _check_resume(job, saved, world_size, directory.name)
        learner.load_state(directory, rank)
        set_rng_state(torch.load(directory / f"rng_rank{rank}.pt", weights_only=False))
    return saved


def _check_resume(job: TrainingJob, saved: Any, world_size: int, checkpoint: str) -> None:
    if saved.fingerprint != job.fingerprint:
        raise ResumeError(
            f"checkpoint {checkpoint} was made on other {job.data_name} ({saved.fingerprint}, now "
            f"{job.fingerprint}); resume with {job.data_keys}, or restart"
        )
    problem = job.resume_problem(saved, checkpoint)
    if problem:
        raise ResumeError(problem)
    if saved.world_size != world_size:
        raise ResumeError(
            f"checkpoint {checkpoint} was made by {saved.world_size} workers; {job.stage}.learner.num_workers "
            f"is {world_size} (ZeRO optimizer shards cannot be re-split)"
        )


def checkpoint_if_due(job: TrainingJob, learner: Learner, tokenizer, state, rank: int, tracker, progress) -> None:
    """Every ``<stage>.learner.checkpoint_every`` steps and at the last: a checkpoint
    of ``state`` with ``progress``'s summary; its time logged as ``timing/checkpoint``."""
    if not due(state.step, job.learner.checkpoint_every, job.total_steps):
        return
    timings: dict[str, float] = {}
    with timed(timings, "checkpoint"):
        report_checkpoint(learner, tokenizer, state, rank, progress.summary(state), job.checkpoints)
    tracker.log({"timing/checkpoint": timings["checkpoint"]}, step=state.step)


def report_checkpoint(learner: Learner, tokenizer, state, rank: int, summary, checkpoints: str = "") -> None:
    """Every rank writes its part (optimizer shard, RNG state; rank 0 the HF
    model and ``state.json``) and reports it with ``summary``; Ray Train merges
    the parts into one ``step-NNNNNN`` folder. Once every rank has stored its
    part, rank 0 records the folder in ``checkpoints`` (:data:`LATEST`)."""
    name = f"step-{state.step:06d}"
    with tempfile.TemporaryDirectory(prefix="rayalign-ckpt-") as tmp:
        directory = Path(tmp)
        learner.save_state(directory, rank)
        learner.export(directory / "model", tokenizer, rank)
        torch.save(rng_state(), directory / f"rng_rank{rank}.pt")
        if rank == 0:
            (directory / "state.json").write_text(json.dumps(asdict(state), indent=2))
        checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(to_dict(summary), checkpoint=checkpoint, checkpoint_dir_name=name)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # each rank uploads its own part: wait for all of them
    if rank == 0 and checkpoints:
        record_latest(Path(checkpoints), name, to_dict(summary))


# ------------------------------------------------------------ the driver


def scaling_config(learner: LearnerConfig) -> ScalingConfig:
    """Ray Train's ScalingConfig for learners asking ``cpus``/``gpus`` and one unit of ``resource``."""
    resources = {"CPU": learner.cpus_per_worker}
    if learner.gpus_per_worker > 0:
        resources["GPU"] = learner.gpus_per_worker
    if learner.resource:
        resources[learner.resource] = 1
    return ScalingConfig(
        num_workers=learner.num_workers, use_gpu=learner.gpus_per_worker > 0, resources_per_worker=resources
    )


def checkpoint_storage(output_dir: str | Path, stage: str, run_dir: str | Path, *, resume: bool) -> tuple[Path, Path]:
    """(output dir, its checkpoint storage), absolute. ``resume=False`` (a restart)
    wipes the stage's earlier checkpoints and makes its next W&B run a new one."""
    output = Path(output_dir).resolve()
    storage = output / "checkpoints"
    if not resume:
        shutil.rmtree(storage, ignore_errors=True)
        forget_run(run_dir, stage)
    return output, storage


def ray_trainer(loop: Callable[[dict], None], job: TrainingJob, storage: Path, progress=None) -> TorchTrainer:
    """A Ray Train TorchTrainer running ``loop({"job": job, "progress": queue})`` on ``<stage>.learner``;
    gloo on CPU, NCCL on GPU; the newest two checkpoints kept under ``storage/<stage>``."""
    return TorchTrainer(
        loop,
        train_loop_config={"job": job, "progress": progress},
        scaling_config=scaling_config(job.learner),
        torch_config=TorchConfig(backend="nccl" if job.use_gpu else "gloo"),
        run_config=RunConfig(
            name=job.stage, storage_path=str(storage), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
    )


@dataclass(frozen=True)
class Trained(Generic[S]):
    """What a finished training run left."""

    summary: S
    """The summary reported with the latest checkpoint."""
    checkpoint: Path
    """The latest checkpoint folder."""
    model_dir: Path
    """Its model, published in Hugging Face format."""
    ran: bool = True
    """Whether this call trained: False when it found training complete (``summary`` is then the
    completing call's)."""


def fit(
    loop: Callable[[dict], None], job: TrainingJob, storage: Path, output_dir: Path, summary: type[S]
) -> Trained[S]:
    """Run ``loop`` on the job's learners and publish the latest checkpoint's model to
    ``<output_dir>/model``. A run that finds training already complete trains nothing
    and returns what the run that completed it reported. When Ray Train's record of the
    checkpoints is unreadable, the run resumes from rayalign's own (:func:`recover`)."""
    folder = storage / job.stage
    recovered = recover(folder)
    job = dataclasses.replace(job, checkpoints=str(folder), resume_from=str(recovered.checkpoint if recovered else ""))
    if recovered:
        print(f"[{job.stage}] {recovered.reason}; resuming from {recovered.checkpoint.name} ({LATEST})", flush=True)
    print(f"[{job.stage}] starting {job.learner.num_workers} Ray Train learner(s) ({job.learner.strategy})", flush=True)
    with progress_relay(job.stage) as queue:
        result = ray_trainer(loop, job, storage, queue).fit()
    if result.checkpoint is not None and result.metrics:
        checkpoint, metrics = result.checkpoint, result.metrics
    elif recovered:  # resumed at the last step: the learners had nothing to train or report
        checkpoint, metrics = Checkpoint.from_directory(str(recovered.checkpoint)), recovered.summary
    else:
        raise RuntimeError(f"{job.stage.upper()} finished without a checkpoint in {storage}")
    if recovered:
        forget_recovered(folder, recovered.checkpoint, keep=Path(checkpoint.path))
    reported = from_dict(summary, metrics)
    return Trained(
        summary=reported,
        checkpoint=Path(checkpoint.path),
        model_dir=publish_model(checkpoint, output_dir / "model"),
        ran=getattr(reported, "call", "") == job.call,
    )


def publish_model(checkpoint: Checkpoint, destination: Path) -> Path:
    """Copy the checkpoint's HF model to ``destination``, replacing an older one."""
    with checkpoint.as_directory() as tmp:
        source = Path(tmp) / "model"
        staging = destination.with_name(destination.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)
    return destination


@contextmanager
def progress_relay(label: str, *, poll_s: float = 1.0) -> Iterator[Queue]:
    """A queue for rank 0's :class:`StepReport` s, drawn by a driver thread as the ``[label]`` progress line.

    The line starts at the first report (a resumed run's first step is its
    starting point), so its rate and ETA count only steps seen here.
    """
    queue = Queue(actor_options={"num_cpus": 0})  # no CPU: it must never wait for the learners' cores
    stop = threading.Event()
    thread = threading.Thread(target=_draw, args=(queue, label, stop, poll_s), name=f"{label}-progress", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=poll_s * 5)
        with suppress(Exception):
            queue.shutdown()


def _draw(queue: Queue, label: str, stop: threading.Event, poll_s: float) -> None:
    line: ProgressLine | None = None
    try:
        while not stop.is_set():
            try:
                reports = [queue.get(timeout=poll_s)]
            except Empty:
                continue
            line = _show(line, label, reports)
        line = _show(line, label, queue.get_nowait_batch(queue.qsize()))  # the last steps' reports
    except Exception:  # noqa: BLE001 - Ray going down under the thread ends the line, not the stage
        pass
    finally:
        if line is not None:
            line.close()


def _show(line: ProgressLine | None, label: str, reports: list[StepReport]) -> ProgressLine | None:
    for report in reports:
        if line is None:
            line = ProgressLine(label, report.total, unit="step", initial=report.step, values=report.values)
        line.set(report.step, report.values)
    return line
