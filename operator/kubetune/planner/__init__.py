"""The planner: method, DeepSpeed layout and GPU node shape from memory arithmetic.

Pure functions only; `plan()` is the single entry point shared by the operator and
`kubetune plan`.
"""

from .architecture import Arch, ArchitectureError, as_arch, from_config, load_config
from .plan import DatasetSize, PlanRefused, auto_methods, plan
from .pools import (
    NodePool,
    PoolConfigError,
    default_pools,
    discover_pools,
    load_pools,
    merge_pools,
)

__all__ = [
    "Arch",
    "ArchitectureError",
    "DatasetSize",
    "NodePool",
    "PlanRefused",
    "PoolConfigError",
    "as_arch",
    "auto_methods",
    "default_pools",
    "discover_pools",
    "from_config",
    "load_config",
    "load_pools",
    "merge_pools",
    "plan",
]
