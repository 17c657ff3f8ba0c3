"""Simulations: config -> backend -> handles. `launch`, `connect`, and the `Simulation` users hold.

Owns the user-facing `Simulation` (a context manager over a `Backend` whose
workers are the same handles `sy.VirtualWorker` returns: one handle per worker
name), its status table, fault injection (kill, restart), `launch(config)`,
`connect(name)`, and the *default simulation* `sy.VirtualWorker(hook,
id="bob")` reaches: the latest launched or connected one, else the one
`simsyft run` names in $SIMSYFT_RUN_DIR, else an implicit one started on first
use. Knows backends only through backends/base.py's interface. Imports
backends, config, handles and errors; nothing below imports it.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import os
import threading
import time
from typing import Any, Iterator

from . import backends, handles, network
from .backends.template import discard_prewarmed
from .config import REQUEST_TIMEOUT_S, SimulationConfig, WorkerConfig, load_config
from .errors import SimsyftError, WorkerCrashedError, WorkerShutdownError, WorkerTimeoutError, unknown_worker
from .handles import VirtualWorker
from .rundir import RUN_DIR_ENV, find_run_dir, write_json
from .ledger import Measurement, Traffic
from .wire import messages

__all__ = ["Simulation", "connect", "default_simulation", "launch", "measure", "shutdown", "traffic"]

# Where a client leaves its ledger when it detaches (`simsyft run` sums them): <run_dir>/clients/<pid>.json
_CLIENTS_DIR = "clients"

# status() asks each running worker for its numbers, but a worker busy with a long op answers
# only when it is done: past this, the row says so instead of holding up the whole table.
_STATUS_TIMEOUT_S = 2.0


class Simulation:
    """A running simulation.

    >>> with simsyft.launch("configs/default.toml") as sim:
    ...     bob = sim["bob"]                         # same handle as sy.VirtualWorker(hook, id="bob")
    ...     (torch.ones(3).send(bob) * 2).get()
    tensor([2., 2., 2.])
    """

    def __init__(self, backend: backends.Backend, config: SimulationConfig | None = None) -> None:
        self.backend = backend
        self.config = config
        self._handles: dict[str, VirtualWorker] = {}
        self._lock = threading.RLock()
        self._retired = Traffic()  # traffic of links to workers since stopped or restarted
        self._wall_origin = time.perf_counter()

    # -- facts --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def namespace(self) -> str:
        """Names the simulation's shared-memory segments."""
        return self.backend.namespace

    @property
    def owner(self) -> bool:
        """Whether this process owns the simulation (False: attached with `connect`)."""
        return self.backend.owner

    @property
    def closed(self) -> bool:
        return self.backend.closed

    @property
    def run_dir(self) -> str | None:
        """Where a local simulation keeps its endpoints and logs (None for other backends)."""
        return getattr(self.backend, "run_dir", None)

    # -- handles ------------------------------------------------------------------------------
    def handle(self, name: str, hook: Any = None, start: bool = False,
               message_pending_time: float | None = None) -> VirtualWorker:
        """The one handle on worker `name`.

        With `start` (what `VirtualWorker(...)` does), a worker that is not running, or has
        crashed, is started afresh. Without it (`sim["bob"]`), the existing handle is returned
        even if its worker died, so its calls report the crash. `message_pending_time`
        (PySyft 0.2's): seconds each message to the worker really waits before it is handled.
        """
        with self._lock:
            running = name in self.backend.names()
            if message_pending_time is not None:
                _check_pending(name, message_pending_time)
            if start and (not running or not self.backend.alive(name)):
                if running:
                    self._retire(name)
                    self.backend.stop(name)  # crashed: a new process for the same handle
                self.backend.start(WorkerConfig(name, message_pending_time=float(message_pending_time or 0.0)))
            elif running and message_pending_time is not None:
                have = self.backend.config(name).message_pending_time
                if have != message_pending_time:
                    raise ValueError(f"worker {name!r} is already running with message_pending_time={have:g}, "
                                     f"not {message_pending_time:g}; shut it down first (.shutdown()) to "
                                     "start it again with another")
            elif not running:
                raise unknown_worker(self.name, name, self.backend.names())
            handle = self._handles.get(name)
            if handle is None:
                handle = self._handles[name] = VirtualWorker._over(self, name, hook)
            elif hook is not None and handle.hook is None:
                handle.hook = hook
            return handle

    @property
    def workers(self) -> dict[str, VirtualWorker]:
        """Handles by name, in config order."""
        return {name: self.handle(name) for name in self.backend.names()}

    def __getitem__(self, name: str) -> VirtualWorker:
        return self.handle(name)

    def group(self, name: str) -> list[VirtualWorker]:
        """The handles of group `name` (``[workers.<name>] count = N``), in index order.

        >>> clients = sim.group("client")                # [client_0, client_1, ...]
        """
        members = [w for w in self.backend.names() if self.backend.config(w).group == name]
        if not members:
            groups = sorted({g for w in self.backend.names() if (g := self.backend.config(w).group)})
            raise KeyError(f"simulation {self.name!r} has no group {name!r} (groups: {', '.join(groups) or 'none'})")
        members.sort(key=lambda w: int(w[len(name) + 1:]))  # restarts move a worker to the end of names()
        return [self.handle(w) for w in members]

    def __contains__(self, name: str) -> bool:
        return name in self.backend.names()

    def __iter__(self):
        return iter(self.backend.names())

    # -- status and fault injection ---------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """Per worker: state, pid, device, cpus, rss, uss, objects, bytes, messages in/out, uptime (and its group)."""
        report: dict[str, dict[str, Any]] = {}
        for name in self.backend.names():
            facts = self.backend.facts(name)
            stopped = facts.pop("stopped", False)
            row: dict[str, Any] = {"name": name, "device": "?", **facts, "state": "running"}
            group = self.backend.config(name).group
            if group is not None:
                row["group"] = group  # `simsyft status` folds a group into one line
            code = self.backend.exit_status(name)
            if code is not None:
                row["state"] = f"exited ({code})"
            elif stopped:  # SIGSTOP, or Ctrl-Z: it cannot answer
                row["state"] = "stopped (send SIGCONT to resume)"
            else:
                try:
                    info = self.backend.link(name).request(lambda seq: messages.Info(seq),
                                                           timeout_s=_STATUS_TIMEOUT_S, quiet=True).value
                    row.update({k: info[k] for k in ("device", "objects", "bytes", "messages_in",
                                                     "messages_out", "uptime", "threads")})
                except WorkerTimeoutError:
                    row["state"] = f"busy or hung (no answer in {_STATUS_TIMEOUT_S:g} s)"
                except SimsyftError as exc:
                    row["state"] = f"unreachable ({type(exc).__name__})"
            report[name] = row
        return report

    def kill(self, name: str) -> None:
        """Kill worker `name` as a crash would (fault injection): its pointers then raise WorkerCrashedError."""
        self[name]
        self.backend.kill(name)

    def restart(self, name: str, wait: bool = True) -> VirtualWorker:
        """Start worker `name` again, empty, with the same config; the handle keeps working."""
        handle = self[name]
        self._retire(name)
        self.backend.restart(name)
        if wait:
            self.backend.wait_ready([name])
        return handle

    def stop(self, name: str) -> None:
        """Stop one worker (its handle then raises WorkerShutdownError)."""
        if name in self.backend.names():
            self._retire(name)
            self.backend.stop(name)

    def shutdown(self) -> None:
        """Stop the simulation (an attached one only detaches, leaving its ledger for the owner)."""
        release_default(self)
        if not self.owner and not self.closed:
            self._leave_ledger()
        self.backend.shutdown()
        network.uninstall(self.namespace)

    # -- traffic and time ------------------------------------------------------------------
    def traffic(self, clients: bool = False, timeout_s: float | None = None) -> Traffic:
        """The traffic on every directed link since the simulation started (or this process attached).

        Links of "me" are this process's own; worker-to-worker links are what each worker counted
        on its own links, asked here (a round trip per worker, left out of the ledger). With
        `clients`, the client links of processes that attached and have detached since (a script
        under `simsyft run`) are added to "me"'s. A worker that does not answer within `timeout_s`
        (default: the simulation's request timeout) raises WorkerTimeoutError.

        >>> sim.traffic().links[("me", "bob")].bytes
        4412
        """
        ledger = Traffic()
        with self._lock:
            ledger = ledger.merge([self._retired])
            for name in self.backend.names():
                _count_link(ledger, self.backend.link(name))
                for peer, (sent, received) in self._report(name, timeout_s).items():
                    ledger.add(name, peer, *sent)
                    ledger.add(peer, name, *received)
        if clients and self.run_dir:
            ledger = ledger.merge(Traffic.from_dict(c["traffic"]) for c in self.detached_clients())
        return ledger

    @contextlib.contextmanager
    def measure(self) -> Iterator[Measurement]:
        """Measure a block: its traffic, simulated time and wall time.

        >>> with sim.measure() as m:
        ...     (torch.ones(1000).send(bob) * 2).get()
        >>> m.traffic.links[("me", "bob")].bytes, m.simulated_s, m.wall_s
        """
        report = Measurement()
        before = self.traffic()
        clock0, wall0 = self.clock_s(), time.perf_counter()
        try:
            yield report
        finally:
            report.wall_s = time.perf_counter() - wall0
            report.simulated_s = self.clock_s() - clock0
            report.traffic = self.traffic() - before

    def clock_s(self) -> float:
        """This client's simulated clock, in seconds since the simulation started (with
        `[network] mode = "off"`, the wall time since then: the links are the machine's)."""
        net = network.lookup(self.namespace)
        return time.perf_counter() - self._wall_origin if net is None else net.now()

    @property
    def network_mode(self) -> str:
        """`[network] mode`: "off", "account" or "enforce"."""
        net = network.lookup(self.namespace)
        return "off" if net is None else net.config.mode

    def detached_clients(self) -> list[dict]:
        """What each process that attached and detached left: {"pid", "traffic", "clock_s"}."""
        found = []
        for path in sorted(glob.glob(os.path.join(self.run_dir or "", _CLIENTS_DIR, "*.json"))):
            try:
                with open(path) as f:
                    found.append(json.load(f))
            except (OSError, ValueError):
                continue  # being written (write_json replaces atomically), or not ours to read
        return found

    def _report(self, name: str, timeout_s: float | None = None) -> dict:
        """Worker `name`'s own account of its links to its peers ({} once it is gone)."""
        if self.backend.exit_status(name) is not None:
            return {}
        try:
            info = self.backend.link(name).request(lambda seq: messages.Info(seq), quiet=True,
                                                   timeout_s=timeout_s).value
        except (WorkerCrashedError, WorkerShutdownError):
            return {}  # gone since: its own links went with it
        return info.get("links", {})

    def _retire(self, name: str) -> None:
        """Keep the traffic of worker `name`'s links before its link is replaced (stop, restart)."""
        if name not in self.backend.names():
            return
        try:
            report = self._report(name, _STATUS_TIMEOUT_S)
        except SimsyftError:
            report = {}  # hung: its own links' counts are lost, the client's are kept below
        _count_link(self._retired, self.backend.link(name))
        for peer, (sent, received) in report.items():
            self._retired.add(name, peer, *sent)
            self._retired.add(peer, name, *received)

    def _leave_ledger(self) -> None:
        """An attached process detaching: leave its client links' traffic and clock in the run dir."""
        mine = Traffic()
        for name in self.backend.names():
            _count_link(mine, self.backend.link(name))
        mine = mine.merge([Traffic({k: v for k, v in self._retired.links.items() if "me" in k})])
        folder = os.path.join(self.run_dir or "", _CLIENTS_DIR)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            write_json(os.path.join(folder, f"{os.getpid()}.json"),
                       {"pid": os.getpid(), "traffic": mine.to_dict(), "clock_s": self.clock_s()})
        except OSError:
            pass  # the owner is gone and took the run dir with it: nobody is left to read it

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        role = "" if self.owner else " (attached)"
        return f"<Simulation {self.name!r}{role} workers: {', '.join(self.backend.names())}>"


def _check_pending(name: str, seconds: Any) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
        raise ValueError(f"message_pending_time for worker {name!r} must be from 0 to 3600 seconds, got {seconds!r}")


def _count_link(ledger: Traffic, link: Any) -> None:
    """Add a client link's two directions (me -> worker, worker -> me) to `ledger`."""
    sent, received = link.sent, link.received
    ledger.add(link.source, link.name, sent.messages, sent.bytes, sent.shm_bytes)
    ledger.add(link.name, link.source, received.messages, received.bytes, received.shm_bytes)


def launch(config: str | os.PathLike | SimulationConfig, wait: bool = True) -> Simulation:
    """Start every worker of a config file; returns when all answer (or raises).

    The simulation becomes the default one, so `sy.VirtualWorker(hook, id="bob")`
    reaches its bob.
    """
    cfg = config if isinstance(config, SimulationConfig) else load_config(config)
    backend = backends.create(cfg.backend, cfg.name, cfg.request_timeout_s, cfg.start, cfg)
    net = None
    try:
        if cfg.network.mode != "off":  # before any link is made: every link stamps what it sends
            origin = time.monotonic()
            network.write(backend.run_dir, cfg.network, origin)
            net = network.install(backend.namespace, network.Network(cfg.network, "me", origin=origin))
        backend.start_many(cfg.workers)  # forked from one template in one request, or spawned side by side
        if wait:
            backend.wait_ready()
    except BaseException:
        backend.shutdown()
        network.uninstall(backend.namespace)
        raise
    if net is not None:
        net.restart_clock()  # simulated time starts once the workers are up
    sim = Simulation(backend, cfg)
    adopt_default(sim)
    return sim


def connect(name: str | None = None, timeout: float = 0.0) -> Simulation:
    """Attach this process to a running simulation (started by `simsyft up` or `launch`).

    Waits up to `timeout` seconds for it to appear. Shutting the returned
    Simulation down only detaches; the owner keeps it running.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            run_dir = find_run_dir(name)
            break
        except SimsyftError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)
    sim = attach(run_dir)
    adopt_default(sim)
    return sim


def attach(run_dir: str) -> Simulation:
    """The simulation in local run directory `run_dir`, attached (not made the default)."""
    from .backends.local import LocalBackend
    from .rundir import read_meta, verify_run_dir

    run_dir = verify_run_dir(run_dir)
    meta = read_meta(run_dir)
    if meta.get("backend") == "ray":  # its actors, found by name on the owner's Ray cluster
        from .backends.ray import RayBackend

        return Simulation(RayBackend.attach(run_dir, meta))
    found = network.read(run_dir)
    if found is not None and found[0].mode != "off":
        network.install(read_meta(run_dir)["namespace"], network.Network(found[0], "me", origin=found[1]))
    return Simulation(LocalBackend.attach(run_dir))


# -- the default simulation ---------------------------------------------------------------------
# A stack: launch()/connect() push theirs, and shutting one down uncovers the one below (the
# implicit simulation, usually).
_lock = threading.RLock()
_stack: list[Simulation] = []


def default_simulation() -> Simulation:
    """The simulation `sy.VirtualWorker` uses: the latest launched or connected one, else the
    one named by $SIMSYFT_RUN_DIR, else an implicit one started on first use."""
    with _lock:
        while _stack and _stack[-1].closed:
            _stack.pop()
        if not _stack:
            run_dir = os.environ.get(RUN_DIR_ENV)
            sim = attach(run_dir) if run_dir else Simulation(backends.create("local", "implicit", REQUEST_TIMEOUT_S))
            atexit.register(_close_at_exit, sim)
            _stack.append(sim)
        return _stack[-1]


def adopt_default(sim: Simulation) -> None:
    """Make `sim` the default simulation until it shuts down."""
    with _lock:
        _stack.append(sim)
        atexit.register(_close_at_exit, sim)


def release_default(sim: Simulation) -> None:
    """`sim` is no longer the default simulation (it may keep running)."""
    with _lock:
        if sim in _stack:
            _stack.remove(sim)


def _close_at_exit(sim: Simulation) -> None:
    """At interpreter exit: an attached process frees what its still-live pointers own (the
    workers outlive it), then detaches; an owner just stops its workers."""
    if not sim.owner and not sim.closed:
        handles.release_pointers(sim)
    sim.shutdown()


def traffic() -> Traffic:
    """The default simulation's traffic per directed link (`Simulation.traffic`).

    >>> x = torch.ones(1000).send(bob)
    >>> sy.traffic().links[("me", "bob")].bytes
    4348
    """
    return default_simulation().traffic()


def measure() -> Any:
    """`Simulation.measure` on the default simulation: a context manager yielding a Measurement.

    >>> with sy.measure() as m:
    ...     x_ptr = torch.ones(1000).send(bob)
    >>> m.traffic.links[("me", "bob")].bytes, m.simulated_s, m.wall_s
    """
    return default_simulation().measure()


def shutdown() -> None:
    """Stop every simulation this process started (detach from attached ones): no process,
    no segment remains."""
    with _lock:
        sims = list(reversed(_stack))
        _stack.clear()
    for sim in sims:
        # As at exit: an attached process frees what its pointers own and leaves its ledger (the
        # tutorial under `simsyft run` / `simsyft demo` ends with sy.shutdown(): its traffic counts).
        _close_at_exit(sim)
    discard_prewarmed()  # a template `import simsyft` started, if no simulation took it


handles.default_simulation = default_simulation  # Note [The default simulation] in handles.py
