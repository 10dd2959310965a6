"""Config loading: each class of error names file, line and key; nothing starts Ray."""

import dataclasses
import typing

import pytest

from rayalign.config import Config, explain, field_docs, load_config, parse_override
from rayalign.errors import ConfigError
from rayalign.resource_plan import check_resource_plan, stage_demands


def _write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_configs_validate(repo):
    quick = load_config(repo / "configs/quickstart.yaml")
    assert quick.model.policy == "builtin:smollm2-135m-instruct"
    assert quick.cluster.num_cpus == 2 and quick.rollout.backend == "vllm"
    gpu = load_config(repo / "configs/gpu-8x-h100.yaml")
    assert gpu.cluster.num_gpus == 8 and gpu.rollout.gpus_per_worker == 1


def test_overrides_are_typed(repo):
    cfg = load_config(repo / "configs/quickstart.yaml", ["--rl.lr=2e-6", "--rollout.n=8", "--data.prompts=[a.jsonl]"])
    assert cfg.rl.lr == 2e-6 and cfg.rollout.n == 8
    assert cfg.data.prompts == ("a.jsonl",)
    assert parse_override("--tracking.run_dir=/tmp/x") == ("tracking.run_dir", "/tmp/x")


def test_learner_threads_default_to_the_models():
    cfg = load_config(None, ["--model.threads=1", "--sft.learner.threads=2"])
    assert (cfg.sft.learner.threads, cfg.rl.learner.threads, cfg.model.threads) == (2, 0, 1)


def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = _write(tmp_path, "rl:\n  steps: 3\n  lrr: 1.0e-6\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:3: rl.lrr: unknown key; did you mean 'lr'?")


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:1: rollouts: unknown key; did you mean 'rollout'"):
        load_config(_write(tmp_path, "rollouts:\n  n: 2\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:2: rollout.n: must be int; got 'four'"):
        load_config(_write(tmp_path, "rollout:\n  n: four\n"))
    with pytest.raises(ConfigError, match=r"rollout.backend: must be one of vllm, transformers; got 'tgi'"):
        load_config(_write(tmp_path, "rollout:\n  backend: tgi\n"))
    with pytest.raises(ConfigError, match=r"rl.lr: must be float; got True"):
        load_config(_write(tmp_path, "rl:\n  lr: true\n"))


def test_out_of_range(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:3: rollout.top_p: must be <= 1.0; got 1.5"):
        load_config(_write(tmp_path, "rollout:\n  n: 2\n  top_p: 1.5\n"))
    with pytest.raises(ConfigError, match=r"command line: sft.learner.zero_stage: must be <= 3; got 4"):
        load_config(None, ["--sft.learner.zero_stage=4"])


def test_mapping_keys_and_values_are_checked(tmp_path):
    cfg = load_config(None, ["--data.behavior_weights={comply: 2, refuse: 1}"])
    assert cfg.data.behavior_weights == {"comply": 2, "refuse": 1}
    with pytest.raises(ConfigError, match=r"c.yaml:2: data.behavior_weights: must be one of comply, refuse, "):
        load_config(_write(tmp_path, "data:\n  behavior_weights: {benign: 2}\n"))
    with pytest.raises(ConfigError, match=r"data.behavior_weights: must be >= 0; got -1"):
        load_config(None, ["--data.behavior_weights={comply: -1}"])


def test_a_key_moved_into_a_subsection_is_pointed_at(tmp_path):
    path = _write(tmp_path, "sft:\n  lr: 1.0e-5\n  zero_stage: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:3: sft.zero_stage: unknown key; did you mean 'sft.learner.zero_stage'?")


def test_each_stage_keeps_its_learner_defaults_when_one_key_is_set():
    cfg = load_config(None, ["--rl.learner.zero_stage=3", "--sft.learner.strategy=ddp"])
    assert (cfg.rl.learner.zero_stage, cfg.rl.learner.num_workers, cfg.rl.learner.cpus_per_worker) == (3, 1, 0.5)
    assert cfg.rl.learner.checkpoint_every == 5
    assert (cfg.sft.learner.strategy, cfg.sft.learner.num_workers, cfg.sft.learner.checkpoint_every) == ("ddp", 2, 50)
    assert "  rl.learner.cpus_per_worker: float = 0.5  # Ray CPUs per worker." in explain()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:2: spec.path: no such file or directory: nowhere"):
        load_config(_write(tmp_path, "spec:\n  path: nowhere\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_duplicate_key_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:3: n: duplicate key"):
        load_config(_write(tmp_path, "rollout:\n  n: 2\n  n: 3\n"))
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(_write(tmp_path, "rollout: [\n"))


def test_impossible_resource_request_names_keys(tmp_path):
    path = _write(tmp_path, "rollout:\n  num_workers: 2\n  cpus_per_worker: 1\ncluster:\n  num_cpus: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}:2: rollout.num_workers: stage generate runs")
    assert "rollout.num_workers x rollout.cpus_per_worker" in message
    assert "judge.replicas x judge.cpus_per_replica" in message and "2.5 CPUs" in message


def test_actor_larger_than_cluster(tmp_path):
    with pytest.raises(ConfigError, match=r"judge.gpus_per_replica: one actor asks 1 GPUs but cluster.num_gpus is 0"):
        load_config(_write(tmp_path, "judge:\n  gpus_per_replica: 1\n"))


def test_custom_resource_must_exist(tmp_path):
    text = "rollout:\n  resource: rollout\ncluster:\n  resources: {judge: 1}\n"
    with pytest.raises(ConfigError, match=r"c.yaml:2: rollout.resource: .*custom resource 'rollout'"):
        load_config(_write(tmp_path, text))


def test_learner_layouts_that_cannot_run_name_file_line_and_key(tmp_path):
    text = "rl:\n  prompts_per_step: 3\n  group_size: 4\n  learner:\n    num_workers: 2\n  micro_batch_size: 4\n"
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    assert str(e.value).startswith(
        f"{tmp_path / 'c.yaml'}:6: rl.micro_batch_size: rl.prompts_per_step x rl.group_size = 12"
    )
    assert "split evenly over rl.learner.num_workers (2) x rl.micro_batch_size (4)" in str(e.value)  # 12 % 8
    load_config(
        None,
        [
            "--rl.prompts_per_step=4",
            "--rl.group_size=4",
            "--rl.learner.num_workers=2",
            "--rl.micro_batch_size=4",
            "--rl.learner.cpus_per_worker=0.25",
        ],
    )
    with pytest.raises(ConfigError, match="sft.lora_rank: LoRA with ZeRO-3 is not supported"):
        load_config(None, ["--sft.lora_rank=8", "--sft.learner.strategy=deepspeed", "--sft.learner.zero_stage=3"])
    with pytest.raises(ConfigError, match="sft.loss_chunk: sft.loss_chunk needs the whole LM head .* ZeRO-3"):
        load_config(None, ["--sft.loss_chunk=512", "--sft.learner.strategy=deepspeed", "--sft.learner.zero_stage=3"])
    assert load_config(None, ["--sft.loss_chunk=512", "--sft.learner.zero_stage=2"]).sft.loss_chunk == 512
    with pytest.raises(ConfigError, match="rl.logprob_chunk: rl.logprob_chunk needs the whole LM head .* ZeRO-3"):
        load_config(None, ["--rl.logprob_chunk=512", "--rl.learner.strategy=deepspeed", "--rl.learner.zero_stage=3"])
    assert load_config(None, ["--rl.logprob_chunk=512", "--rl.learner.zero_stage=2"]).rl.logprob_chunk == 512
    with pytest.raises(ConfigError, match="rl.sync: LoRA RL syncs the adapters only, by collective broadcast"):
        load_config(None, ["--rl.lora_rank=8", "--rl.sync=object_store"])
    assert load_config(None, ["--rl.lora_rank=8"]).rl.sync == "collective"
    with pytest.raises(ConfigError, match="rl.learner.gpus_per_worker: one GPU per learner at most"):
        load_config(None, ["--rl.learner.gpus_per_worker=2", "--cluster.num_gpus=8"])


def test_learner_resources_name_the_learner_keys(tmp_path):
    path = _write(tmp_path, "sft:\n  learner:\n    num_workers: 3\n    cpus_per_worker: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:3: sft.learner.num_workers: stage sft runs")
    assert "sft.learner 3 x 1 (sft.learner.num_workers x sft.learner.cpus_per_worker) = 3 CPUs" in str(e.value)
    with pytest.raises(ConfigError, match=r"rl.learner.gpus_per_worker: one actor asks 1 GPUs but cluster.num_gpus"):
        load_config(None, ["--rl.learner.gpus_per_worker=1"])


def test_tensor_parallel_needs_gpus():
    with pytest.raises(ConfigError, match="rollout.tensor_parallel_size: tensor parallelism needs GPUs"):
        load_config(None, ["--rollout.tensor_parallel_size=2"])


def test_a_local_judge_takes_one_batch_at_a_time():
    with pytest.raises(ConfigError, match="judge.concurrent_batches: a local judge engine takes one batch at a time"):
        load_config(None, ["--judge.concurrent_batches=2"])
    assert load_config(None, ["--judge.backend=function", "--judge.concurrent_batches=4"]).judge.concurrent_batches == 4


def test_defaults_fit_two_cpus():
    check_resource_plan(Config())
    demands = stage_demands(Config())
    assert set(demands) == {"generate", "sft", "rl", "eval"}


def test_every_field_is_documented():
    def walk(cls):
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])

    walk(Config)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().rl.lr = 1.0  # type: ignore[misc]
