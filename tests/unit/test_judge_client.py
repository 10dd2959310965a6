"""The judge client's dispatch without Ray: capacity limit, per-verdict deadline, retry-once, losses."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

import pytest

from rayalign.judge.admission import AdmissionBook
from rayalign.judge.client import (
    CapacityGate,
    JudgeCapacity,
    JudgeClient,
    JudgeLosses,
    losses_warning,
    quiet_routing_retries,
)
from rayalign.judge.rubric import unscorable
from rayalign.types import JudgeRequest, Message, Prompt, Verdict


def _request(i: int, answer: str = "fine") -> JudgeRequest:
    prompt = Prompt(id=f"p{i}", messages=(Message("user", f"question {i}"),), expected="comply")
    return JudgeRequest(prompt=prompt, answer=answer, request_id=f"r{i}")


class FakeService:
    """A judge service in this process: each request takes ``work_s`` (or the seconds its answer names,
    ``slow:S`` on every try, ``slow-once:S`` on the first); it records what is in flight."""

    def __init__(self, capacities: list[JudgeCapacity], work_s: float = 0.01):
        self.capacities, self.work_s = capacities, work_s
        self.in_flight = self.peak = 0
        self.sent: list[str] = []
        self.peaks: list[int] = []
        """Peak in flight between capacity answers."""
        self.callers: list[str] = []
        """Who asked for capacity, in order."""
        self.left: list[str] = []

    async def leave(self, caller: str) -> None:
        self.left.append(caller)

    async def capacity(self, caller: str, in_flight: int = 0) -> JudgeCapacity:
        self.callers.append(caller)
        self.peaks.append(self.peak)
        self.peak = self.in_flight
        return self.capacities.pop(0) if len(self.capacities) > 1 else self.capacities[0]

    async def send(self, call, request: JudgeRequest) -> Verdict:
        assert call.name == "score"
        self.sent.append(request.request_id)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self._work_s(request))
        finally:
            self.in_flight -= 1
        if request.answer == "late-on-the-service":
            return unscorable(
                "judge timed out after 0.1s", spec_hash="", template_hash="", request_id=request.request_id
            )
        return Verdict("ok", 5.0, request_id=request.request_id)

    def _work_s(self, request: JudgeRequest) -> float:
        kind, _, seconds = request.answer.partition(":")
        if kind == "slow" or (kind == "slow-once" and self.sent.count(request.request_id) == 1):
            return float(seconds)
        return self.work_s


def _client(service: FakeService, **kwargs) -> JudgeClient:
    return JudgeClient(transport=service, **{"timeout_s": 0.2, "backoff_s": 0.0, **kwargs})


def test_a_timed_out_verdict_is_asked_once_more_then_unscorable_with_the_reason():
    service = FakeService([JudgeCapacity(1, 4)])
    client = _client(service)
    late, ok = client.score_sync([_request(0, "slow:5"), _request(1)])
    assert service.sent.count("r0") == 2  # the first try and one retry, not more
    assert late.status == "unscorable" and late.score is None and late.request_id == "r0"
    assert "timed out after 0.2s (try 2 of 2)" in late.explanation
    assert ok.status == "ok"
    assert client.losses() == JudgeLosses(results=2, unscorable={"timeout": 1}, retried=1)


def test_a_verdict_late_only_once_comes_back_scored():
    service = FakeService([JudgeCapacity(1, 4)])
    client = _client(service)
    [verdict] = client.score_sync([_request(0, "slow-once:5")])
    assert verdict.status == "ok" and service.sent == ["r0", "r0"]
    assert client.losses() == JudgeLosses(results=1, unscorable={}, retried=1)


def test_the_service_side_deadline_is_retried_too_and_retries_are_configurable():
    service = FakeService([JudgeCapacity(1, 4)])
    client = _client(service, timeout_retries=2)
    [verdict] = client.score_sync([_request(0, "late-on-the-service")])
    assert service.sent == ["r0"] * 3
    assert verdict.explanation == "judge timed out after 0.1s"
    assert client.losses().unscorable == {"timeout": 1}
    no_retry = _client(FakeService([JudgeCapacity(1, 4)]), timeout_retries=0)
    no_retry.score_sync([_request(0, "slow:5")])
    assert no_retry.losses() == JudgeLosses(results=1, unscorable={"timeout": 1}, retried=0)


def test_in_flight_never_exceeds_the_capacity_and_the_rest_wait_on_the_client():
    service = FakeService([JudgeCapacity(replicas=1, max_batch_size=4)])
    verdicts = _client(service, concurrency=64).score_sync([_request(i) for i in range(40)])
    assert [v.request_id for v in verdicts] == [f"r{i}" for i in range(40)]
    assert all(v.status == "ok" for v in verdicts)
    assert service.peak == 4  # one batch of 4: full, never over
    capped = FakeService([JudgeCapacity(replicas=1, max_batch_size=4)])
    _client(capped, concurrency=3).score_sync([_request(i) for i in range(20)])
    assert capped.peak == 3  # concurrency stays an upper bound


def test_a_capacity_refresh_raises_the_limit_as_replicas_come_up():
    service = FakeService(
        [JudgeCapacity(1, 4, refresh_s=0.05)] * 2 + [JudgeCapacity(3, 4, refresh_s=0.05)], work_s=0.02
    )
    _client(service, concurrency=64).score_sync([_request(i) for i in range(150)])
    assert service.peaks[1] == 4  # one replica: one batch
    assert max(service.peaks[2:] + [service.peak]) == 12  # three replicas: three batches


def test_a_service_that_cannot_say_its_capacity_gets_concurrency():
    service = FakeService([JudgeCapacity(1, 4)])

    async def no_capacity(caller, in_flight):
        raise RuntimeError("404")

    service.capacity = no_capacity
    client = _client(service, concurrency=7)
    client.score_sync([_request(i) for i in range(30)])
    assert service.peak == 7 and client.capacity is None


class SharedService(FakeService):
    """One fake service, one book of callers: each caller's capacity answer carries its fair share."""

    def __init__(self, capacity: int, work_s: float):
        super().__init__([JudgeCapacity(1, capacity, refresh_s=0.05)], work_s)
        self.book = AdmissionBook(expire_s=1.0)
        self.shares: dict[str, list[int]] = collections.defaultdict(list)
        self.timeline: list[tuple[float, int]] = []
        """(seconds since the first request, requests in flight) at every send."""
        self.start = time.monotonic()

    async def send(self, call, request: JudgeRequest) -> Verdict:
        self.timeline.append((time.monotonic() - self.start, self.in_flight + 1))
        return await super().send(call, request)

    async def capacity(self, caller: str, in_flight: int = 0) -> JudgeCapacity:
        await super().capacity(caller)
        share, callers = self.book.share(caller, self.capacities[0].max_batch_size, time.monotonic(), in_flight)
        self.shares[caller].append(share)
        return dataclasses.replace(self.capacities[0], callers=callers, share=share)

    async def leave(self, caller: str) -> None:
        await super().leave(caller)
        self.book.leave(caller)


def test_three_callers_share_the_capacity_and_together_never_exceed_it():
    service = SharedService(capacity=8, work_s=0.02)
    clients = [_client(service, concurrency=64) for _ in range(3)]

    async def run():
        together = [c.score([_request(100 * k + i) for i in range(60)]) for k, c in enumerate(clients)]
        return await asyncio.gather(*together)

    results = asyncio.run(run())
    assert all(v.status == "ok" for verdicts in results for v in verdicts)
    steady = [collections.Counter(service.shares[c.caller]).most_common(1)[0][0] for c in clients]
    assert sorted(steady) == [2, 3, 3]  # 8 shared: 3 + 3 + 2
    # The first keeps the 8 it had alone until they drain; the newcomers get one each meanwhile.
    assert max(n for _, n in service.timeline) <= 8 + 2
    assert max(n for t, n in service.timeline if t > 0.2) == 8
    assert sorted(service.left) == sorted(c.caller for c in clients)  # each said it was done, once


def test_a_client_leaves_once_after_its_last_concurrent_call():
    service = FakeService([JudgeCapacity(1, 4)])
    client = _client(service)

    async def run():
        await asyncio.gather(client.score([_request(0)]), client.score([_request(i) for i in range(1, 30)]))

    asyncio.run(run())
    assert service.left == [client.caller] and set(service.callers) == {client.caller}


def test_the_gate_lets_a_cancelled_waiter_pass_its_turn():
    async def run():
        gate = CapacityGate(1)
        order = []

        async def hold(name, seconds):
            async with gate:
                order.append(name)
                await asyncio.sleep(seconds)

        first = asyncio.create_task(hold("a", 0.05))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(hold("b", 0))
        third = asyncio.create_task(hold("c", 0))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(first, third, return_exceptions=True)
        return order, gate.in_flight

    assert asyncio.run(run()) == (["a", "c"], 0)


def test_losses_add_subtract_and_warn_loudly_above_the_threshold():
    stage = JudgeLosses(100, {"timeout": 3}, retried=4) + JudgeLosses(20, {"timeout": 66, "unparseable": 1})
    assert stage == JudgeLosses(120, {"timeout": 69, "unparseable": 1}, retried=4)
    assert stage.since(JudgeLosses(100, {"timeout": 3}, retried=4)) == JudgeLosses(
        20, {"timeout": 66, "unparseable": 1}
    )
    warning = losses_warning(stage, 0.05, what="[eval] judge")
    assert warning.startswith("!!! [eval] judge: 70 of 120 verdicts unscorable (58.3%, above")
    assert "timeout: 69 (4 retried)" in warning and "raise judge.timeout_s" in warning
    assert "unparseable: 1" in warning.splitlines()[2]
    assert losses_warning(JudgeLosses(120, {"timeout": 6}), 0.05) is None  # 5% is not above 5%
    assert losses_warning(JudgeLosses(), 0.05) is None


def test_routing_retry_chatter_goes_to_a_file_not_the_console(tmp_path, caplog):
    serve_logger = logging.getLogger("ray.serve")
    path = str(tmp_path / "routing.log")
    earlier = list(serve_logger.filters)  # a handle client earlier in this process installed its own
    for f in earlier:
        serve_logger.removeFilter(f)
    try:
        assert quiet_routing_retries(path) == path
        assert quiet_routing_retries(str(tmp_path / "other.log")) == path  # once per process
        with caplog.at_level(logging.INFO):
            serve_logger.warning("Failed to route request after 150 attempts over 33.10s. Retrying.")
            serve_logger.warning("Replica died")
        assert [r.getMessage() for r in caplog.records] == ["Replica died"]
        assert "Failed to route request after 150 attempts" in (tmp_path / "routing.log").read_text()
    finally:
        for f in list(serve_logger.filters):
            serve_logger.removeFilter(f)
            f.file.close()
        for f in earlier:
            serve_logger.addFilter(f)


@pytest.mark.parametrize("bad", [{}, {"url": "http://x", "transport": object()}])
def test_a_client_needs_exactly_one_way_to_the_service(bad):
    with pytest.raises(ValueError, match="exactly one"):
        JudgeClient(**bad)
