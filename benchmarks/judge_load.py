r"""The judge under load: several callers at once, a deadline shorter than the queue.

A real Serve judge over HTTP whose verdicts take a fixed time (the function
backend ``rayalign.testing:slow_judge``: 1 s a batch), so the service's
capacity is known: replicas x max_batch_size verdicts a second. CALLERS
clients send REQUESTS requests in all at once, each with a per-verdict
deadline (``judge.timeout_s``) far shorter than the queue takes to drain.

Settings in the same run, on the same replica settings:

- shared, for each ``--queued`` value: each client keeps its share of the
  service's dispatch capacity in flight (what ``JudgeClient`` does: it asks
  ``/v1/capacity?caller=ID``); the capacity is the running batch plus
  ``judge.queued_batches`` full batches waiting behind it, so with 1 the
  replica starts its next batch the moment one ends;
- unshared (baseline): each client keeps the whole capacity (the running
  batch, nothing queued) in flight, as if it were alone (what every client
  did before the service kept a book of callers).

For each it prints verdicts lost (unscorable), deadlines missed and retried,
throughput against the capacity (nominal: batch size per second; measured:
batch size per mean batch duration, as the replica timed its batches), and
what the replica computed (from ``/v1/stats``: requests judged, dropped,
computed for nobody).

    python benchmarks/judge_load.py [--requests 500] [--callers 3] [--batch 8] [--deadline 3] [--queued 0,1]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _requests(n: int, offset: int):
    from rayalign.types import JudgeRequest, Message, Prompt

    return [
        JudgeRequest(
            prompt=Prompt(
                id=f"q{offset + i}", messages=(Message("user", f"question {offset + i}"),), expected="comply"
            ),
            answer=f"answer {i}",
            request_id=f"q{offset + i}",
        )
        for i in range(n)
    ]


def _unshared_client(url: str, deadline: float):
    """A client that keeps the whole capacity in flight whatever other callers do (the baseline)."""
    from rayalign.judge.client import JudgeClient, _HttpTransport

    class Unshared(_HttpTransport):
        async def capacity(self, caller: str, in_flight: int):
            return dataclasses.replace(await super().capacity(caller, in_flight), share=0)

    http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30))
    return JudgeClient(transport=Unshared(http, url, ""), timeout_s=deadline), http


async def _callers(url: str, per_caller: list[int], deadline: float, shared: bool) -> tuple[float, list]:
    from rayalign.judge.client import JudgeClient

    clients, https = [], []
    for _ in per_caller:
        if shared:
            clients.append(JudgeClient(url=url, timeout_s=deadline))
        else:
            client, http = _unshared_client(url, deadline)
            clients.append(client)
            https.append(http)
    offsets = [sum(per_caller[:k]) for k in range(len(per_caller))]
    start = time.perf_counter()
    await asyncio.gather(*(c.score(_requests(n, o)) for c, n, o in zip(clients, per_caller, offsets)))
    seconds = time.perf_counter() - start
    for http in https:
        await http.aclose()
    return seconds, [c.losses() for c in clients]


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=30).json()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=500, help="in all, split evenly among the callers")
    p.add_argument("--callers", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="judge.max_batch_size (one replica)")
    p.add_argument("--deadline", type=float, default=3.0, help="judge.timeout_s: seconds a verdict may take")
    p.add_argument("--queued", default="0,1", help="judge.queued_batches values for the shared runs, comma-separated")
    args = p.parse_args()
    queued = [int(q) for q in args.queued.split(",")]

    from ray import serve

    from rayalign.cluster import init_ray
    from rayalign.config import load_config
    from rayalign.judge.service import APP_NAME, judge_app, start_judge
    from rayalign.testing import SLOW_JUDGE_S

    def config(queued_batches: int):
        return load_config(
            REPO / "configs/quickstart.yaml",
            [
                "--judge.backend=function",
                "--judge.function=rayalign.testing:slow_judge",
                "--judge.cascade=false",
                "--judge.k=1",
                f"--judge.max_batch_size={args.batch}",
                "--judge.batch_wait_s=0.05",
                f"--judge.timeout_s={args.deadline}",
                f"--judge.queued_batches={queued_batches}",
                "--judge.port=0",
            ],
        )

    init_ray(config(0).cluster)
    endpoint = start_judge(config(queued[0]))
    capacity = args.batch / SLOW_JUDGE_S
    per_caller = [args.requests // args.callers + (k < args.requests % args.callers) for k in range(args.callers)]
    runs = [(q, True) for q in queued] + [(0, False)]
    rows = []
    for k, (q, shared) in enumerate(runs):
        if k and q != runs[k - 1][0]:  # the same route, a fresh replica with the next setting
            serve.run(judge_app(config(q)), name=APP_NAME, route_prefix="/")
        before = _stats(endpoint.url)
        seconds, losses = asyncio.run(_callers(endpoint.url, per_caller, args.deadline, shared))
        after = _stats(endpoint.url)
        grew = {k: after[k] - before[k] for k in ("requests", "judged", "dropped", "computed_for_nobody")}
        unscorable = sum(sum(x.unscorable.values()) for x in losses)
        throughput = (args.requests - unscorable) / seconds
        batches = sum(after["batch_sizes"].values()) - sum(before["batch_sizes"].values())
        mean_batch_s = (after["batch_seconds"] - before["batch_seconds"]) / max(batches, 1)
        measured = args.batch / mean_batch_s if mean_batch_s else float("nan")
        name = f"shared, {q} batch(es) queued" if shared else "unshared (baseline)"
        print(f"{name}: {unscorable} unscorable, {seconds:.0f} s, {grew}", flush=True)
        rows.append(
            [
                name,
                f"{unscorable}/{args.requests}",
                sum(x.retried for x in losses),
                seconds,
                throughput,
                f"{throughput / capacity:.2f}",
                mean_batch_s,
                f"{throughput / measured:.2f}",
                grew["requests"],
                grew["judged"],
                grew["dropped"],
                grew["computed_for_nobody"],
            ]
        )
    serve.delete(APP_NAME)
    serve.shutdown()
    print(
        f"\nJudge under load: {args.requests} requests from {args.callers} callers at once over HTTP; one replica, "
        f"batches of {args.batch} taking {SLOW_JUDGE_S:g} s (capacity {capacity:g} verdicts/s, the queue drains in "
        f"{args.requests / capacity:.0f} s); deadline {args.deadline:g} s per verdict, retried once"
    )
    print(
        table(
            [
                "dispatch",
                "unscorable",
                "deadlines missed (retried)",
                "wall s",
                "scored verdicts/s",
                "of nominal capacity",
                "mean batch s",
                "of measured capacity",
                "requests received",
                "computed",
                "dropped uncomputed",
                "computed for nobody",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
