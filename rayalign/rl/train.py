"""The RL driver: prompts -> judge service + sampler pool -> Ray Train learners
-> a Hugging Face model in ``<output_dir>/model``.

    result = run_rl(cfg, "runs/quickstart/rl")
    result.rewards  # mean reward of each step this call trained

The policy starts from ``rl.init`` (the SFT model) or ``model.policy``; the
judge is ``judge.model`` or the base ``model.policy``, never the policy being
trained. ``<output_dir>/checkpoints/rl/`` is Ray Train's run folder. Running
again with ``resume=True`` (the default) continues from its latest checkpoint
at the same step, data position and policy version, even after the driver
was killed; ``resume=False`` deletes those checkpoints and starts over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import ray

from rayalign.cluster import init_ray
from rayalign.config import Config
from rayalign.errors import ConfigError
from rayalign.judge.service import JudgeSettings, judge_session
from rayalign.models import load_tokenizer, resolve_model
from rayalign.resource_plan import check_resource_plan
from rayalign.rl.job import RLJob
from rayalign.rl.loop import RLSummary, rl_loop
from rayalign.rl.reference import ReferenceScorer
from rayalign.rollout.engine import EngineConfig
from rayalign.rollout.pool import PoolResources, RolloutPool
from rayalign.spec import load_spec
from rayalign.stage1.categories import categorise
from rayalign.stage1.prompts import training_prompts
from rayalign.training import Trained, checkpoint_storage, fit


@dataclass(frozen=True)
class RLResult:
    """What one ``run_rl`` call did."""

    steps: int
    """Steps done in total (including those before a resume)."""
    start_step: int
    """Step this call started from (0, or the resumed checkpoint's step)."""
    rewards: tuple[float, ...]
    """Mean reward of each step this call trained (steps start_step+1 .. steps)."""
    kls: tuple[float, ...]
    prompts_seen: int
    """Data position after the last step."""
    policy_version: int
    completions_per_s: float
    """Completions trained on per second of steps (generate + reward + learn + sync), checkpoints excluded."""
    checkpoint: Path
    model_dir: Path

    @classmethod
    def of(cls, trained: Trained[RLSummary]) -> RLResult:
        """What this call did: one that found training complete started at its last step and trained nothing."""
        summary = trained.summary
        return cls(
            steps=summary.step,
            start_step=summary.start_step if trained.ran else summary.step,
            rewards=summary.rewards if trained.ran else (),
            kls=summary.kls if trained.ran else (),
            prompts_seen=summary.prompts_seen,
            policy_version=summary.policy_version,
            completions_per_s=summary.completions_per_s if trained.ran else 0.0,
            checkpoint=trained.checkpoint,
            model_dir=trained.model_dir,
        )


def prompts_fingerprint(prompt_ids: list[str]) -> str:
    """A hash of the training prompts' ids, in order.

    >>> prompts_fingerprint(["a", "b"]) == prompts_fingerprint(["a", "b"]) != prompts_fingerprint(["b", "a"])
    True
    """
    return hashlib.sha256("\n".join(prompt_ids).encode()).hexdigest()[:16]


def run_rl(cfg: Config, output_dir: str | Path, *, resume: bool = True, log=print) -> RLResult:
    """Train the policy against the judge reward with Ray Train learners.

    Per-step metrics (``rl/reward_mean``, ``rl/kl``, ``rl/clip_fraction``,
    ``rl/entropy``, ``rl/unscorable_rate``, ``rl/reward/<category>``,
    ``timing/<phase>``, ...) and sample tables go to the tracker in
    ``cfg.tracking.run_dir``.
    """
    check_resource_plan(cfg)  # an actor that cannot be placed would wait forever
    output_dir, storage = checkpoint_storage(output_dir, "rl", cfg.tracking.run_dir, resume=resume)
    prompts, _, summary = training_prompts(cfg, load_spec(cfg.spec.path))
    if not prompts:
        raise ConfigError("no training prompt left", field="data.prompts")
    model_path = Path(resolve_model(cfg.rl.init or cfg.model.policy)).resolve()
    log(f"[rl] prompts: {summary}; training on {len(prompts)}; policy starts from {model_path}")
    init_ray(cfg.cluster)
    with judge_session(cfg, JudgeSettings.from_config(cfg)) as client:
        prompts = categorise(cfg, prompts, client, log)  # stage 1's saved answers, or the judge's now
        return RLResult.of(_train(cfg, prompts, model_path, storage, output_dir))


def _train(cfg: Config, prompts, model_path: Path, storage: Path, output_dir: Path) -> Trained[RLSummary]:
    """The Ray Train run, with a sampler pool that lives as long as it does."""
    pool = RolloutPool(EngineConfig.from_config(cfg, model=str(model_path)), PoolResources.from_config(cfg))
    pad_id = load_tokenizer(str(model_path)).pad_token_id
    reference = _reference_actor(cfg, model_path, pad_id)
    try:
        pool.wait_ready()
        job = RLJob(
            cfg=cfg,
            model_path=str(model_path),
            run_dir=str(Path(cfg.tracking.run_dir).resolve()),
            pad_id=pad_id,
            fingerprint=prompts_fingerprint([p.id for p in prompts]),
            total_steps=cfg.rl.steps,
            prompts=ray.put(prompts),
            pool=pool,
            reference=reference,
        )
        return fit(rl_loop, job, storage, output_dir, RLSummary)
    finally:
        pool.shutdown()
        if reference is not None:
            ray.kill(reference)


def _reference_actor(cfg: Config, model_path: Path, pad_id: int):
    """The ReferenceScorer actor (rl.reference.placement: engine), or None."""
    ref = cfg.rl.reference
    if ref.placement != "engine":
        return None
    options = {"num_cpus": ref.cpus_per_worker, "num_gpus": ref.gpus_per_worker, "max_restarts": 2}
    if ref.resource:
        options["resources"] = {ref.resource: 1}
    gpu = ref.gpus_per_worker > 0
    return (
        ray.remote(ReferenceScorer)
        .options(**options)
        .remote(
            str(model_path),
            cfg.rl.micro_batch_size,
            pad_id,
            threads=ref.threads or cfg.model.threads,
            device="cuda" if gpu else "cpu",
            dtype=cfg.model.dtype,
            logprob_chunk=cfg.rl.logprob_chunk,
        )
    )
