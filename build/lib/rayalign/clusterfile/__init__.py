"""Cluster files, checked offline: Ray cluster-launcher YAMLs and KubeRay manifests.

``ray up`` has no dry run and a KubeRay manifest is only checked once applied,
so rayalign checks both on this machine, computes the most a cluster file can
ever offer (:func:`capacity`), and refuses a config whose stages could not be
placed on it (:func:`check_config_fits`): a Ray request that can never be
placed waits forever without an error. Nothing here contacts a cloud.
"""

from rayalign.clusterfile.fit import capacity, check_config_fits, validate_cluster_file
from rayalign.clusterfile.kuberay import validate_kuberay
from rayalign.clusterfile.launcher import validate_launcher_yaml
from rayalign.clusterfile.nodes import Capacity, NodeGroup

__all__ = [
    "Capacity",
    "NodeGroup",
    "capacity",
    "check_config_fits",
    "validate_cluster_file",
    "validate_kuberay",
    "validate_launcher_yaml",
]
