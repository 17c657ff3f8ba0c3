"""The Ray backend: every worker a named Ray actor, on one machine or a Ray cluster.

Owns `RayBackend`: connecting to Ray (`[simulation] address = "auto"` or
"host:port", or a local Ray of our own bound to 127.0.0.1), one Ray namespace per
simulation, placement (`cpus`/`threads` -> num_cpus, `cuda:N` -> num_gpus, `node` ->
a custom resource or a node id), the check that the cluster can hold what a config
asks before anything waits on it, and kill/restart/shutdown (ray.kill, a new actor).
The actors run the same WorkerCore as a worker process (ray_actor.py); their links
are RayLinks (ray_link.py). Ray is optional: `pip install -e ".[ray]"`.
Imports config, errors, rundir (namespaces), wire.segments and the two modules above.
See docs/cluster.md.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from typing import Any

from .. import rundir
from ..config import REQUEST_TIMEOUT_S, SimulationConfig, WorkerConfig
from ..errors import ConfigError, SimsyftError, WorkerCrashedError, WorkerTimeoutError, unknown_worker
from ..wire import segments
from .base import Backend
from .template import PACKAGE_PARENT
from .ray_actor import RayWorker, actor_namespace
from .ray_link import RayLink, describe_death

__all__ = ["RayBackend", "demand", "forget_cluster", "import_ray"]

_NODE_ID = re.compile(r"[0-9a-f]{56}")
# A custom resource pins a worker to the node(s) that have it; this much of it lets any
# number of workers share one node.
_NODE_SHARE = 0.001
# How long a restarted worker's name may stay taken by the actor ray.kill is removing, and
# how long its resources may stay held after that.
_NAME_FREE_S = 10.0
_RELEASE_S = 3.0
_ACTOR_CLASS: Any = None


def _actor_class(ray: Any) -> Any:
    """RayWorker as a Ray actor class, made once (each ray.remote would ship the class again)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = ray.remote(RayWorker)
    return _ACTOR_CLASS


def import_ray(loopback: bool = False) -> Any:
    """Ray, or a ConfigError that says how to install it.

    Note [A local Ray stays on the loopback]: asked for 127.0.0.1, Ray still advertises (and
    listens on) the machine's address unless its "clusters" are off, as on macOS; Ray reads that
    switch when it is first imported, so `loopback` sets it before (a Ray imported earlier by the
    user keeps its own setting). The Ray we start inherits it.
    """
    if loopback:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ConfigError('[simulation] backend = "ray" needs Ray, which is not installed: '
                          'pip install -e ".[ray]"  (or: pip install ray)') from None
    return ray


def demand(config: WorkerConfig) -> dict[str, float]:
    """The resources worker `config` asks of Ray: CPUs, GPUs, and its node's custom resource."""
    wanted: dict[str, float] = {"CPU": float(len(config.cpus) if config.cpus else config.threads)}
    if config.device.startswith("cuda"):
        wanted["GPU"] = 1.0
    if config.node is not None and not _NODE_ID.fullmatch(config.node):
        wanted[config.node] = _NODE_SHARE
    return wanted


class RayBackend(Backend):
    """The workers of one simulation as Ray actors in the namespace `simsyft-<namespace>`.

    >>> backend = RayBackend("demo")                 # starts a local Ray on 127.0.0.1
    >>> backend.start(WorkerConfig("bob")); backend.wait_ready()
    >>> backend.shutdown()                           # removes every actor (and our local Ray)
    """

    kind = "ray"

    def __init__(self, name: str = "ray", request_timeout_s: float = REQUEST_TIMEOUT_S,
                 address: str | None = None) -> None:
        ray = import_ray(loopback=address is None)
        super().__init__(name, request_timeout_s)
        self._ray = ray
        self.namespace = rundir.new_namespace()  # names the segments used between parties on one node
        self.ray_namespace = actor_namespace(self.namespace)
        self.address = address
        self.started_ray = False
        if not ray.is_initialized():
            # The actors import simsyft: a Ray we start inherits our environment, so make it findable.
            path = os.environ.get("PYTHONPATH", "")
            if PACKAGE_PARENT not in path.split(os.pathsep):
                os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_PARENT, path) if p)
            options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
            if address is None:  # Note [A local Ray stays on the loopback]
                ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
            self.started_ray = True
        self._setup()
        # Note [Attaching to a Ray simulation]: a run directory, as the local backend's, so that
        # `simsyft run` / `simsyft.connect` find it; it names the cluster and the namespace, and
        # the owner's sweep of leftovers removes it if we die.
        rundir.sweep_stale()
        self.run_dir = os.path.join(rundir.run_root(), self.namespace)
        os.mkdir(self.run_dir, 0o700)
        self.workers_file = os.path.join(self.run_dir, "ray_workers.json")
        rundir.write_json(os.path.join(self.run_dir, "simulation.json"), {
            "name": name, "owner_pid": os.getpid(), "owner_started": rundir.process_started(os.getpid()),
            "namespace": self.namespace, "token": secrets.token_hex(16), "ready": False,
            "request_timeout_s": request_timeout_s, "backend": self.kind,
            "ray_address": ray.get_runtime_context().gcs_address,
        })

    def _setup(self) -> None:
        self.node_id = self._ray.get_runtime_context().get_node_id()
        self.actors: dict[str, Any] = {}
        self._configs: dict[str, WorkerConfig] = {}
        self._links: dict[str, RayLink] = {}
        self._nodes: dict[str, str] = {}  # worker -> node id, once it answered
        self._exits: dict[str, int] = {}

    @classmethod
    def attach(cls, run_dir: str, meta: dict) -> "RayBackend":
        """The Ray simulation another process owns (`simsyft run`, `connect`): its actors, reached by us.
        Shutting it down only detaches."""
        ray = import_ray()
        self = object.__new__(cls)
        Backend.__init__(self, meta["name"], float(meta.get("request_timeout_s", REQUEST_TIMEOUT_S)))
        self.owner = False
        self._ray = ray
        self.namespace = meta["namespace"]
        self.ray_namespace = actor_namespace(self.namespace)
        self.address = meta["ray_address"]
        self.run_dir = run_dir
        self.started_ray = not ray.is_initialized()
        if self.started_ray:  # connects to the owner's cluster (it stays up when we leave)
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        self._setup()
        try:
            with open(os.path.join(run_dir, "ray_workers.json")) as f:
                configs = [WorkerConfig.from_dict(spec) for spec in json.load(f)]
        except (OSError, ValueError):
            configs = []
        for config in configs:
            try:
                actor = ray.get_actor(config.name, namespace=self.ray_namespace)
            except ValueError:
                continue  # stopped since
            self.actors[config.name] = actor
            self._configs[config.name] = config
            node = ray.get(actor.node.remote())
            self._nodes[config.name] = node
            self._links[config.name] = RayLink(config.name, actor, self.namespace, self.request_timeout_s,
                                               remote_node=node != self.node_id,
                                               where=f"Ray actor on node {_node_label(ray, node)}")
        return self

    @classmethod
    def from_config(cls, config: SimulationConfig) -> "RayBackend":
        return cls(config.name, config.request_timeout_s, config.address)

    # -- Backend ------------------------------------------------------------------------------
    def start(self, config: WorkerConfig) -> None:
        """Create worker `config.name`'s actor; returns at once (wait_ready waits for it)."""
        ray = self._ray
        if self.closed:
            raise SimsyftError(f"simulation {self.name!r} is shut down")
        if config.name in self.actors and self.exit_status(config.name) is None:
            raise SimsyftError(f"worker {config.name!r} is already running (a Ray actor)")
        if config.memory_limit is not None:
            raise ConfigError(f"worker {config.name!r}: memory_limit is not available on the ray backend (Ray's "
                              "memory monitor kills a worker over its node's threshold instead); leave it out")
        self._wait_name_free(config.name)
        options = self._placement(config)
        spec = {"config": config.to_dict(), "namespace": self.namespace, "owner_pid": os.getpid(),
                "owner_node": self.node_id, "request_timeout_s": self.request_timeout_s}
        actor = _actor_class(ray).options(name=config.name, namespace=self.ray_namespace, max_restarts=0,
                                    max_concurrency=1, **options).remote(spec)
        self.actors[config.name] = actor
        self._configs[config.name] = config
        self._exits.pop(config.name, None)
        self._nodes.pop(config.name, None)
        self._links[config.name] = RayLink(config.name, actor, self.namespace, self.request_timeout_s,
                                           where="Ray actor")
        self._write_workers()

    def _write_workers(self) -> None:
        if self.owner and os.path.isdir(self.run_dir):
            rundir.write_json(self.workers_file, [c.to_dict() for c in self._configs.values()])  # type: ignore[arg-type]

    def wait_ready(self, names: list[str] | None = None, timeout: float = 120.0) -> None:
        """Block until each actor runs (placed and started); a failed start is WorkerCrashedError."""
        ray = self._ray
        names = names or self.names()
        waiting = {name: self.actors[name].node.remote() for name in names if name not in self._nodes}
        deadline = time.monotonic() + timeout
        for name, ref in waiting.items():
            try:
                node = ray.get(ref, timeout=max(deadline - time.monotonic(), 0.001))
            except ray.exceptions.GetTimeoutError:
                raise WorkerTimeoutError(
                    f"worker {name!r} was not placed and started within {timeout:.0f}s; it asks for "
                    f"{_format(self._asks(self._configs[name]))}. Free now: {_format(ray.available_resources())}"
                ) from None
            except ray.exceptions.RayActorError as exc:
                link = self._links[name]
                link.died(describe_death(exc))
                self._exits[name] = -1
                raise WorkerCrashedError(link.dead) from None
            self._nodes[name] = node
            link = self._links[name]
            link.remote_node = node != self.node_id
            link.where = f"Ray actor on node {_node_label(ray, node)}"
        self.ready()

    def stop(self, name: str, timeout: float = 5.0) -> None:
        actor = self.actors.pop(name, None)
        link = self._links.pop(name, None)
        self._configs.pop(name, None)
        self._exits.pop(name, None)
        self._nodes.pop(name, None)
        if link is not None:
            link.close("shut down")
        if actor is not None and self.owner:
            self._ray.kill(actor, no_restart=True)
        self._write_workers()

    def kill(self, name: str) -> None:
        """ray.kill the worker's actor, as a crash would: its link reports Ray's cause."""
        self._ray.kill(self.actors[name], no_restart=True)
        self._exits[name] = -9

    def restart(self, name: str) -> None:
        config = self.config(name)
        self.stop(name)
        self.start(config)

    def names(self) -> list[str]:
        return list(self.actors)

    def config(self, name: str) -> WorkerConfig:
        try:
            return self._configs[name]
        except KeyError:
            raise unknown_worker(self.name, name, self.actors) from None

    def exit_status(self, name: str) -> int | None:
        if name in self._exits:
            return self._exits[name]
        link = self._links.get(name)
        return -1 if link is not None and link.dead is not None else None

    def link(self, name: str) -> RayLink:
        return self._links[name]

    def facts(self, name: str) -> dict[str, Any]:
        node = self._nodes.get(name)
        return {"pid": None, "device": self.config(name).device,
                "node": _node_label(self._ray, node) if node else "(not placed yet)"}

    def ready(self) -> None:
        if self.owner:
            meta = rundir.read_meta(self.run_dir)
            rundir.write_json(os.path.join(self.run_dir, "simulation.json"), {**meta, "ready": True})

    def shutdown(self) -> None:
        """Owned: remove every actor of the simulation, its segments on this node, its run
        directory, and a Ray we started. Attached: close our links (and our connection to Ray)."""
        if self.closed:
            return
        self.closed = True
        for name in list(self.actors):
            self.stop(name)
        if self.owner:
            segments.sweep(self.namespace)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:
            segments.close(self.namespace)
        if self.started_ray:
            self._ray.shutdown()

    # -- placement ----------------------------------------------------------------------------
    def _asks(self, config: WorkerConfig) -> dict[str, float]:
        return demand(config)

    def _placement(self, config: WorkerConfig) -> dict[str, Any]:
        """Ray options placing `config`'s actor, after checking the cluster can hold it now:
        a request Ray cannot meet would otherwise wait for ever (Ray queues it)."""
        ray = self._ray
        wanted = demand(config)
        options: dict[str, Any] = {"num_cpus": wanted["CPU"], "num_gpus": wanted.get("GPU", 0.0)}
        custom = {k: v for k, v in wanted.items() if k not in ("CPU", "GPU")}
        if custom:
            options["resources"] = custom
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if config.node is not None and _NODE_ID.fullmatch(config.node):
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            if config.node not in {n["NodeID"] for n in nodes}:
                raise ConfigError(f"worker {config.name!r}: node {config.node!r} is not a live node of the Ray "
                                  f"cluster (nodes: {'; '.join(_describe_node(n) for n in nodes) or 'none'})")
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(config.node, soft=False)
        if not [n for n in nodes if _could_hold(n["NodeID"], n.get("Resources", {}), config, wanted)]:
            raise ConfigError(f"worker {config.name!r} asks for {_format(wanted)}, which no node of the Ray "
                              f"cluster has: {'; '.join(_describe_node(n) for n in nodes) or 'no live node'}")
        deadline = time.monotonic() + _RELEASE_S
        while True:
            free = self._free_per_node()
            if _first_fit(free, config, wanted) is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # an actor just killed (restart) gives its resources back a little later
        if _first_fit(free, config, wanted) is None:
            now = "; ".join(f"node {node[:8]}: {_format({k: max(v, 0.0) for k, v in res.items()})}"
                            for node, res in free.items())
            raise ConfigError(f"worker {config.name!r} asks for {_format(wanted)}, but no node of the Ray cluster "
                              f"has that free now (free: {now}); the simulation's other workers, or other jobs, "
                              "hold the rest")
        return options

    def _free_per_node(self) -> dict[str, dict[str, float]]:
        """Each node's free resources, less what our workers started but not placed yet will take
        (Ray counts them only once placed): those are assigned first-fit, as Ray would place them."""
        try:
            from ray._private.state import available_resources_per_node

            free = {node: dict(res) for node, res in available_resources_per_node().items()}
        except (ImportError, AttributeError):  # Ray moved it: judge the cluster as one node
            free = {"cluster": dict(self._ray.available_resources())}
        for name, other in self._configs.items():
            if name not in self._nodes and self.exit_status(name) is None:
                node = _first_fit(free, other, demand(other))
                if node is not None:
                    for key, value in demand(other).items():
                        free[node][key] = free[node].get(key, 0.0) - value
        return free

    def _wait_name_free(self, name: str) -> None:
        """A killed actor keeps its name until Ray has removed it: wait for that (restart)."""
        deadline = time.monotonic() + _NAME_FREE_S
        while True:
            try:
                self._ray.get_actor(name, namespace=self.ray_namespace)
            except ValueError:
                return
            if time.monotonic() > deadline:
                raise SimsyftError(f"worker {name!r}: Ray still has an actor of that name after {_NAME_FREE_S:g}s")
            time.sleep(0.05)


def _could_hold(node_id: str, resources: dict, config: WorkerConfig, wanted: dict[str, float]) -> bool:
    if config.node is not None and _NODE_ID.fullmatch(config.node) and node_id not in (config.node, "cluster"):
        return False
    return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in wanted.items())


def _first_fit(free: dict[str, dict[str, float]], config: WorkerConfig, wanted: dict[str, float]) -> str | None:
    return next((node for node, res in free.items() if _could_hold(node, res, config, wanted)), None)


def _format(resources: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if not k.startswith("node:")
                     and not k.endswith("memory")) or "nothing"


def _describe_node(node: dict) -> str:
    return f"node {node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')}): {_format(node.get('Resources', {}))}"


def _node_label(ray: Any, node_id: str) -> str:
    for node in ray.nodes():
        if node["NodeID"] == node_id:
            return f"{node_id[:8]} ({node.get('NodeManagerAddress', '?')})"
    return node_id[:8]


def forget_cluster(address: str) -> None:
    """Forget a stopped Ray head at `address` (for tools that start and stop their own cluster).

    A head node stopped by a signal leaves its address in Ray's "current cluster" file, and a
    later plain ray.init() would try to join it instead of starting a Ray of its own.
    """
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "ray", "ray_current_cluster")
    try:
        with open(path) as f:
            if f.read().strip() == address:
                os.unlink(path)
    except OSError:
        pass
