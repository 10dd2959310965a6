"""The per-worker RL loop that Ray Train runs. Each step is a flat list of
named, timed phases; rank 0 drives the samplers and the judge, every rank
learns on its share of the step's completions:

    generate   (rank 0)  the sampler pool draws rl.group_size completions per prompt
    reward     (rank 0)  the judge service scores each final answer, reasoning hidden
    advantage  (rank 0)  group-relative advantages; the experiences go to every rank
    learn      (all)     reference log-probs, then rl.epochs_per_step clipped-loss steps (rl/learn.py)
    sync       (rank 0)  the new weights go to the samplers as the next policy version

With ``rl.overlap`` the first three phases of step t + 1 run in a thread of
rank 0 while the learners train on step t (one step off-policy at most).

A checkpoint (every ``rl.learner.checkpoint_every`` steps and at the end) holds:

    model/              the policy in Hugging Face format, from rank 0
    state.json          step, policy version, data position (prompts seen), from rank 0
    rng_rank<r>.pt      each worker's RNG state
    deepspeed/... or ddp_state.pt   weights and optimizer state (rayalign.learners)

A restarted run finds it (rayalign.training.restore), pushes the restored
weights to the samplers under the saved policy version, and goes on at the
same step and data position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import ray
import ray.train.torch
import torch
import torch.distributed as dist

from rayalign.judge.client import JudgeClient
from rayalign.judge.service import connect_judge
from rayalign.learners import build_learner
from rayalign.models import load_tokenizer
from rayalign.rl.advantage import group_advantages
from rayalign.rl.batch import step_prompt_indices
from rayalign.rl.job import RLJob
from rayalign.rl.learn import build_models, learn, micro_batches_per_rank
from rayalign.rl.metrics import TABLE_COLUMNS, Judged, LearnStats, step_metrics, table_rows
from rayalign.rl.reference import with_reference
from rayalign.rl.reward import (
    RewardShaping,
    judge_requests,
    request_id,
    reward_tensors,
    shape_rollout_reward,
)
from rayalign.rollout.engine import sampling_settings
from rayalign.rollout.pool import WeightSource
from rayalign.rollout.weight_sync import LoraSync, plan_buckets
from rayalign.training import (
    Progress,
    StepReporter,
    checkpoint_if_due,
    due,
    learner_settings,
    rank0_tracker,
    restore,
    setup_worker,
    timed,
)
from rayalign.types import Experience, Prompt, Rollout


@dataclass(frozen=True)
class RLState:
    """Where training stands after ``step`` steps (saved in state.json)."""

    step: int = 0
    policy_version: int = 0
    """Weights version the samplers hold (= optimizer updates so far / epochs_per_step)."""
    prompts_seen: int = 0
    """Data position: prompts trained on so far, over all epochs of the prompt set."""
    samples_seen: int = 0
    fingerprint: str = ""
    world_size: int = 0


@dataclass(frozen=True)
class RLSummary:
    """What a run has done, reported with each checkpoint; the driver builds RLResult from it."""

    step: int
    """Steps done in total (including those before a resume)."""
    start_step: int
    """Step this call started from."""
    rewards: tuple[float, ...]
    """Mean reward of each step this call trained (steps start_step+1 .. step)."""
    kls: tuple[float, ...]
    prompts_seen: int
    """Data position after the last step."""
    policy_version: int
    completions_per_s: float
    """Completions trained on per second of steps (generate + reward + learn + sync), checkpoints excluded."""
    call: str = ""
    """The driver call that reported it (:attr:`rayalign.training.TrainingJob.call`)."""


# ------------------------------------------------------------ phases


def generate(job: RLJob, prompts: Sequence[Prompt], step: int) -> list[Rollout]:
    """rl.group_size completions per prompt, grouped by prompt in prompt order."""
    r = job.cfg.rl
    settings = sampling_settings(
        n=r.group_size,
        temperature=r.temperature,
        max_new_tokens=r.max_new_tokens,
        seed=job.cfg.rollout.seed + step,  # new samples each visit of a prompt
        enforce_format=r.enforce_format,
    )
    return job.pool.generate(list(prompts), settings)


def reward(job: RLJob, client: JudgeClient, prompts: Sequence[Prompt], rollouts: Sequence[Rollout]) -> Judged:
    """Judge the well-formed answers (reasoning hidden) and shape every reward."""
    r = job.cfg.rl
    completions, requests = judge_requests({p.id: p for p in prompts}, rollouts)
    verdicts = dict(zip((q.request_id for q in requests), client.score_sync(requests)))
    shaping = RewardShaping(
        malformed_penalty=r.malformed_penalty,
        length_coef=r.length_coef,
        scale=r.reward_scale,
        exclude_truncated=r.truncated == "exclude",
        overlong_buffer=r.overlong_buffer,
        overlong_penalty=r.overlong_penalty,
    )
    per_rollout = [verdicts.get(request_id(x)) for x in rollouts]
    rewards = [
        shape_rollout_reward(x, c, v, r.max_new_tokens, shaping) for x, c, v in zip(rollouts, completions, per_rollout)
    ]
    return Judged(tuple(prompts), tuple(rollouts), tuple(completions), tuple(per_rollout), tuple(rewards))


def advantage(job: RLJob, judged: Judged) -> list[Experience]:
    """Group-relative advantages; unscorable samples get none and stay out of the update."""
    r = job.cfg.rl
    expected = [p.id for p in judged.prompts for _ in range(r.group_size)]
    if [x.prompt_id for x in judged.rollouts] != expected:
        raise RuntimeError("sampler pool returned rollouts out of prompt order; groups would mix prompts")
    values, valid = reward_tensors(judged.rewards)
    adv = group_advantages(values, valid, r.group_size, method=r.advantage)
    return [
        Experience(x.prompt_id, x.prompt_token_ids, x.token_ids, x.logprobs, float(a), rew, x.policy_version)
        for x, a, rew in zip(judged.rollouts, adv.tolist(), judged.rewards)
    ]


def share_experiences(experiences: list[Experience] | None, rank: int, world_size: int) -> list[Experience]:
    """Rank 0's experiences on every rank."""
    if world_size == 1:
        return experiences
    box = [experiences if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync(learner, job: RLJob, version: int, rank: int) -> int:
    """New weights into every sampler, tagged ``version`` (ZeRO-3: all ranks gather);
    returns the bytes rank 0 sent (0 on other ranks)."""
    zero3 = job.learner.strategy == "deepspeed" and job.learner.zero_stage == 3
    if rank != 0 and not zero3:
        return 0
    if job.cfg.rl.sync == "object_store":
        state = learner.full_state_dict()
        if rank == 0:
            job.pool.update_weights(state, version)
        return sum(t.nbytes for t in state.values()) if rank == 0 else 0
    buckets = plan_buckets(learner.weight_layout(), job.cfg.rl.sync_bucket_mib << 20)
    if rank != 0:  # ZeRO-3: gather each bucket with rank 0
        for bucket in buckets:
            with learner.weights(bucket.names):
                pass
        return 0
    gpu, r = job.use_gpu, job.cfg.rl
    lora = LoraSync(r.lora_alpha / r.lora_rank) if r.lora_rank > 0 else None
    source = WeightSource(
        buckets, learner.weights, "nccl" if gpu else "gloo", "cuda" if gpu else "cpu", not zero3, lora
    )
    return job.pool.broadcast_weights(source, version)


# ------------------------------------------------------------ the loop


@dataclass
class _Progress(Progress):
    """Progress counting completions, with each step's mean reward and KL (rank 0)."""

    rewards: list[float] = field(default_factory=list)
    kls: list[float] = field(default_factory=list)

    def summary(self, state: RLState) -> RLSummary:
        return RLSummary(
            step=state.step,
            start_step=self.start_step,
            call=self.call,
            rewards=tuple(self.rewards),
            kls=tuple(self.kls),
            prompts_seen=state.prompts_seen,
            policy_version=state.policy_version,
            completions_per_s=self.rate(),
        )


@dataclass(frozen=True)
class Prepared:
    """One step's judged experiences, ready to learn from (rank 0)."""

    judged: Judged
    experiences: list[Experience]
    timings: dict[str, float]
    """Seconds of the generate, reward and advantage phases."""


def prepare(job: RLJob, client: JudgeClient, prompts: Sequence[Prompt], step: int) -> Prepared:
    """The generate, reward and advantage phases of ``step``."""
    r, timings = job.cfg.rl, {}
    picked = [prompts[i] for i in step_prompt_indices(len(prompts), step, r.prompts_per_step, job.cfg.data.seed)]
    with timed(timings, "generate"):
        rollouts = generate(job, picked, step)
    with timed(timings, "reward"):
        judged = reward(job, client, picked, rollouts)
    with timed(timings, "advantage"):
        experiences = advantage(job, judged)
    if job.reference is not None:
        with timed(timings, "reference"):
            experiences = with_reference(experiences, ray.get(job.reference.score.remote(experiences)))
    return Prepared(judged, experiences, timings)


class _Rollouts:
    """Rank 0's source of prepared steps. With ``rl.overlap`` it prepares step
    t + 1 in a thread while the learners train on step t, so those rollouts
    come from weights one version behind (the PPO ratio, with the sampler's
    log-probs as old log-probs, accounts for it); the staleness bound is 1."""

    def __init__(self, job: RLJob, client: JudgeClient, prompts: Sequence[Prompt]):
        self.job, self.client, self.prompts = job, client, prompts
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="rl-prepare") if job.cfg.rl.overlap else None
        self.pending: tuple[int, Future] | None = None

    def get(self, step: int) -> Prepared:
        if self.pending is not None and self.pending[0] == step:
            prepared = self.pending[1].result()
        else:
            prepared = prepare(self.job, self.client, self.prompts, step)
        self.pending = None
        return prepared

    def prefetch(self, step: int) -> None:
        if self.executor is not None and step < self.job.cfg.rl.steps:
            self.pending = (step, self.executor.submit(prepare, self.job, self.client, self.prompts, step))

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)


def rl_loop(config: dict) -> None:
    """Ray Train's per-worker function: ``config = {"job": RLJob}``."""
    job: RLJob = config["job"]
    r = job.cfg.rl
    rank, world_size = setup_worker(job)
    policy, reference = build_models(job, ray.train.torch.get_device() if job.use_gpu else torch.device("cpu"))
    learner = build_learner(
        learner_settings(job, micro_batches_per_rank(job, world_size), lora=r.lora_rank > 0), policy, world_size
    )
    state = restore(learner, job, rank, world_size, RLState(fingerprint=job.fingerprint, world_size=world_size))
    if state.policy_version > 0:  # samplers start from the initial weights
        sync(learner, job, state.policy_version, rank)
    tokenizer = load_tokenizer(job.model_path) if rank == 0 else None
    rollouts = None
    if rank == 0:
        client = connect_judge(job.cfg.judge.timeout_s, job.cfg.judge.timeout_retries)
        rollouts = _Rollouts(job, client, ray.get(job.prompts))
    progress, reporter = _Progress(state.step, job.call), StepReporter(config, rank)
    try:
        with rank0_tracker(job, rank) as tracker:
            tracker.summary({"rl/torch_threads": torch.get_num_threads()})
            for step in range(state.step, job.total_steps):
                timings: dict[str, float] = {}
                with timed(timings, "step"):
                    prepared, experiences, stats = _step(
                        job, step, state, rollouts, learner, reference, rank, world_size, timings
                    )
                staleness = state.policy_version - min(e.policy_version for e in experiences)
                state = dataclasses.replace(
                    state,
                    step=step + 1,
                    policy_version=state.policy_version + 1,
                    prompts_seen=state.prompts_seen + r.prompts_per_step,
                    samples_seen=state.samples_seen + len(experiences),
                )
                if rank == 0:
                    _log_step(tracker, progress, prepared, stats, state, timings | prepared.timings, staleness, r)
                    reporter.step(state.step, job.total_steps, {"reward": progress.rewards[-1], "KL": stats.kl})
                progress.items += len(experiences)
                progress.seconds += timings["step"]
                checkpoint_if_due(job, learner, tokenizer, state, rank, tracker, progress)
    finally:
        if rollouts is not None:
            rollouts.close()


def _step(job: RLJob, step: int, state: RLState, rollouts, learner, reference, rank: int, world_size: int, timings):
    """One step's phases on this rank: (rank 0's Prepared or None, the step's experiences, LearnStats)."""
    prepared = None
    if rank == 0:
        with timed(timings, "wait_rollouts"):
            prepared = rollouts.get(step)
        rollouts.prefetch(step + 1)
    experiences = share_experiences(prepared.experiences if prepared else None, rank, world_size)
    # Rank 0: a restarted sampler is given weights between steps, never half-updated ones.
    with job.pool.weights_lock if rank == 0 else nullcontext():
        with timed(timings, "learn"):
            stats = learn(learner, reference, job, experiences, job.cfg.rl.lr, rank, world_size)
        with timed(timings, "sync"):
            sent = sync(learner, job, state.policy_version + 1, rank)
    return prepared, experiences, dataclasses.replace(stats, sync_bytes=sent)


def _log_step(
    tracker, progress, prepared: Prepared, stats: LearnStats, state: RLState, timings, staleness: int, r
) -> None:
    metrics = step_metrics(prepared.judged, stats, state.policy_version, state.prompts_seen, timings) | {
        "rl/staleness": staleness
    }
    tracker.log(metrics, step=state.step)
    progress.rewards.append(metrics["rl/reward_mean"])
    progress.kls.append(stats.kl)
    if due(state.step, r.table_every, r.steps):
        tracker.table("rl/samples", TABLE_COLUMNS, table_rows(prepared.judged), step=state.step)
