"""What a local worker process is started with: its config and where it runs (`WorkerLaunch`).

The local backend writes it as JSON on the worker's command line and worker/main.py reads
it back into the same types: the worker reads fields, never `dict.get`. Imports config only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..config import REQUEST_TIMEOUT_S, WorkerConfig

__all__ = ["WorkerLaunch"]


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    """One worker process: its `WorkerConfig` plus the simulation's facts it needs.

    >>> launch = WorkerLaunch(WorkerConfig("bob"), "42-ab", "/tmp/simsyft-0/42-ab", "ipc://...", 42, True)
    >>> WorkerLaunch.from_json(launch.to_json()) == launch
    True
    """

    config: WorkerConfig
    namespace: str  # names the simulation's shared-memory segments
    run_dir: str  # endpoints of its peers, its log, pids.json
    endpoint: str  # where it binds its ROUTER socket
    parent_pid: int  # it exits (and cleans up, if it owns the run dir) once this process is gone
    owns_run_dir: bool  # started by the simulation's owner (not by an attached client)
    request_timeout_s: float = REQUEST_TIMEOUT_S  # for its own links to peers

    def to_json(self) -> str:
        fields = asdict(self)
        fields["config"] = self.config.to_dict()
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text: str) -> "WorkerLaunch":
        fields = json.loads(text)
        fields["config"] = WorkerConfig.from_dict(fields["config"])
        return cls(**fields)
