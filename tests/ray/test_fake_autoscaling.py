"""Ray's real autoscaler, faked nodes: a stage needing `judge` makes it launch one.

cluster/local-fake.yaml describes a head with 2 CPUs and no `judge`, and a
`judge_worker` type ({CPU: 1, judge: 1}, 0 to 1 nodes). The fake_multinode
provider starts a "node" as extra raylets on this machine, so the judge
replica, which asks for `judge: 1`, can only run once the autoscaler has
launched one. The head is this module's own (see test_job_submit.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass

import pytest
import yaml
from ray.util import get_node_ip_address

from rayalign.judge.service import free_port
from tests.ray.test_job_submit import (
    FUNCTION_JUDGE,
    REQUESTS,
    VENV_BIN,
    PrivateHead,
    ray_env,
    start_head,
    stop_head,
)

JUDGE_ON_ITS_OWN_NODE = ["--cluster.address=auto", "--judge.resource=judge", "--cluster.resources={judge: 1}"]


@pytest.fixture(scope="module")
def fake_cluster(repo, tmp_path_factory):
    """The fake autoscaling head, its config pointing the fake nodes at this head's GCS."""
    port = free_port()
    config = yaml.safe_load((repo / "cluster/local-fake.yaml").read_text())
    config["provider"]["gcs_address"] = f"{get_node_ip_address()}:{port}"
    path = tmp_path_factory.mktemp("fake") / "local-fake.yaml"
    path.write_text(yaml.safe_dump(config))
    # AUTOSCALER_UPDATE_INTERVAL_S: react within a second, not five.
    env = ray_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    head = start_head(
        ["--num-cpus=2", "--num-gpus=0", f"--port={port}", "--include-dashboard=false", f"--autoscaling-config={path}"],
        env,
    )
    yield head
    leftovers = stop_head(head)
    assert not leftovers, f"processes of the test's Ray head (or its fake nodes) survived teardown: {leftovers}"


def active_nodes(status: str) -> list[str]:
    """The "Active:" node types of `ray status`.

    >>> active_nodes("Active:\\n 1 ray.head.default\\n 1 judge_worker\\nPending:\\n")
    ['ray.head.default', 'judge_worker']
    """
    lines = status.splitlines()
    if "Active:" not in lines:
        return []
    active = []
    for line in lines[lines.index("Active:") + 1 :]:
        if not line.startswith(" "):
            break
        count, name = line.split()
        active += [name] * int(count)
    return active


def _ray_status(head: PrivateHead) -> str:
    result = subprocess.run(
        [str(VENV_BIN / "ray"), "status", f"--address={head.address}"],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


def _wait_for_status(head: PrivateHead, ready, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while not ready(status := _ray_status(head)):
        if time.monotonic() > deadline:
            pytest.fail(f"`ray status` never showed the expected nodes:\n{status}")
        time.sleep(1)
    return status


@dataclass(frozen=True)
class ScaledStage:
    before: str
    """`ray status` before the stage."""
    result: subprocess.CompletedProcess
    verdicts: list[dict]
    after: str


@pytest.fixture(scope="module")
def judged_on_a_new_node(fake_cluster, repo, tmp_path_factory) -> ScaledStage:
    """`rayalign judge score` with the judge pinned to `judge`, run against the fake cluster."""
    head = fake_cluster
    before = _wait_for_status(head, lambda s: "ray.head.default" in active_nodes(s))
    tmp = tmp_path_factory.mktemp("stage")
    requests, out = tmp / "requests.jsonl", tmp / "verdicts.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in REQUESTS))
    cmd = [
        str(VENV_BIN / "rayalign"),
        "judge",
        "score",
        str(requests),
        "--config",
        "configs/quickstart.yaml",
        *FUNCTION_JUDGE,
        *JUDGE_ON_ITS_OWN_NODE,
        "--out",
        str(out),
    ]
    result = subprocess.run(
        cmd, cwd=repo, env={**head.env, "RAY_ADDRESS": head.address}, capture_output=True, text=True, timeout=240
    )
    verdicts = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    after = (
        _wait_for_status(head, lambda s: "judge_worker" in active_nodes(s))
        if result.returncode == 0
        else _ray_status(head)
    )
    return ScaledStage(before, result, verdicts, after)


def test_the_head_alone_offers_no_judge(judged_on_a_new_node):
    assert active_nodes(judged_on_a_new_node.before) == ["ray.head.default"]
    assert " judge" not in judged_on_a_new_node.before  # no `judge` resource anywhere yet


def test_stage_needing_judge_completes_on_a_launched_judge_worker(judged_on_a_new_node, fake_cluster):
    stage = judged_on_a_new_node
    monitor_log = (fake_cluster.temp_dir / "session_latest/logs/monitor.log").read_text(errors="replace")
    assert stage.result.returncode == 0, stage.result.stderr[-3000:] + "\n--- autoscaler:\n" + monitor_log[-3000:]
    assert [(v["request_id"], v["status"], v["score"]) for v in stage.verdicts] == [
        ("a", "ok", 9.25),
        ("b", "ok", 1.905),
    ]
    assert sorted(active_nodes(stage.after)) == ["judge_worker", "ray.head.default"]
    assert "/1.0 judge" in stage.after  # the new node offers the judge unit (freed once the stage deleted its app)
    assert "Launching 1 nodes, type judge_worker." in monitor_log  # the autoscaler's own account
