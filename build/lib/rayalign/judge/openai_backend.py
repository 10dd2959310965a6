"""A judge behind any OpenAI-compatible chat-completions server.

    conversations -> POST {base_url}/chat/completions (n replies each) -> reply texts

Works with a vLLM server running a strong safety reasoner, or with a hosted
API. One :class:`OpenAIJudge` holds one pooled ``httpx.AsyncClient`` and a
semaphore that caps the requests in flight at ``max_concurrency``.

Failures: 408, 429, 5xx gateway errors, connection errors and timeouts are
retried with exponential backoff and jitter (a ``Retry-After`` header wins);
any other 4xx is raised at once. :meth:`OpenAIJudge.complete` always *raises*
:class:`JudgeHTTPError` when it gives up: turning that into unscorable
verdicts (never a silent zero) is the caller's job, see
:mod:`rayalign.judge.scoring`.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx

from rayalign.errors import RayalignError
from rayalign.types import JudgeRequest, Message

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses worth another try: timeouts, rate limits, overloaded or restarting servers."""

MAX_DELAY_S = 60.0
"""No single wait is longer, whatever the backoff or a ``Retry-After`` header says."""


@dataclass(frozen=True)
class OpenAISettings:
    """Where the judge server is and how to talk to it."""

    base_url: str
    """Up to and including the API version, e.g. ``http://127.0.0.1:8000/v1``."""
    model: str
    """The model name the server knows (vLLM: ``--served-model-name``)."""
    api_key: str = ""
    """Sent as ``Authorization: Bearer <key>``; empty sends no header."""
    timeout_s: float = 60.0
    """Per HTTP attempt (connect, read, write and pool wait)."""
    max_retries: int = 4
    """Retries after the first attempt: at most ``1 + max_retries`` attempts per request."""
    backoff_s: float = 0.5
    """Base of the exponential backoff: attempt ``a`` waits about ``backoff_s * 2**a``."""
    max_concurrency: int = 16
    """Requests in flight at once from this backend (also the connection pool size)."""
    temperature: float = 0.7
    max_tokens: int = 512
    json_mode: bool = False
    """Ask for ``response_format={"type": "json_object"}`` (servers that support it)."""

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if self.max_concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("need max_concurrency >= 1, max_retries >= 0 and timeout_s > 0")


class JudgeHTTPError(RayalignError):
    """A judge request that failed for good: a non-retryable status, or retries used up."""

    def __init__(self, message: str, *, status: int | None, attempts: int):
        self.status, self.attempts, self.server_message = status, attempts, message
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"judge server: {where} after {attempts} attempt(s): {message}")


class OpenAIJudge:
    """A :class:`~rayalign.judge.backends.JudgeBackend` over OpenAI-compatible HTTP.

    ``attempts`` counts HTTP attempts (retries included) and ``peak_in_flight``
    the most requests ever in flight at once: both are there so tests and
    logs can see retries and the concurrency cap at work.
    """

    def __init__(self, settings: OpenAISettings):
        self.settings = settings
        self.url = settings.base_url.rstrip("/") + "/chat/completions"
        self.n_supported = True
        """False once the server rejected ``n > 1``; later calls ask one reply at a time."""
        self.attempts = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(
        self,
        conversations: Sequence[Sequence[Message]],
        n: int,
        requests: Sequence[JudgeRequest] = (),
        regex: str = "",
    ) -> list[list[str]]:
        """``n`` reply texts per conversation, in order; raises :class:`JudgeHTTPError`.

        ``regex`` is not sent (servers differ in how they take constraints):
        the prompt says what to answer and the caller's parser is strict.

        A reply with no text content (a refusal field, a tool call) is ``""``,
        which the verdict parser reports as unscorable.
        """
        return list(await asyncio.gather(*(self._replies(c, n) for c in conversations)))

    async def aclose(self) -> None:
        """Close the connection pool; a later call opens a new one."""
        if self._client is not None:
            await self._client.aclose()
        self._client = self._semaphore = self._loop = None

    # ------------------------------------------------------------ internals

    async def _replies(self, conversation: Sequence[Message], n: int) -> list[str]:
        texts: list[str] = []
        if n > 1 and self.n_supported:
            try:
                texts = await self._chat(conversation, n)
            except JudgeHTTPError as e:
                if not _rejects_n(e):
                    raise
                self.n_supported = False
        # Servers that reject or ignore n: ask for the missing replies one by one.
        missing = n - len(texts)
        singles = await asyncio.gather(*(self._chat(conversation, 1) for _ in range(missing)))
        return texts[:n] + [t for reply in singles for t in reply]

    async def _chat(self, conversation: Sequence[Message], n: int) -> list[str]:
        body = await self._post(_payload(self.settings, conversation, n))
        try:
            choices = body["choices"]
            return [choice["message"].get("content") or "" for choice in choices]
        except (KeyError, TypeError, AttributeError):
            raise JudgeHTTPError(f"reply has no choices[].message: {str(body)[:300]}", status=200, attempts=1) from None

    async def _post(self, payload: dict) -> dict:
        """One request with retries; the parsed JSON body of the 2xx reply."""
        client, semaphore = self._session()
        last_status, last_message = None, ""
        for attempt in range(self.settings.max_retries + 1):
            retry_after = None
            async with semaphore:
                self._enter()
                try:
                    response = await client.post(self.url, json=payload, headers=self._headers())
                except httpx.TransportError as e:  # connection refused/reset, timeouts
                    last_status, last_message = None, f"{type(e).__name__}: {e}"
                    response = None
                finally:
                    self.in_flight -= 1
            if response is not None:
                if response.is_success:
                    return _json_body(response)
                last_status, last_message = response.status_code, _error_message(response)
                if last_status not in RETRYABLE_STATUS:
                    raise JudgeHTTPError(last_message, status=last_status, attempts=attempt + 1)
                retry_after = _retry_after(response.headers)
            if attempt < self.settings.max_retries:
                await asyncio.sleep(_backoff_delay(attempt, self.settings.backoff_s, retry_after))
        attempts = self.settings.max_retries + 1
        raise JudgeHTTPError(last_message, status=last_status, attempts=attempts)

    def _enter(self) -> None:
        self.attempts += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The client and semaphore of the running event loop, created on first use.

        Both are bound to the loop that created them; a new loop (a second
        ``asyncio.run``) gets new ones, since the old loop can no longer close them.
        """
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            s = self.settings
            limits = httpx.Limits(max_connections=s.max_concurrency, max_keepalive_connections=s.max_concurrency)
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(s.timeout_s), limits=limits)
            self._semaphore = asyncio.Semaphore(s.max_concurrency)
            self._loop = loop
        return self._client, self._semaphore

    def _headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


# ------------------------------------------------------------ pure helpers


def _payload(settings: OpenAISettings, conversation: Sequence[Message], n: int) -> dict:
    """The chat-completions request body; ``n`` only when above 1.

    >>> s = OpenAISettings("http://h/v1", "judge", temperature=0.0, max_tokens=8)
    >>> _payload(s, [Message("user", "hi")], 1)
    {'model': 'judge', 'messages': [{'role': 'user', 'content': 'hi'}], 'temperature': 0.0, 'max_tokens': 8}
    """
    body: dict = {
        "model": settings.model,
        "messages": [{"role": m.role, "content": m.content} for m in conversation],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }
    if n > 1:
        body["n"] = n  # some servers reject the key altogether, so leave out the default
    if settings.json_mode:
        body["response_format"] = {"type": "json_object"}
    return body


def _backoff_delay(attempt: int, base: float, retry_after: float | None, *, rand: float | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (0-based).

    A server's ``Retry-After`` wins. Otherwise exponential backoff with "equal
    jitter": uniformly between half and all of ``base * 2**attempt``, so that
    many clients rejected at once do not come back at once. ``rand`` is the
    uniform draw in [0, 1) (random when None). Capped at ``MAX_DELAY_S``.

    >>> _backoff_delay(2, 0.5, None, rand=0.5)  # full = 0.5 * 4 = 2.0 -> 1.0 + 0.5
    1.5
    >>> _backoff_delay(2, 0.5, 3.0)
    3.0
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_DELAY_S)
    full = base * 2**attempt
    draw = random.random() if rand is None else rand
    return min(full / 2 + draw * full / 2, MAX_DELAY_S)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """The ``Retry-After`` header in seconds; None when absent or an HTTP date.

    >>> _retry_after({"retry-after": "2"}), _retry_after({})
    (2.0, None)
    """
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # the HTTP-date form: fall back to our own backoff
        return None


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI-style ``{"error": {"message"}}``, else the body text."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and error.get("message"):
        param = error.get("param")
        return f"{error['message']}" + (f" (param: {param})" if param else "")
    if isinstance(error, str):
        return error
    return response.text[:500] or response.reason_phrase


def _json_body(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError, or bytes that are not text
        body = None
    if not isinstance(body, dict):
        raise JudgeHTTPError(
            f"reply is not a JSON object: {response.text[:300]!r}",
            status=response.status_code,
            attempts=1,
        )
    return body


def _rejects_n(error: JudgeHTTPError) -> bool:
    """A 400 that names the ``n`` parameter: the server only does one reply per request."""
    return error.status == 400 and re.search(r"\bn\b", error.server_message) is not None
