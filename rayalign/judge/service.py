"""The judge as a reward service on Ray Serve.

``JudgeService``: a FastAPI ingress (``POST /v1/judge``, ``GET /v1/stats``,
``GET /v1/capacity``, OpenAPI at ``/docs``) over a replica that owns the judge
backend. Requests, whether over HTTP or a ``DeploymentHandle``, wait in one
queue per replica and go to the backend in batches formed when it has room
(:mod:`rayalign.judge.batching`), so concurrent callers share one model call
and a request never sits in a half-empty batch formed early. A late verdict
comes back *unscorable*, not as a hung request; a full queue answers 503.
``/v1/capacity?caller=ID`` tells a client how many requests to keep in flight:
its share of running replicas x batch size x concurrent batches among the
callers asking now, kept
by one small ``JudgeAdmission`` deployment (:mod:`rayalign.judge.admission`)
for every replica. A request whose caller gave
up (a timeout, a cancelled handle call, a closed HTTP connection) leaves the
batch queue uncomputed; ``/v1/stats`` counts it as dropped.
With ``judge.cascade`` on, each batch passes the behaviour check of
:mod:`rayalign.judge.cascade` first and only the undecided requests reach
the judge model; ``/v1/stats`` counts both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Header, HTTPException
from ray import serve

from rayalign.judge.admission import AdmissionBook
from rayalign.judge.backends import FunctionJudge, JudgeBackend, LocalJudge
from rayalign.judge.batching import Batcher
from rayalign.judge.cascade import score_with_cascade
from rayalign.judge.classify import (
    category_regex,
    classification,
    load_classify_template,
    render_classify_messages,
)
from rayalign.judge.client import JudgeCapacity, JudgeClient
from rayalign.judge.rubric import load_templates, unscorable, verdict_regex
from rayalign.judge.scoring import ScoringPolicy, score_requests
from rayalign.rollout.engine import EngineConfig
from rayalign.spec import load_spec
from rayalign.types import Classification, JudgeRequest, Prompt, Verdict

log = logging.getLogger("ray.serve")
APP_NAME = "rayalign-judge"
CAPACITY_REFRESH_S = 2.0
"""How often a client asks for its share again: a newcomer's share reaches the others within this."""
REPLICAS_READ_S = 5.0
"""How often a replica asks the Serve controller how many replicas run (a blocking call)."""
CAPACITY_EXPIRE_S = 5 * CAPACITY_REFRESH_S
"""A caller that has not asked for this long has left (it finished without saying so, or died)."""


@dataclass(frozen=True)
class JudgeSettings:
    """What a judge replica needs (crosses into Serve replicas)."""

    spec_path: str
    backend: str = "local"
    engine: EngineConfig | None = None
    openai: object | None = None
    """OpenAISettings for the openai backend."""
    function: str = ""
    policy: ScoringPolicy = field(default_factory=ScoringPolicy)
    temperature: float = 0.7
    max_new_tokens: int = 256
    guided_json: bool = True
    max_batch_size: int = 8
    batch_wait_s: float = 0.05
    concurrent_batches: int = 1
    """Batches the backend works on at once (a local engine: 1)."""
    queued_batches: int = 1
    """Full batches per replica that callers keep waiting behind the running ones."""
    timeout_s: float = 120.0
    auth_token_env: str = ""
    cascade: bool = False
    """Decide behaviour mismatches with the string-match check before the judge model."""

    @classmethod
    def from_config(cls, cfg) -> JudgeSettings:
        j = cfg.judge
        engine = EngineConfig.for_judge(cfg)
        return cls(
            spec_path=str(os.path.abspath(cfg.spec.path)),
            backend=j.backend,
            engine=engine if j.backend == "local" else None,
            openai=_openai_settings(cfg) if j.backend == "openai" else None,
            function=j.function,
            policy=ScoringPolicy(k=j.k, parse_retries=j.parse_retries),
            temperature=j.temperature,
            max_new_tokens=j.max_new_tokens,
            guided_json=j.guided_json,
            max_batch_size=j.max_batch_size,
            batch_wait_s=j.batch_wait_s,
            concurrent_batches=j.concurrent_batches,
            queued_batches=j.queued_batches,
            timeout_s=j.timeout_s,
            auth_token_env=j.auth_token_env,
            cascade=j.cascade,
        )


def _openai_settings(cfg):
    from rayalign.judge.openai_backend import OpenAISettings

    j = cfg.judge
    return OpenAISettings(
        base_url=j.base_url,
        model=j.api_model or j.model,
        api_key=os.environ.get(j.api_key_env, ""),
        timeout_s=j.timeout_s,
        max_concurrency=j.max_concurrency,
        temperature=j.temperature,
        max_tokens=j.max_new_tokens,
    )


def build_judge_backend(settings: JudgeSettings, spec) -> JudgeBackend:
    if settings.backend == "function":
        return FunctionJudge(settings.function)
    if settings.backend == "openai":
        from rayalign.judge.openai_backend import OpenAIJudge

        return OpenAIJudge(settings.openai)
    return LocalJudge(
        settings.engine,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        regex=verdict_regex(spec) if settings.guided_json else "",
    )


@dataclass(frozen=True)
class JudgeStats:
    """What a replica has done (``GET /v1/stats``)."""

    requests: int
    unscorable: int
    timeouts: int
    batch_sizes: dict[int, int]
    """Batch size -> how many batches of that size were scored."""
    pid: int
    cascade: int = 0
    """Requests the cascade decided (behaviour mismatch) without the judge model."""
    judged: int = 0
    """Requests sent to the judge model (each may take k runs and parse retries)."""
    dropped: int = 0
    """Requests whose caller gave up (timeout, cancelled, disconnected) before their batch started: never computed."""
    computed_for_nobody: int = 0
    """Requests whose caller gave up while their batch ran: computed, the answer thrown away."""
    batch_seconds: float = 0.0
    """Seconds the scoring batches took, summed (their mean is a batch's own time: the service's capacity is
    max_batch_size x concurrent_batches per mean batch)."""


def running_replicas(default: int = 1) -> int:
    """RUNNING replicas of the deployment this replica belongs to, as the Serve controller sees them now
    (autoscaling included); ``default`` when it cannot say."""
    try:
        context = serve.get_replica_context()
        deployment = serve.status().applications[context.app_name].deployments[context.deployment]
        return max(1, deployment.replica_states.get("RUNNING", 0))
    except Exception:  # noqa: BLE001 - a status hiccup keeps the last count
        return default


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class JudgeAdmission:
    """The one book of the service's callers and their shares (every judge replica asks here)."""

    def __init__(self, expire_s: float):
        self.book = AdmissionBook(expire_s)

    def share(self, caller: str, capacity: int, in_flight: int = 0) -> tuple[int, int]:
        return self.book.share(caller, capacity, time.monotonic(), in_flight)

    def leave(self, caller: str) -> None:
        self.book.leave(caller)


app = FastAPI(title="rayalign judge", description="Spec-aware judge: scores an answer against the safety spec.")


@serve.deployment
@serve.ingress(app)
class JudgeService:
    def __init__(self, settings: JudgeSettings, admission=None):
        self.settings = settings
        self.admission = admission
        """Handle of the service's JudgeAdmission (None: every caller gets the whole capacity)."""
        self.spec = load_spec(settings.spec_path)
        self.templates = load_templates(settings.spec_path)
        self.backend = build_judge_backend(settings, self.spec)
        self.token = os.environ.get(settings.auth_token_env, "") if settings.auth_token_env else ""
        self._batchers: tuple[Batcher, Batcher] | None = None
        self.counts = collections.Counter()
        self.started: set[int] = set()
        """id() of the requests and prompts in a batch that has started (their callers are still waiting)."""
        self.replicas, self.replicas_read_at = 1, float("-inf")

    def batchers(self) -> tuple[Batcher, Batcher]:
        """(scoring, classifying): made on first use, in the replica's event loop; they take turns on the
        backend's ``concurrent_batches`` slots."""
        if self._batchers is None:
            s = self.settings
            slots = asyncio.Semaphore(s.concurrent_batches)
            size = {"max_batch_size": s.max_batch_size, "batch_wait_s": s.batch_wait_s, "slots": slots}
            self._batchers = (Batcher(self.score_batch, **size), Batcher(self.classify_batch, **size))
        return self._batchers

    async def score_batch(self, requests: list[JudgeRequest]) -> list[Verdict]:
        self.started.update(map(id, requests))
        return await score_with_cascade(
            requests,
            self._judge,
            enabled=self.settings.cascade,
            spec_hash=self.spec.hash,
        )

    async def _judge(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """The judge model's verdicts on what the cascade left."""
        self.counts["judged"] += len(requests)
        try:
            return await score_requests(self.backend, self.spec, self.templates, requests, self.settings.policy)
        except Exception as e:  # noqa: BLE001 - a backend failure is unscorable, never a crash of the caller
            return [self._unscorable(f"judge backend failed: {type(e).__name__}: {e}", r) for r in requests]

    async def score(self, request: JudgeRequest) -> Verdict:
        """Score one request (handle callers); the batcher groups concurrent calls."""
        self.counts["requests"] += 1
        verdict = await self._batched(self.batchers()[0], request, lambda why: self._unscorable(why, request))
        self.counts["unscorable"] += verdict.status != "ok"
        self.counts["cascade"] += verdict.decided_by == "cascade"
        return verdict

    async def _batched(self, batch_call: Callable[..., Awaitable], item, failed: Callable[[str], object]):
        """``batch_call(item)`` under the replica's deadline. A caller that gives up takes its item out of the
        queue (the batcher skips it); one already in a running batch is computed anyway."""
        try:
            return await asyncio.wait_for(batch_call(item), self.settings.timeout_s)
        except asyncio.TimeoutError:
            self.counts["timeouts"] += 1
            self._gave_up(item)
            return failed(f"judge timed out after {self.settings.timeout_s:g}s")
        except asyncio.CancelledError:  # the handle call was cancelled or the HTTP client went away
            self._gave_up(item)
            raise
        finally:
            self.started.discard(id(item))

    def _gave_up(self, item) -> None:
        self.counts["computed_for_nobody" if id(item) in self.started else "dropped"] += 1

    def _unscorable(self, reason: str, request: JudgeRequest) -> Verdict:
        return unscorable(
            reason, spec_hash=self.spec.hash, template_hash=self.templates.hash, request_id=request.request_id
        )

    async def classify_batch(self, prompts: list[Prompt]) -> list[Classification]:
        self.started.update(map(id, prompts))
        try:
            template = load_classify_template(self.settings.spec_path)
            conversations = [render_classify_messages(self.spec, template, p) for p in prompts]
            replies = await self.backend.complete(conversations, 1, prompts, regex=category_regex(self.spec))
        except Exception as e:  # noqa: BLE001 - a backend failure is unscorable, never a crash of the caller
            return [
                Classification(p.id, "unscorable", None, f"judge backend failed: {type(e).__name__}: {e}")
                for p in prompts
            ]
        return [classification(p, texts[0], self.spec, template) for p, texts in zip(prompts, replies)]

    async def classify(self, prompt: Prompt) -> Classification:
        """The spec category of one prompt, or none (handle callers); batched like ``score``."""
        return await self._batched(
            self.batchers()[1], prompt, lambda why: Classification(prompt.id, "unscorable", None, why)
        )

    @app.post("/v1/classify", response_model=Classification)
    async def classify_http(self, prompt: Prompt, authorization: str | None = Header(default=None)) -> Classification:
        self._check_auth(authorization)
        if not prompt.messages or prompt.messages[-1].role != "user":
            raise HTTPException(422, detail=[{"loc": ["body", "messages"], "msg": "must end on a user turn"}])
        return await self.classify(prompt)

    @app.post("/v1/judge", response_model=Verdict)
    async def judge(self, request: JudgeRequest, authorization: str | None = Header(default=None)) -> Verdict:
        self._check_auth(authorization)
        category = request.prompt.category
        if category is not None and category not in self.spec.category_ids:
            raise HTTPException(
                422,
                detail=[
                    {
                        "loc": ["body", "prompt", "category"],
                        "msg": f"unknown category {category!r}; the spec has: {', '.join(self.spec.category_ids)}",
                    }
                ],
            )
        if not request.prompt.messages or request.prompt.messages[-1].role != "user":
            raise HTTPException(422, detail=[{"loc": ["body", "prompt", "messages"], "msg": "must end on a user turn"}])
        return await self.score(request)

    @app.get("/v1/stats", response_model=JudgeStats)
    def stats(self) -> JudgeStats:
        return JudgeStats(
            requests=self.counts["requests"],
            unscorable=self.counts["unscorable"],
            timeouts=self.counts["timeouts"],
            batch_sizes=dict(self._batchers[0].sizes) if self._batchers else {},
            batch_seconds=self._batchers[0].seconds if self._batchers else 0.0,
            pid=os.getpid(),
            cascade=self.counts["cascade"],
            judged=self.counts["judged"],
            dropped=self.counts["dropped"],
            computed_for_nobody=self.counts["computed_for_nobody"],
        )

    @app.get("/v1/capacity", response_model=JudgeCapacity)
    async def capacity(self, caller: str = "", in_flight: int = 0) -> JudgeCapacity:
        """What the service works on at once, and ``caller``'s share of it (asked again every ``refresh_s``;
        ``in_flight``: what the caller has out as it asks)."""
        if time.monotonic() - self.replicas_read_at > REPLICAS_READ_S:
            self.replicas = await asyncio.to_thread(running_replicas, self.replicas)  # a controller call: blocks
            self.replicas_read_at = time.monotonic()
        s = self.settings
        total = self.replicas * s.max_batch_size * (s.concurrent_batches + s.queued_batches)
        share, callers = total, 1
        if caller and self.admission is not None:
            try:
                share, callers = await self.admission.share.remote(caller, total, in_flight)
            except Exception as e:  # noqa: BLE001 - a lost admission replica: the caller keeps the whole capacity
                log.warning(
                    "judge admission unavailable (%s: %s): %s gets the whole capacity", type(e).__name__, e, caller
                )
        return JudgeCapacity(
            self.replicas,
            s.max_batch_size,
            CAPACITY_REFRESH_S,
            callers,
            share,
            concurrent_batches=s.concurrent_batches,
            queued_batches=s.queued_batches,
        )

    @app.delete("/v1/capacity")
    async def leave(self, caller: str) -> dict:
        """``caller`` is done: its share goes to the other callers at their next ask."""
        if self.admission is not None:
            with contextlib.suppress(Exception):
                await self.admission.leave.remote(caller)
        return {"left": caller}

    def _check_auth(self, authorization: str | None) -> None:
        if self.token and authorization != f"Bearer {self.token}":
            raise HTTPException(401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def judge_app(cfg, settings: JudgeSettings | None = None):
    """The Serve application for a config: replicas, autoscaling, resources from ``cfg.judge``."""
    j = cfg.judge
    settings = settings or JudgeSettings.from_config(cfg)
    actor_options = {"num_cpus": j.cpus_per_replica, "num_gpus": j.gpus_per_replica}
    if j.resource:
        actor_options["resources"] = {j.resource: 1}
    env = {k: v for k, v in os.environ.items() if k == j.auth_token_env or k == j.api_key_env}
    if settings.engine is not None:
        from rayalign.rollout.vllm_backend import engine_env

        env.update(engine_env(settings.engine))
    actor_options["runtime_env"] = {"env_vars": env}
    scaling = (
        {
            "autoscaling_config": {
                "min_replicas": j.replicas,
                "max_replicas": j.max_replicas,
                # Clients keep the running and waiting batches per replica in flight and hold the rest: a busy
                # replica reads as 4/3 of the target, so the deployment grows while clients wait on their side.
                "target_ongoing_requests": 0.75 * j.max_batch_size * (j.concurrent_batches + j.queued_batches),
            }
        }
        if j.max_replicas > j.replicas
        else {"num_replicas": j.replicas}
    )
    return JudgeService.options(
        ray_actor_options=actor_options,
        # the running batches and the waiting ones; at least one batch more, so the next fills while these run
        max_ongoing_requests=j.max_batch_size * (j.concurrent_batches + max(1, j.queued_batches)),
        max_queued_requests=j.max_queued_requests,
        **scaling,
    ).bind(settings, JudgeAdmission.bind(CAPACITY_EXPIRE_S))


@dataclass(frozen=True)
class JudgeEndpoint:
    url: str
    """Base URL of the HTTP API, e.g. http://127.0.0.1:8000."""
    handle: object
    """DeploymentHandle of the JudgeService."""


def start_judge(cfg, settings: JudgeSettings | None = None, *, port: int | None = None) -> JudgeEndpoint:
    """Deploy the judge on the running Ray cluster; returns its URL and handle."""
    port = cfg.judge.port if port is None else port
    if port == 0:
        port = free_port()
    serve.start(http_options={"host": cfg.judge.host, "port": port}, logging_config={"enable_access_log": False})
    handle = serve.run(judge_app(cfg, settings), name=APP_NAME, route_prefix="/")
    return JudgeEndpoint(url=f"http://{cfg.judge.host}:{port}", handle=handle)


@contextmanager
def judge_session(cfg, settings: JudgeSettings | None = None, *, port: int = 0) -> Iterator[JudgeClient]:
    """The one way a driver reaches the judge: deploy it on the running Ray
    cluster, yield a client over its handle, and delete the app on exit.

    Workers of the same driver (Ray Data tasks, RL learners) reach it with
    :func:`connect_judge`.
    """
    endpoint = start_judge(cfg, settings, port=port)
    try:
        yield JudgeClient(
            handle=endpoint.handle, timeout_s=cfg.judge.timeout_s, timeout_retries=cfg.judge.timeout_retries
        )
    finally:
        serve.delete(APP_NAME)


def connect_judge(timeout_s: float, timeout_retries: int = 1) -> JudgeClient:
    """A client for the judge that a driver's :func:`judge_session` started (from any worker).

    Clients that run at once share the service's capacity (each asks for its share), so any number
    of workers may judge concurrently without their deadlines measuring each other's queue.
    """
    return JudgeClient(handle=serve.get_app_handle(APP_NAME), timeout_s=timeout_s, timeout_retries=timeout_retries)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
