"""The Ray backend's worker: a Ray actor in front of the same WorkerCore a worker process runs.

Owns `RayWorker` (wrapped with `ray.remote` by backends/ray.py, so this module needs no
Ray at import), what it applies at start (threads, CPU affinity, seed, device, data,
message_pending_time: as worker/main.py does for a process), its `call` (one batch of
messages, Note [One actor call per batch] in ray_link.py), the watch on its owner, and
`RayPeers`, its links to the other actors of its simulation. Imports config, worker, wire
and ray_link; never the user layer.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any

import torch

from ..config import WorkerConfig
from ..rundir import pid_alive
from ..wire import segments
from ..wire.tensors import OUT_OF_BAND
from ..worker.core import WorkerCore
from ..worker.peers import Peers
from .ray_link import RayLink, pack, unpack

__all__ = ["RayPeers", "RayWorker", "actor_namespace"]

_OWNER_POLL_S = 0.2


def actor_namespace(namespace: str) -> str:
    """The Ray namespace of a simulation's actors: one per simulation, so names never clash."""
    return f"simsyft-{namespace}"


class RayPeers(Peers):
    """An actor's links to the other actors of its simulation, found by name in its namespace."""

    def __init__(self, namespace: str, request_timeout_s: float, node_id: str) -> None:
        super().__init__(request_timeout_s)
        self.ray_namespace = actor_namespace(namespace)
        self.node_id = node_id

    def _connect(self, name: str) -> RayLink:
        import ray

        try:
            actor = ray.get_actor(name, namespace=self.ray_namespace)
        except ValueError:
            return super()._connect(name)  # "cannot reach": no such worker
        node = ray.get(actor.node.remote())
        return RayLink(name, actor, self.core.namespace, self.request_timeout_s, source=self.core.name,
                       remote_node=node != self.node_id, where=f"Ray actor on node {node[:8]}")


class RayWorker:
    """One simsyft worker as a Ray actor (the class backends/ray.py wraps with `ray.remote`)."""

    def __init__(self, spec: dict) -> None:
        import ray

        config = WorkerConfig.from_dict(spec["config"])
        self.node_id = ray.get_runtime_context().get_node_id()
        torch.set_num_threads(config.threads)
        if config.cpus:
            import psutil

            psutil.Process().cpu_affinity(list(config.cpus))
        if config.seed is not None:
            torch.manual_seed(config.seed)
        device = torch.device(config.device)
        if device.type == "cuda":
            # Ray gives the actor its GPU(s) as CUDA_VISIBLE_DEVICES: the one it asked for is cuda:0 here.
            device = torch.device("cuda:0")
            torch.cuda.set_device(device)
            if config.gpu_memory_fraction:
                torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
        self.pending = config.message_pending_time
        self.core = WorkerCore(config.name, spec["namespace"], str(device),
                               RayPeers(spec["namespace"], spec["request_timeout_s"], self.node_id))
        self.core.load_data(config.data)
        if spec["owner_node"] == self.node_id:
            owner = spec["owner_pid"]
            threading.Thread(target=self._watch_owner, args=(owner,), daemon=True).start()
            # Ray may remove us first when the owner dies (its actors share its fate): sweep on the way out.
            atexit.register(lambda: None if pid_alive(owner) else segments.sweep(self.core.namespace))

    def node(self) -> str:
        """The Ray node this actor runs on (and, answered, proof that it started)."""
        return self.node_id

    def call(self, payload: bytes) -> Any:
        """Handle a batch of messages in order -> the replies packed (ray_link.pack), with their
        object refs if any carry some. `payload`: b"r" (the caller is on another node: big tensors
        in replies go as Ray objects) or b"l", then the packed messages."""
        return self.call_with(payload, None)

    def call_with(self, payload: bytes, refs: list | None) -> Any:
        """`call`, with each message's object refs (None for a message without)."""
        import ray

        remote_node = payload[:1] == b"r"
        batch = unpack(payload[1:])
        replies, reply_refs = [], []
        for frames, refs in zip(batch, refs or [None] * len(batch)):
            if self.pending:
                time.sleep(self.pending)  # PySyft 0.2's message_pending_time, per message
            OUT_OF_BAND.into = ray.get(refs) if refs else None
            OUT_OF_BAND.out = objs = [] if remote_node else None
            try:
                reply = self.core.handle(frames)
            finally:
                OUT_OF_BAND.into = OUT_OF_BAND.out = None
            if reply is not None:
                replies.append([bytes(f) for f in reply])
                # Put now: a later message of this batch may change the tensor in place.
                reply_refs.append([ray.put(t.numpy()) for t in objs] if objs else None)
            if not self.core.running:
                break
        return (pack(replies), reply_refs) if any(reply_refs) else pack(replies)

    def _watch_owner(self, owner_pid: int) -> None:
        """Leave when the user's process dies (kill -9 included), as a local worker does, removing
        the segments of the simulation on this node. (Ray itself kills the actors of a driver
        that is gone; this also covers a driver that attached to a cluster and was killed.)"""
        while pid_alive(owner_pid):
            time.sleep(_OWNER_POLL_S)
        segments.sweep(self.core.namespace)
        os._exit(0)
