"""The whole RL loop across nodes: Ray's multi-node test cluster on this
machine (``ray.cluster_utils.Cluster``: a head and three nodes, each its own
raylet and object store), the sampler, the judge and the learner each on a
node of its own by custom resource, weights synced by collective broadcast
between the learner's node and the sampler's, run to the end and resumed.
"""

from __future__ import annotations

import json

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from rayalign.rl.train import run_rl
from tests.ray.test_rl import rl_config, write_prompts

NODES = ("rollout", "judge", "learner")
ACTORS = {"rollout": "RolloutWorker", "judge": "JudgeService", "learner": "TrainWorker"}
"""Each node's custom resource -> a fragment of the class name of the actors that ask for it."""


@pytest.fixture(scope="module")
def three_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 256 << 20})
    nodes = {name: cluster.add_node(num_cpus=1, resources={name: 1}, object_store_memory=256 << 20) for name in NODES}
    cluster.wait_for_nodes()
    yield cluster, {name: node.node_id for name, node in nodes.items()}
    ray.shutdown()
    cluster.shutdown()


def _config(cluster, out, prompts, tiny_model, steps):
    return rl_config(
        out,
        prompts,
        tiny_model,
        f"--cluster.address={cluster.address}",
        "--cluster.num_cpus=4",
        "--cluster.resources={rollout: 1, judge: 1, learner: 1}",
        "--rollout.resource=rollout",
        "--judge.resource=judge",
        "--rl.learner.resource=learner",
        "--rl.learner.num_workers=1",
        "--rl.learner.strategy=ddp",
        "--rl.micro_batch_size=8",
        "--rl.prompts_per_step=2",
        "--rl.sync=collective",
        f"--rl.steps={steps}",
        "--rl.learner.checkpoint_every=2",
    )


def _nodes_of(class_fragment: str) -> set[str]:
    return {a.node_id for a in list_actors(detail=True, limit=10000) if class_fragment in (a.class_name or "")}


def test_rl_runs_across_three_nodes_and_resumes(three_nodes, tiny_model, tmp_path):
    cluster, node_of = three_nodes
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    first = run_rl(_config(cluster, tmp_path, prompts, tiny_model, 2), tmp_path / "rl", log=lambda *_: None)
    assert first.steps == 2

    # Each piece ran on its own node, none on the head.
    placement = {name: _nodes_of(cls) for name, cls in ACTORS.items()}
    print(f"nodes: {node_of}; actors ran on: {placement}")
    assert placement == {name: {node_of[name]} for name in NODES}

    resumed = run_rl(_config(cluster, tmp_path, prompts, tiny_model, 4), tmp_path / "rl", log=lambda *_: None)
    assert (resumed.start_step, resumed.steps) == (2, 4)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "rl/sync_bytes" in x]
    assert [x["rl/policy_version"] for x in steps][-2:] == [3, 4]
    assert all(x["rl/sync_bytes"] > 0 for x in steps)
