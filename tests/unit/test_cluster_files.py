"""Cluster files in cluster/ are checked offline: Ray's launcher schema, KubeRay
fields, capacity at max scale, and whether a config's stages fit. No Ray starts."""

from pathlib import Path

import pytest
import yaml

from rayalign.clusterfile import (
    capacity,
    check_config_fits,
    validate_cluster_file,
    validate_kuberay,
    validate_launcher_yaml,
)
from rayalign.config import load_config
from rayalign.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CLUSTER_FILES = sorted([*REPO.glob("cluster/**/*.yaml"), *REPO.glob("cluster/**/*.yml")])
GPU_CONFIG = REPO / "configs/gpu-8x-h100.yaml"
SHIPPED = [
    "cluster/aws.yaml",
    "cluster/gcp.yaml",
    "cluster/kuberay/raycluster.yaml",
    "cluster/kuberay/rayjob.yaml",
]


def _ids(path: Path) -> str:
    return str(path.relative_to(REPO))


def _copy(tmp_path: Path, name: str, old: str, new: str) -> tuple[Path, int]:
    """A copy of cluster/<name> with the first ``old`` replaced; returns it and that line."""
    text = (REPO / "cluster" / name).read_text()
    assert old in text, f"{old!r} not in {name}"
    line = text[: text.index(old)].count("\n") + 1
    path = tmp_path / Path(name).name
    path.write_text(text.replace(old, new, 1))
    return path, line


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=_ids)
def test_every_cluster_file_validates(path):
    validate_cluster_file(path)


@pytest.mark.parametrize("name", SHIPPED)
def test_gpu_config_fits_each_shipped_cluster_file(name):
    assert REPO / name in CLUSTER_FILES
    check_config_fits(load_config(GPU_CONFIG), REPO / name)


def test_launcher_yaml_gets_ray_defaults_and_keeps_the_cpu_free_head():
    prepared = validate_launcher_yaml(REPO / "cluster/aws.yaml")
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    # Ray merges setup_commands into the head's and the workers' lists.
    assert prepared["worker_setup_commands"][-1].startswith('pip install "rayalign[gpu] @')


def test_typo_in_node_type_key_is_named_with_its_line(tmp_path):
    path, line = _copy(tmp_path, "aws.yaml", "max_workers: 2 ", "max_wokers: 2 ")
    with pytest.raises(ConfigError) as e:
        validate_launcher_yaml(path)
    assert e.value.field == "available_node_types.rollout.max_wokers"
    assert e.value.line == line
    assert "did you mean 'max_workers'" in str(e.value)


def test_typo_in_top_level_key(tmp_path):
    path, line = _copy(tmp_path, "gcp.yaml", "idle_timeout_minutes:", "idle_timeout_minute:")
    with pytest.raises(ConfigError) as e:
        validate_cluster_file(path)
    assert (e.value.field, e.value.line) == ("idle_timeout_minute", line)
    assert str(e.value).startswith(f"{path}:{line}: idle_timeout_minute: unknown key")


def test_head_type_not_in_available_node_types(tmp_path):
    path, line = _copy(tmp_path, "aws.yaml", "head_node_type: head", "head_node_type: ray.head")
    with pytest.raises(
        ConfigError,
        match=r"'ray.head' is not one of available_node_types \(head, rollout, judge, learner\)",
    ) as e:
        validate_launcher_yaml(path)
    assert (e.value.field, e.value.line) == ("head_node_type", line)


def test_wrong_type_is_located(tmp_path):
    path, line = _copy(tmp_path, "aws.yaml", "max_workers: 2 ", "max_workers: two ")
    with pytest.raises(ConfigError, match="'two' is not of type 'integer'") as e:
        validate_launcher_yaml(path)
    assert (e.value.field, e.value.line) == ("available_node_types.rollout.max_workers", line)


def test_min_above_max_workers(tmp_path):
    path, line = _copy(
        tmp_path,
        "aws.yaml",
        "min_workers: 0\n    max_workers: 1 ",
        "min_workers: 2\n    max_workers: 1 ",
    )
    with pytest.raises(ConfigError, match="2 is above max_workers \\(1\\)") as e:
        validate_launcher_yaml(path)
    assert (e.value.field, e.value.line) == ("available_node_types.learner.min_workers", line)


def test_global_max_below_the_node_types_maxima(tmp_path):
    path, line = _copy(tmp_path, "aws.yaml", "max_workers: 5", "max_workers: 4")
    with pytest.raises(ConfigError, match=r"4 is below the sum of the node types' max_workers \(5\)") as e:
        validate_launcher_yaml(path)
    assert (e.value.field, e.value.line) == ("max_workers", line)


def test_capacity_needs_cpu_and_gpu_declared(tmp_path):
    path, line = _copy(tmp_path, "aws.yaml", "{CPU: 8, GPU: 1, judge: 1}", "{CPU: 8, judge: 1}")
    with pytest.raises(ConfigError, match="declare GPU") as e:
        capacity(path)
    assert (e.value.field, e.value.line) == ("available_node_types.judge.resources.GPU", line)


def test_kuberay_missing_group_name(tmp_path):
    path, line = _copy(
        tmp_path,
        "kuberay/raycluster.yaml",
        "- groupName: judge\n      replicas: 0",
        "- replicas: 0",
    )
    with pytest.raises(ConfigError) as e:
        validate_kuberay(path)
    assert e.value.field == "spec.workerGroupSpecs[1].groupName"
    assert e.value.line == line
    assert str(e.value).endswith("spec.workerGroupSpecs[1].groupName: missing")


def test_kuberay_missing_image_in_rayjob(tmp_path):
    path, line = _copy(tmp_path, "kuberay/rayjob.yaml", "image: rayproject", "imag: rayproject")
    with pytest.raises(ConfigError) as e:
        validate_kuberay(path)
    assert e.value.field == "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].image"
    assert e.value.line == line - 1  # the container's mapping, which lacks it, starts a line above


def test_kuberay_replicas_out_of_order(tmp_path):
    path, line = _copy(tmp_path, "kuberay/raycluster.yaml", "maxReplicas: 1 ", "maxReplicas: -1 ")
    with pytest.raises(ConfigError, match=r"-1 is below minReplicas \(0\)") as e:
        validate_kuberay(path)
    assert (e.value.field, e.value.line) == ("spec.workerGroupSpecs[2].maxReplicas", line)


def test_kuberay_unquoted_start_param(tmp_path):
    path, line = _copy(tmp_path, "kuberay/raycluster.yaml", 'num-cpus: "0"', "num-cpus: 0")
    with pytest.raises(ConfigError, match="must be a string \\(quote it\\); got 0") as e:
        validate_kuberay(path)
    assert (e.value.field, e.value.line) == ("spec.headGroupSpec.rayStartParams.num-cpus", line)


def test_kuberay_bad_custom_resources(tmp_path):
    path, line = _copy(
        tmp_path,
        "kuberay/raycluster.yaml",
        r"""resources: '"{\"judge\": 1}"'""",
        "resources: 'judge=1'",
    )
    with pytest.raises(ConfigError, match="must be a JSON object of numbers") as e:
        validate_kuberay(path)
    assert (e.value.field, e.value.line) == (
        "spec.workerGroupSpecs[1].rayStartParams.resources",
        line,
    )


def test_rayjob_working_dir_must_be_remote(tmp_path):
    path, _ = _copy(
        tmp_path,
        "kuberay/rayjob.yaml",
        "working_dir: https://github.com/YOUR-ORG/rayalign/archive/main.zip",
        "working_dir: .",
    )
    with pytest.raises(ConfigError, match="a RayJob has no local files to upload") as e:
        validate_kuberay(path)
    assert e.value.field == "spec.runtimeEnvYAML.working_dir"


def test_rayjob_wrong_api_version(tmp_path):
    path, line = _copy(tmp_path, "kuberay/rayjob.yaml", "apiVersion: ray.io/v1", "apiVersion: ray.io/v1alpha1")
    with pytest.raises(ConfigError, match="must be ray.io/v1; got 'ray.io/v1alpha1'") as e:
        validate_kuberay(path)
    assert (e.value.field, e.value.line) == ("apiVersion", line)


def test_rayjob_runs_the_raycluster_spec_and_cleans_up():
    cluster = yaml.safe_load((REPO / "cluster/kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((REPO / "cluster/kuberay/rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["entrypoint"] == "rayalign generate configs/gpu-8x-h100.yaml --cluster.address=auto"
    assert (REPO / job["spec"]["entrypoint"].split()[2]).is_file()


def test_capacity_by_hand_aws():
    # head m5: 0 CPU, 0 GPU; rollout 2 x (8 CPU, 1 GPU); judge 2 x (8, 1); learner 1 x (192, 8)
    cap = capacity(REPO / "cluster/aws.yaml")
    assert cap.cpus == 0 + 2 * 8 + 2 * 8 + 1 * 192 == 224
    assert cap.gpus == 0 + 2 * 1 + 2 * 1 + 1 * 8 == 12
    assert cap.resources == {"rollout": 2, "judge": 2, "learner": 8}


def test_capacity_by_hand_kuberay():
    # head num-cpus "0"; rollout 2 x (8 CPU, 1 GPU); judge 2 x (8, 1); learner 1 x (96, 8)
    cap = capacity(REPO / "cluster/kuberay/raycluster.yaml")
    assert (cap.cpus, cap.gpus) == (0 + 16 + 16 + 96, 0 + 2 + 2 + 8)
    assert cap.resources == {"rollout": 2, "judge": 2, "learner": 8}


def test_capacity_reads_quoted_and_millicpu_quantities(tmp_path):
    path, _ = _copy(
        tmp_path,
        "kuberay/raycluster.yaml",
        'num-cpus: "0"',
        'num-cpus: "0"\n      resources: \'{"head": 1}\'',
    )
    text = path.read_text().replace('limits: {cpu: "8", memory: 48Gi', 'limits: {cpu: "2500m", memory: 48Gi', 1)
    path.write_text(text)
    cap = capacity(path)
    assert cap.cpus == 0 + 2 * 2.5 + 16 + 96
    assert cap.resources["head"] == 1


def test_three_judge_units_do_not_fit_a_file_offering_two():
    cfg = load_config(GPU_CONFIG, ["--judge.replicas=3", "--cluster.resources.judge=3", "--cluster.num_gpus=9"])
    with pytest.raises(ConfigError) as e:
        check_config_fits(cfg, REPO / "cluster/aws.yaml")
    assert e.value.field == "judge.replicas"
    assert "needs 3 units of custom resource 'judge' at once" in str(e.value)
    assert "offers at most 2" in str(e.value)


def test_an_actor_bigger_than_its_nodes_is_refused():
    # 1 sampler x 2 GPUs fits the config's 8 GPUs, but rollout nodes have 1 GPU each.
    overrides = [
        "--rollout.num_workers=1",
        "--rollout.gpus_per_worker=2",
        "--rollout.tensor_parallel_size=2",
    ]
    cfg = load_config(GPU_CONFIG, overrides)
    with pytest.raises(ConfigError, match="one rollout actor asks 4 CPUs \\+ 2 GPUs") as e:
        check_config_fits(cfg, REPO / "cluster/gcp.yaml")
    assert e.value.field == "rollout.gpus_per_worker"


def test_learners_only_count_learner_nodes(tmp_path):
    # Learner nodes: 2 x (24 CPUs, 4 GPUs, learner: 4). Each SFT actor (8 CPUs, 1 GPU) fits
    # on one and the whole cluster has 16 + 16 + 48 = 80 CPUs, but SFT's 8 x 8 = 64 CPUs
    # must come from the learner nodes' 48.
    path, _ = _copy(tmp_path, "aws.yaml", "{CPU: 192, GPU: 8, learner: 8}", "{CPU: 24, GPU: 4, learner: 4}")
    text = path.read_text().replace("max_workers: 1 ", "max_workers: 2 ").replace("max_workers: 5", "max_workers: 6")
    path.write_text(text)
    assert capacity(path).cpus == 80
    with pytest.raises(
        ConfigError,
        match="= 64 CPUs at once, but the nodes of .* offering 'learner' offers at most 48",
    ) as e:
        check_config_fits(load_config(GPU_CONFIG), path)
    assert e.value.field == "sft.learner.num_workers"


def test_missing_custom_resource_names_the_resource_key(tmp_path):
    path, line = _copy(tmp_path, "gcp.yaml", "judge: 1}", "grader: 1}")
    cfg = load_config(GPU_CONFIG)
    with pytest.raises(ConfigError, match="offers custom resource 'judge'") as e:
        check_config_fits(cfg, path)
    assert e.value.field == "judge.resource"
    assert e.value.file == str(GPU_CONFIG)
    lines = GPU_CONFIG.read_text().splitlines()
    assert lines[e.value.line - 1].strip() == "resource: judge"
