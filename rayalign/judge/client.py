"""The one way callers (filter, RL, eval) reach the judge service.

Two transports behind one interface: HTTP (``POST /v1/judge``) and a Ray
Serve ``DeploymentHandle``. Both are async and concurrent, retry with
backoff on overload and lost replicas, and turn a timeout into an
unscorable verdict, so a training step never hangs on the judge.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from rayalign.errors import RayalignError
from rayalign.judge.rubric import unscorable
from rayalign.types import Classification, JudgeRequest, Prompt, Verdict, from_dict, to_dict

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class JudgeRequestError(RayalignError):
    """A request the service refused for good (401, 422): retrying cannot help."""


class _Retryable(Exception):
    pass


class JudgeClient:
    def __init__(
        self,
        *,
        url: str | None = None,
        handle=None,
        token: str = "",
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        concurrency: int = 64,
    ):
        if (url is None) == (handle is None):
            raise ValueError("give exactly one of url= or handle=")
        self.url, self.handle, self.token = url, handle, token
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.concurrency = concurrency
        self.attempts = 0
        """Requests sent, retries included (for logs and tests)."""

    async def score(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order; failures come back unscorable."""
        return await self._all(_SCORE, requests)

    def score_sync(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        """:meth:`score` for synchronous callers."""
        return asyncio.run(self.score(requests))

    async def classify(self, prompts: Sequence[Prompt]) -> list[Classification]:
        """The judge model's spec category (or none) per prompt, in order; failures come back unscorable."""
        return await self._all(_CLASSIFY, prompts)

    async def _all(self, call: _Call, items: Sequence) -> list:
        gate = asyncio.Semaphore(self.concurrency)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as http:

            async def one(item):
                async with gate:
                    return await self._with_retries(http, call, item)

            return list(await asyncio.gather(*(one(x) for x in items)))

    async def _with_retries(self, http: httpx.AsyncClient, call: _Call, item):
        last = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            try:
                return await asyncio.wait_for(self._send(http, call, item), self.timeout_s)
            except asyncio.TimeoutError:
                return call.failed(item, f"judge service timed out after {self.timeout_s:g}s")
            except _Retryable as e:
                last = str(e)
            await asyncio.sleep(self.backoff_s * 2**attempt * (0.5 + random.random()))
        return call.failed(item, f"judge service failed after {self.retries + 1} attempts: {last}")

    async def _send(self, http: httpx.AsyncClient, call: _Call, item):
        if self.handle is not None:
            return await self._send_handle(call, item)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = await http.post(f"{self.url}{call.path}", json=to_dict(item), headers=headers)
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        if response.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code != 200:
            raise JudgeRequestError(f"judge service answered {response.status_code}: {response.text[:500]}")
        return from_dict(call.result, response.json())

    async def _send_handle(self, call: _Call, item):
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError

        try:
            return await call.remote(self.handle, item)
        except (RayActorError, BackPressureError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class _Call:
    """One service operation: its HTTP path, its handle call, result type and failure value."""

    path: str
    remote: Callable
    """(handle, item) -> the deployment method's response."""
    result: type
    failed: Callable


_SCORE = _Call("/v1/judge", lambda h, r: h.score.remote(r), Verdict, lambda r, why: unscorable(why, **_ids(r)))
_CLASSIFY = _Call(
    "/v1/classify",
    lambda h, p: h.classify.remote(p),
    Classification,
    lambda p, why: Classification(p.id, "unscorable", None, why),
)


def _ids(request: JudgeRequest) -> dict:
    return {"spec_hash": "", "template_hash": "", "request_id": request.request_id}
