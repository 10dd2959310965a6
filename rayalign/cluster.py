"""Starting or joining Ray.

The resource plan each stage asks of Ray is checked on config load, in
:mod:`rayalign.resource_plan`.
"""

from __future__ import annotations

import os

from rayalign.config_tree import ClusterConfig

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def init_ray(cluster: ClusterConfig, *, runtime_env: dict | None = None):
    """Start a private local Ray (``address: local``) or join an existing one.

    ``address: local`` never attaches to a ``ray start`` cluster that happens
    to run on the machine.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray
    if cluster.address == "local":
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(
            address="local",
            num_cpus=cluster.num_cpus,
            num_gpus=cluster.num_gpus,
            resources=dict(cluster.resources) or None,
            object_store_memory=cluster.object_store_mib << 20,
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=True,
        )
    else:
        ray.init(address=cluster.address, runtime_env=runtime_env)
    return ray
