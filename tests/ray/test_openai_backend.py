"""OpenAIJudge against a real vLLM OpenAI-compatible server (started once, no Ray),
and against a small scripted HTTP server for what vLLM will not do on demand
(429 with Retry-After, 503s, rejecting ``n``).
"""

import asyncio
import doctest
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from rayalign.judge import openai_backend
from rayalign.judge.openai_backend import (
    MAX_DELAY_S,
    JudgeHTTPError,
    OpenAIJudge,
    OpenAISettings,
    _backoff_delay,
    _payload,
)
from rayalign.models import resolve_model
from rayalign.types import Message

START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conversations(k: int) -> list[list[Message]]:
    return [[Message("system", "You are a judge."), Message("user", f"question {i}")] for i in range(k)]


def _run(judge: OpenAIJudge, conversations, n: int):
    """complete() in a fresh event loop, closing the pool afterwards."""

    async def go():
        try:
            return await judge.complete(conversations, n, [])
        finally:
            await judge.aclose()

    return asyncio.run(go())


# ------------------------------------------------------------ a real vLLM server


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    """``http://127.0.0.1:<port>/v1`` serving the tiny model as ``tiny``."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    port, log_path = _free_port(), tmp_path_factory.mktemp("vllm") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(resolve_model(tiny_model)), "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "1024", "--dtype", "float32", "--enforce-eager",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}  # GiB; the default wants far more
    with open(log_path, "wb") as log:
        # A session of its own, so teardown can end the server and its engine process together.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, base_url, log_path)
        yield base_url
    finally:
        _stop(proc)


def _wait_ready(proc: subprocess.Popen, base_url: str, log_path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"vLLM server not ready after {START_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _settings(base_url: str, **overrides) -> OpenAISettings:
    return OpenAISettings(**{"base_url": base_url, "model": "tiny", "max_tokens": 8, **overrides})


def test_n_replies_per_conversation_in_one_request_each(vllm_server):
    judge = OpenAIJudge(_settings(vllm_server))
    replies = _run(judge, _conversations(3), n=2)
    assert len(replies) == 3 and all(len(group) == 2 for group in replies)
    assert all(isinstance(text, str) and text for group in replies for text in group)
    assert any(len(set(group)) == 2 for group in replies)  # sampled, not one reply copied
    assert judge.attempts == 3 and judge.n_supported  # vLLM takes n: no per-reply fallback


def test_requests_in_flight_never_exceed_max_concurrency(vllm_server):
    judge = OpenAIJudge(_settings(vllm_server, max_concurrency=2))
    replies = _run(judge, _conversations(6), n=1)
    assert [len(group) for group in replies] == [1] * 6
    assert judge.attempts == 6
    assert judge.peak_in_flight == 2  # the cap was reached and held


def test_unknown_model_is_a_4xx_raised_without_retrying(vllm_server):
    judge = OpenAIJudge(_settings(vllm_server, model="no-such-judge", backoff_s=0.01))
    with pytest.raises(JudgeHTTPError, match="no-such-judge") as caught:
        _run(judge, _conversations(1), n=1)
    assert caught.value.status == 404
    assert caught.value.attempts == 1 and judge.attempts == 1


def test_a_400_about_another_parameter_does_not_drop_n(vllm_server):
    judge = OpenAIJudge(_settings(vllm_server, max_tokens=5000))  # > max_model_len
    with pytest.raises(JudgeHTTPError, match="max_tokens") as caught:
        _run(judge, _conversations(1), n=2)
    assert caught.value.status == 400 and judge.attempts == 1
    assert judge.n_supported


def test_connection_refused_is_retried_then_raised():
    settings = OpenAISettings(f"http://127.0.0.1:{_free_port()}/v1", "tiny", max_retries=2, backoff_s=0.01)
    judge = OpenAIJudge(settings)
    with pytest.raises(JudgeHTTPError, match="no response after 3 attempt") as caught:
        _run(judge, _conversations(1), n=1)
    assert caught.value.status is None and judge.attempts == 3


# ------------------------------------------------------------ a scripted server

Reply = tuple[int, dict[str, str], dict]
"""(status, headers, JSON body)."""


def _ok(n: int, text: str = '{"score": 7}') -> Reply:
    choices = [{"index": i, "message": {"role": "assistant", "content": text}} for i in range(n)]
    return 200, {}, {"choices": choices}


class ScriptedServer:
    """A real HTTP server whose reply to each POST is ``respond(body, call_index)``."""

    def __init__(self, respond: Callable[[dict, int], Reply]):
        self.bodies: list[dict] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                status, headers, reply = respond(body, len(server.bodies) - 1)
                data = json.dumps(reply).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_429_waits_for_retry_after_then_succeeds():
    def respond(body, i):
        return (429, {"Retry-After": "0.3"}, {"error": {"message": "slow down"}}) if i == 0 else _ok(1)

    with ScriptedServer(respond) as server:
        judge = OpenAIJudge(OpenAISettings(server.base_url, "j", backoff_s=0.001))
        start = time.monotonic()
        replies = _run(judge, _conversations(1), n=1)
        elapsed = time.monotonic() - start
    assert replies == [['{"score": 7}']]
    assert judge.attempts == 2 and elapsed >= 0.3  # the header's wait, not the 1 ms backoff


def test_5xx_is_retried_max_retries_times_then_raised_with_the_server_message():
    def respond(body, i):
        return 503, {}, {"error": {"message": "engine overloaded"}}

    with ScriptedServer(respond) as server:
        judge = OpenAIJudge(OpenAISettings(server.base_url, "j", max_retries=2, backoff_s=0.001))
        with pytest.raises(JudgeHTTPError, match="engine overloaded") as caught:
            _run(judge, _conversations(1), n=1)
    assert caught.value.status == 503 and caught.value.attempts == 3
    assert len(server.bodies) == 3


def test_server_rejecting_n_gets_single_requests_and_is_remembered():
    def respond(body, i):
        if body.get("n", 1) > 1:
            return 400, {}, {"error": {"message": "n: only 1 is supported", "param": "n"}}
        return _ok(1)

    with ScriptedServer(respond) as server:
        judge = OpenAIJudge(OpenAISettings(server.base_url, "j"))
        first = _run(judge, _conversations(2), n=3)
        asked_first = len(server.bodies)
        second = _run(judge, _conversations(2), n=3)  # a new event loop: a new pool, same memory
    assert [len(g) for g in first] == [3, 3] and [len(g) for g in second] == [3, 3]
    assert asked_first == 2 + 6  # one rejected n=3 request per conversation, then singles
    assert len(server.bodies) - asked_first == 6 and not judge.n_supported
    assert all("n" not in body for body in server.bodies[asked_first:])


def test_server_ignoring_n_is_topped_up_with_single_requests():
    with ScriptedServer(lambda body, i: _ok(1, f"reply {i}")) as server:
        judge = OpenAIJudge(OpenAISettings(server.base_url, "j"))
        replies = _run(judge, _conversations(1), n=3)
    assert sorted(replies[0]) == ["reply 0", "reply 1", "reply 2"]


def test_bearer_token_and_json_mode_are_sent_only_when_set():
    with ScriptedServer(lambda body, i: _ok(1)) as server:
        _run(
            OpenAIJudge(OpenAISettings(server.base_url, "j", api_key="sk-test", json_mode=True)),
            _conversations(1),
            1,
        )
        _run(OpenAIJudge(OpenAISettings(server.base_url, "j")), _conversations(1), 1)
    assert server.headers[0]["authorization"] == "Bearer sk-test"
    assert server.bodies[0]["response_format"] == {"type": "json_object"}
    assert "authorization" not in server.headers[1] and "response_format" not in server.bodies[1]
    assert server.bodies[1]["model"] == "j"
    assert server.bodies[1]["messages"][1] == {"role": "user", "content": "question 0"}


# ------------------------------------------------------------ pure helpers


def test_docstring_examples_hold():
    assert doctest.testmod(openai_backend).failed == 0


def test_backoff_doubles_per_attempt_with_equal_jitter():
    # full wait = base * 2**attempt; the delay lies in [full/2, full]
    assert _backoff_delay(0, 0.5, None, rand=0.0) == 0.25
    assert _backoff_delay(1, 0.5, None, rand=0.5) == 0.75  # full 1.0 -> 0.5 + 0.25
    assert _backoff_delay(3, 1.0, None, rand=1.0) == 8.0
    assert 2.0 <= _backoff_delay(2, 1.0, None) <= 4.0
    assert _backoff_delay(20, 1.0, None, rand=0.0) == MAX_DELAY_S


def test_retry_after_overrides_backoff_within_the_cap():
    assert _backoff_delay(5, 0.5, 2.0, rand=0.9) == 2.0
    assert _backoff_delay(0, 0.5, 0.0) == 0.0
    assert _backoff_delay(0, 0.5, -3.0) == 0.0
    assert _backoff_delay(0, 0.5, 3600.0) == MAX_DELAY_S


def test_payload_carries_n_only_above_one():
    settings = OpenAISettings("http://h/v1", "judge", temperature=0.2, max_tokens=64)
    one = _payload(settings, [Message("user", "hi")], 1)
    assert one == {
        "model": "judge",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "max_tokens": 64,
    }
    assert _payload(settings, [Message("user", "hi")], 4)["n"] == 4


def test_settings_reject_values_that_cannot_work():
    with pytest.raises(ValueError, match="base_url"):
        OpenAISettings("127.0.0.1:8000/v1", "judge")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAISettings("http://h/v1", "judge", max_concurrency=0)
