"""What the SMPC property modules share: how many examples to run, and their parties.

`worlds(...)` backs each module's `worlds` fixture: {"inprocess": (parties, provider),
"process": (parties, provider)}, parties named NAMES, the crypto provider "james".
"""

from __future__ import annotations

import torch
from hypothesis import settings

import simsyft as sy
from simsyft.testing import in_process_worker

THOROUGH = settings.default.max_examples >= 1000
NAMES = ("bob", "alice", "charlie", "dave", "erin")


def examples(ci: int, thorough: int) -> int:
    return thorough if THOROUGH else ci


def worlds(inprocess_prefix: str, process_prefix: str, process_parties: int = len(NAMES)):
    """A generator for a module fixture: 5 in-process parties and `process_parties` worker processes,
    each world with its provider; every worker shut down after."""
    hook = sy.TorchHook(torch)
    # Names of their own: in_process_worker(name) restarts a worker of the shared in-process
    # simulation, and the session's WorkerPool (bob, alice, carol, dave) must keep its workers.
    inproc = [in_process_worker(f"{inprocess_prefix}{name}") for name in NAMES + ("james",)]
    procs = [sy.VirtualWorker(hook, id=f"{process_prefix}{name}") for name in NAMES[:process_parties] + ("james",)]
    try:
        yield {"inprocess": (inproc[:-1], inproc[-1]), "process": (procs[:-1], procs[-1])}
    finally:
        for worker in inproc + procs:
            worker.shutdown()
