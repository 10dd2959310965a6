"""The one way callers (filter, RL, eval) reach the judge service.

Two transports behind one interface: HTTP (``POST /v1/judge``) and a Ray
Serve ``DeploymentHandle``. Both are async and concurrent, retry with
backoff on overload and lost replicas, and turn a timeout into an
unscorable verdict, so a training step never hangs on the judge.

Capacity-aware dispatch: the client asks the service what it works on at
once (``GET /v1/capacity``: running replicas x max_batch_size x
(concurrent_batches + queued_batches), the batches running and those waiting
behind them) and what its own share of that is among the callers asking now,
keeps no more than its share in flight (the rest wait on the client's side),
and says when it is done. So ``timeout_s`` is a deadline on a verdict's own
work and the batches ahead of it on the replica, not on the whole queue, and
a verdict that misses it is asked once more
(``timeout_retries``) before it comes back unscorable. :meth:`JudgeClient.losses`
counts what came back unscorable, by reason; :func:`losses_warning` says it
out loud.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from rayalign.errors import RayalignError
from rayalign.judge.rubric import unscorable
from rayalign.types import Classification, JudgeRequest, Prompt, Verdict, from_dict, to_dict

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
CAPACITY_ASK_TIMEOUT_S = 30.0
ROUTING_RETRY = "Failed to route request after"
"""How Ray Serve's router (logger ``ray.serve``, ray/serve/_private/request_router/request_router.py) starts the
warning it repeats every 50 backoffs while every replica is at max_ongoing_requests: a busy judge, not a fault."""


class JudgeRequestError(RayalignError):
    """A request the service refused for good (401, 422): retrying cannot help."""


class _Retryable(Exception):
    pass


@dataclass(frozen=True)
class JudgeCapacity:
    """What the judge service works on at once (``GET /v1/capacity``, ``handle.capacity``)."""

    replicas: int
    """Replicas running now; autoscaling changes it."""
    max_batch_size: int
    """Requests one replica scores in one batch."""
    refresh_s: float = 2.0
    """How often a client asks again."""
    callers: int = 1
    """Callers sharing the service now (those that asked within the last few refreshes)."""
    share: int = 0
    """Requests the asking caller may keep in flight: its part of the whole (0: all of it)."""
    concurrent_batches: int = 1
    """Batches one replica works on at once."""
    queued_batches: int = 0
    """Full batches per replica kept waiting behind the running ones (the backend never idles between them)."""

    def in_flight_limit(self) -> int:
        """Requests a client keeps in flight: its share of what the replicas work on at once and keep
        waiting (replicas x batch size x (concurrent + queued batches)).

        >>> JudgeCapacity(replicas=2, max_batch_size=8).in_flight_limit()
        16
        >>> JudgeCapacity(replicas=2, max_batch_size=8, concurrent_batches=2, queued_batches=1).in_flight_limit()
        48
        >>> JudgeCapacity(replicas=2, max_batch_size=8, callers=3, share=6).in_flight_limit()
        6
        """
        return self.share or self.replicas * self.max_batch_size * (self.concurrent_batches + self.queued_batches)


TIMEOUT, UNPARSEABLE, BACKEND_FAILED, SERVICE_FAILED, OTHER = (
    "timeout",
    "unparseable",
    "backend_failed",
    "service_failed",
    "other",
)
_HINTS = {
    TIMEOUT: "a verdict's own work outlasted judge.timeout_s, retries included: raise judge.timeout_s "
    "above a batch's duration or lower judge.max_batch_size",
    UNPARSEABLE: "the judge's replies did not parse: raise judge.parse_retries or judge.max_new_tokens, "
    "or use a stronger judge.model",
    BACKEND_FAILED: "the judge backend raised: see the replica log (logs/serve/replica_*.log in the Ray session)",
    SERVICE_FAILED: "the service was unreachable or refused (503) after retries: check the judge replicas",
    OTHER: "see the verdicts' explanations",
}


def unscorable_reason(explanation: str) -> str:
    """The kind of loss an unscorable result's explanation names.

    >>> unscorable_reason("judge service timed out after 600s (try 2 of 2)")
    'timeout'
    >>> unscorable_reason("0/2 judge runs parsed after retries: unparseable judge reply: no JSON object")
    'unparseable'
    >>> unscorable_reason("judge backend failed: ReadTimeout: timed out")
    'backend_failed'
    """
    if explanation.startswith("judge backend failed"):
        return BACKEND_FAILED
    if explanation.startswith("judge service failed"):
        return SERVICE_FAILED
    if explanation.startswith(("judge timed out", "judge service timed out")):
        return TIMEOUT
    if "judge runs parsed" in explanation or explanation.startswith("unparseable"):
        return UNPARSEABLE
    return OTHER


@dataclass(frozen=True)
class JudgeLosses:
    """What a client handed back unscorable, by reason (:meth:`JudgeClient.losses`)."""

    results: int = 0
    """Verdicts and classifications handed back."""
    unscorable: dict[str, int] = field(default_factory=dict)
    """Reason (timeout, unparseable, backend_failed, service_failed, other) -> how many."""
    retried: int = 0
    """Verdicts asked again after missing the deadline."""

    @property
    def lost(self) -> int:
        return sum(self.unscorable.values())

    @property
    def share(self) -> float:
        return self.lost / self.results if self.results else 0.0

    def __add__(self, other: JudgeLosses) -> JudgeLosses:
        """Losses of two clients together (the judge tasks of one stage)."""
        merged = collections.Counter(self.unscorable) + collections.Counter(other.unscorable)
        return JudgeLosses(self.results + other.results, dict(merged), self.retried + other.retried)

    def since(self, earlier: JudgeLosses) -> JudgeLosses:
        """The losses after ``earlier`` (one step of a long-lived client)."""
        left = collections.Counter(self.unscorable)
        left.subtract(earlier.unscorable)
        return JudgeLosses(self.results - earlier.results, +left, self.retried - earlier.retried)


def losses_warning(losses: JudgeLosses, max_share: float, *, what: str = "judge") -> str | None:
    """A loud warning when more than ``max_share`` of the results came back unscorable, else None.

    >>> print(losses_warning(JudgeLosses(120, {"timeout": 69}, retried=80), 0.05, what="[eval] judge"))
    !!! [eval] judge: 69 of 120 verdicts unscorable (57.5%, above judge.max_unscorable_share=5%)
    !!!   timeout: 69 (80 retried) -- a verdict's own work outlasted judge.timeout_s, ...
    >>> losses_warning(JudgeLosses(120, {"unparseable": 3}), 0.05) is None
    True
    """
    if losses.share <= max_share:
        return None
    lines = [
        f"!!! {what}: {losses.lost} of {losses.results} verdicts unscorable "
        f"({losses.share:.1%}, above judge.max_unscorable_share={max_share * 100:g}%)"
    ]
    for reason, count in sorted(losses.unscorable.items(), key=lambda kv: -kv[1]):
        retried = f" ({losses.retried} retried)" if reason == TIMEOUT else ""
        lines.append(f"!!!   {reason}: {count}{retried} -- {_HINTS.get(reason, _HINTS[OTHER])}")
    return "\n".join(lines)


class CapacityGate:
    """A FIFO asyncio semaphore whose size may change while callers wait: the client's in-flight limit.

    A smaller limit lets requests already in flight finish; a larger one admits waiters at once.
    """

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def resize(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._admit()

    async def __aenter__(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        admitted = asyncio.get_running_loop().create_future()
        self._waiters.append(admitted)
        try:
            await admitted  # _admit counts the slot before it wakes us
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self._release()  # admitted, then cancelled before running: pass the slot on
            raise

    async def __aexit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            admitted = self._waiters.popleft()
            if not admitted.done():  # a cancelled waiter is skipped
                self.in_flight += 1
                admitted.set_result(None)


class JudgeTransport(Protocol):
    """How requests reach the service: HTTP, a Serve handle, or a fake in tests."""

    async def send(self, call: JudgeCall, item):
        """The service's answer to one item; raises ``_Retryable`` on overload or a lost replica."""

    async def capacity(self, caller: str, in_flight: int) -> JudgeCapacity:
        """What the service works on at once, and ``caller``'s share of it (registers ``caller``, who has
        ``in_flight`` requests out as it asks)."""

    async def leave(self, caller: str) -> None:
        """``caller`` has nothing more in flight."""


class JudgeClient:
    def __init__(
        self,
        *,
        url: str | None = None,
        handle=None,
        transport: JudgeTransport | None = None,
        token: str = "",
        timeout_s: float = 120.0,
        timeout_retries: int = 1,
        retries: int = 3,
        backoff_s: float = 0.5,
        concurrency: int = 64,
    ):
        """``timeout_s`` is a per-verdict deadline from dispatch; a verdict that misses it is asked again
        ``timeout_retries`` times. ``retries`` (with backoff) are for overload and lost replicas.
        ``concurrency`` caps requests in flight above the service's capacity."""
        if sum(x is not None for x in (url, handle, transport)) != 1:
            raise ValueError("give exactly one of url=, handle= or transport=")
        self.url, self.handle, self.transport, self.token = url, handle, transport, token
        self.timeout_s, self.timeout_retries = timeout_s, timeout_retries
        self.retries, self.backoff_s = retries, backoff_s
        self.concurrency = concurrency
        self.capacity: JudgeCapacity | None = None
        """What the service said it works on at once, last time asked (None: never answered)."""
        self.attempts = 0
        """Requests sent, retries included (for logs and tests)."""
        self._results: collections.Counter[str] = collections.Counter()
        self._retried = 0
        self.caller = uuid.uuid4().hex[:12]
        """This client's id in the service's book of callers (one share per client, however many calls)."""
        self._calls = 0
        # Handle calls are routed in this process: keep Serve's routing-retry chatter off the console.
        self.routing_log = quiet_routing_retries() if handle is not None else ""

    async def score(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order; failures come back unscorable."""
        return await self._all(_SCORE, requests)

    def score_sync(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """:meth:`score` for synchronous callers."""
        return asyncio.run(self.score(requests))

    async def classify(self, prompts: Sequence[Prompt]) -> list[Classification]:
        """The judge model's spec category (or none) per prompt, in order; failures come back unscorable."""
        return await self._all(_CLASSIFY, prompts)

    def losses(self) -> JudgeLosses:
        """Everything this client handed back so far, and what of it was unscorable, by reason."""
        unscorable = {k: v for k, v in self._results.items() if k != "ok"}
        return JudgeLosses(sum(self._results.values()), unscorable, self._retried)

    async def _all(self, call: JudgeCall, items: Sequence) -> list:
        if not items:
            return []
        async with self._connect() as transport:
            self._calls += 1
            gate = CapacityGate(await self._limit(transport, 0))
            keeper = asyncio.create_task(self._keep_limit(transport, gate))
            try:
                return list(await asyncio.gather(*(self._one(transport, gate, call, x) for x in items)))
            finally:
                keeper.cancel()
                self._calls -= 1
                if not self._calls:  # its share goes to the other callers now, not when it expires
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(transport.leave(self.caller), CAPACITY_ASK_TIMEOUT_S)

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[JudgeTransport]:
        if self.transport is not None:
            yield self.transport
        elif self.handle is not None:
            yield _HandleTransport(self.handle)
        else:
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            # No httpx read timeout: the per-verdict deadline (asyncio) closes a late request's connection,
            # which Serve turns into a cancellation on the replica.
            timeout = httpx.Timeout(None, connect=CAPACITY_ASK_TIMEOUT_S)
            async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
                yield _HttpTransport(http, self.url, self.token)

    async def _limit(self, transport: JudgeTransport, in_flight: int) -> int:
        """Requests to keep in flight: this client's share of the service's capacity, capped by ``concurrency``."""
        with contextlib.suppress(Exception):  # a service that cannot say keeps the last answer (or concurrency)
            asked = transport.capacity(self.caller, in_flight)
            self.capacity = await asyncio.wait_for(asked, CAPACITY_ASK_TIMEOUT_S)
        if self.capacity is None:
            return self.concurrency
        return min(self.concurrency, self.capacity.in_flight_limit())

    async def _keep_limit(self, transport: JudgeTransport, gate: CapacityGate) -> None:
        """Re-ask the capacity while requests are out: autoscaling adds replicas under load."""
        while True:
            await asyncio.sleep(self.capacity.refresh_s if self.capacity else JudgeCapacity(1, 1).refresh_s)
            gate.resize(await self._limit(transport, gate.in_flight))

    async def _one(self, transport: JudgeTransport, gate: CapacityGate, call: JudgeCall, item):
        """One item under the gate: the deadline starts at dispatch; a late one is asked again."""
        async with gate:
            tries = self.timeout_retries + 1
            for attempt in range(tries):
                result = await self._with_retries(transport, call, item, f"try {attempt + 1} of {tries}")
                if _reason(result) != TIMEOUT or attempt + 1 == tries:
                    break
                self._retried += 1
        self._results[_reason(result) or "ok"] += 1
        return result

    async def _with_retries(self, transport: JudgeTransport, call: JudgeCall, item, which: str):
        last = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return await asyncio.wait_for(transport.send(call, item), self.timeout_s)
            except asyncio.TimeoutError:
                return call.failed(item, f"judge service timed out after {self.timeout_s:g}s ({which})")
            except _Retryable as e:
                last = str(e)
            await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        return call.failed(item, f"judge service failed after {self.retries + 1} attempts: {last}")


def _reason(result) -> str | None:
    """None for a scored result, else the kind of loss."""
    return None if result.status == "ok" else unscorable_reason(result.explanation)


class _HttpTransport:
    def __init__(self, http: httpx.AsyncClient, url: str, token: str):
        self.http, self.url = http, url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def send(self, call: JudgeCall, item):
        try:
            response = await self.http.post(f"{self.url}{call.path}", json=to_dict(item), headers=self.headers)
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code != 200:
            raise JudgeRequestError(f"judge service answered {response.status_code}: {response.text[:500]}")
        return from_dict(call.result, response.json())

    async def capacity(self, caller: str, in_flight: int) -> JudgeCapacity:
        params = {"caller": caller, "in_flight": in_flight}
        response = await self.http.get(f"{self.url}/v1/capacity", params=params, headers=self.headers)
        response.raise_for_status()
        return from_dict(JudgeCapacity, response.json())

    async def leave(self, caller: str) -> None:
        await self.http.delete(f"{self.url}/v1/capacity", params={"caller": caller}, headers=self.headers)


class _HandleTransport:
    def __init__(self, handle):
        self.handle = handle

    async def send(self, call: JudgeCall, item):
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        response = call.remote(self.handle, item)
        try:
            return await response
        except asyncio.CancelledError:
            # Awaiting a DeploymentResponse does not cancel it: cancel it, so Serve cancels the replica-side
            # call and the replica drops the request from its batch queue instead of computing it for nobody.
            response.cancel()
            raise
        except (RayActorError, BackPressureError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e

    async def capacity(self, caller: str, in_flight: int) -> JudgeCapacity:
        return await self.handle.capacity.remote(caller, in_flight)

    async def leave(self, caller: str) -> None:
        await self.handle.leave.remote(caller)


@dataclass(frozen=True)
class JudgeCall:
    """One service operation: its HTTP path, its handle call, result type and failure value."""

    name: str
    path: str
    remote: Callable
    """(handle, item) -> the deployment method's response."""
    result: type
    failed: Callable


_SCORE = JudgeCall(
    "score", "/v1/judge", lambda h, r: h.score.remote(r), Verdict, lambda r, why: unscorable(why, **_ids(r))
)
_CLASSIFY = JudgeCall(
    "classify",
    "/v1/classify",
    lambda h, p: h.classify.remote(p),
    Classification,
    lambda p, why: Classification(p.id, "unscorable", None, why),
)


def _ids(request: JudgeRequest) -> dict:
    return {"spec_hash": "", "template_hash": "", "request_id": request.request_id}


class _RoutingRetriesToFile(logging.Filter):
    """On logger ``ray.serve``: writes the router's routing-retry warnings to a file and keeps them off the
    console; every other record passes."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.file = logging.FileHandler(path, delay=True)  # no file until there is chatter
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(ROUTING_RETRY):
            return True
        self.file.handle(record)
        return False


def quiet_routing_retries(path: str = "") -> str:
    """Send this process's Ray Serve "Failed to route request after N attempts" warnings to a file instead
    of the console; returns the file's path (default: ``logs/serve/judge_routing_retries_<pid>.log`` in the
    Ray session, where Serve keeps its own logs). Idempotent.

    Handle calls are routed in the calling process, so every process with a handle client installs this.
    HTTP requests are routed by the Serve proxy instead; its copy of the warning is in
    ``logs/serve/proxy_*.log``. Capacity-aware dispatch keeps clients from filling the replicas, so
    the warning should be rare either way.
    """
    serve_logger = logging.getLogger("ray.serve")  # the router's logger (ray.serve._private.constants)
    for existing in serve_logger.filters:
        if isinstance(existing, _RoutingRetriesToFile):
            return existing.path
    path = path or os.path.join(_serve_logs_dir(), f"judge_routing_retries_{os.getpid()}.log")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    serve_logger.addFilter(_RoutingRetriesToFile(path))
    return path


def _serve_logs_dir() -> str:
    """Where Ray Serve writes its logs in this Ray session (a temp dir outside one)."""
    import ray

    try:
        if ray.is_initialized():
            from ray.serve._private.logging_utils import get_serve_logs_dir  # private: the one use, here

            return get_serve_logs_dir()
    except Exception:  # noqa: BLE001 - a moved private helper costs the log's place, not the run
        pass
    return tempfile.gettempdir()
