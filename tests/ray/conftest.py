"""A real local Ray with 2 CPUs, shared by the tests of one module."""

import pytest

from rayalign.cluster import init_ray
from rayalign.config import ClusterConfig


@pytest.fixture(scope="module")
def ray_cluster():
    ray = init_ray(ClusterConfig(address="local", num_cpus=2, object_store_mib=512))
    yield ray
    ray.shutdown()
