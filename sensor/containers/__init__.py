"""Container resolution: which container (if any) a process runs in, from its cgroup and namespaces."""

from .info import ContainerInfo, ContainerMetadata, split_image
from .layouts import CONTAINER_LAYOUTS, HOST_LAYOUTS, CgroupMatch, match_cgroup_path
from .metadata import MetadataReader, StateRoots
from .namespaces import differing, host_namespaces, read_namespaces
from .resolver import ContainerResolver, launcher_runtime

__all__ = [
    "CONTAINER_LAYOUTS", "HOST_LAYOUTS", "CgroupMatch", "ContainerInfo", "ContainerMetadata",
    "ContainerResolver",
    "MetadataReader", "StateRoots", "differing", "host_namespaces", "launcher_runtime", "match_cgroup_path",
    "read_namespaces", "split_image",
]
