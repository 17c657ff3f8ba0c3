"""Simulation configs: a TOML file -> frozen dataclasses (docs/config.md).

- `model`: the dataclasses (`SimulationConfig`, `WorkerConfig`, `DataItem`, `NetworkConfig`), limits, names, sizes;
- `parse`: reading and checking a file, every error naming the file, the key and the reason.

`from simsyft.config import load_config, WorkerConfig, ...` reaches both.
"""

from .model import (ALL_GPUS, GROUP_MAX, MEMORY_LIMIT_MIN, NETWORK_MODES, REQUEST_TIMEOUT_S, THREADS_MAX, DataItem,
                    LinkConfig, NetworkConfig, SimulationConfig, WorkerConfig, check_worker_name, format_size,
                    parse_size)
from .parse import load_config, parse_config

__all__ = [
    "ALL_GPUS",
    "GROUP_MAX",
    "MEMORY_LIMIT_MIN",
    "NETWORK_MODES",
    "REQUEST_TIMEOUT_S",
    "THREADS_MAX",
    "DataItem",
    "LinkConfig",
    "NetworkConfig",
    "SimulationConfig",
    "WorkerConfig",
    "check_worker_name",
    "format_size",
    "load_config",
    "parse_config",
    "parse_size",
]
