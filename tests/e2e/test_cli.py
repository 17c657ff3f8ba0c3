"""The `simsyft` command line, end to end: every verb as a real subprocess.

Each test writes its own small config into tmp_path with a unique simulation
name (`cli-<what>-<random>`), so tests never meet each other, a concurrent run
of this file, or a simulation a developer keeps running. The `cleanup` fixture
stops whatever a test started (`simsyft down NAME`, then SIGKILL of any pid it
recorded that is still a simsyft process) even when the test failed.
Assertions read only what the CLI prints, exit codes, psutil and the file system.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from simsyft.wire import shm
from simsyft.rundir import run_root

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.toml")
COLUMNS = ("worker", "state", "pid", "device", "cpus", "rss", "objects", "held", "msgs in/out", "uptime")
# A subprocess environment that never inherits an enclosing `simsyft run`.
ENV = {k: v for k, v in os.environ.items() if k != "SIMSYFT_RUN_DIR"}
ENV["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


# -- helpers -------------------------------------------------------------------------

def simsyft(*args: str, timeout: float = 60, console_script: bool = False, cwd: str | None = None):
    """Run one CLI verb; returns the CompletedProcess (text stdout/stderr)."""
    if console_script:
        exe = shutil.which("simsyft")
        if exe is None:
            pytest.skip("the `simsyft` console script is not installed (pip install -e .)")
        command = [exe, *args]
    else:
        command = [sys.executable, "-m", "simsyft", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd or ROOT)


def write_config(tmp_path, what: str, workers: str = "[workers.bob]\nthreads = 2\n") -> tuple[str, str]:
    """A config named cli-<what>-<random> in tmp_path; returns (path, simulation name)."""
    name = f"cli-{what}-{secrets.token_hex(3)}"
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[simulation]\nname = "{name}"\n\n{workers}')
    return str(path), name


def write_script(tmp_path, text: str, name: str = "script.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def parse_table(text: str, name: str) -> dict[str, dict[str, str]]:
    """The rows of the status table printed for simulation `name`, by worker, as {column: cell}."""
    lines = text.splitlines()
    start = lines.index(f"simulation {name!r}")
    header = lines[start + 1]
    offsets, at = [], 0
    for column in COLUMNS:
        at = header.index(column, at)
        offsets.append(at)
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith((" ", "simulation ")):
            break
        cells = [line[a:b].strip() for a, b in zip(offsets, offsets[1:] + [None])]
        rows[cells[0]] = dict(zip(COLUMNS, cells))
    return rows


def run_dir_of(text: str) -> str:
    match = re.search(r"run dir ([^,)\s]+)", text)
    assert match, f"no run dir in output:\n{text}"
    return match.group(1)


def owner_pid_of(text: str) -> int:
    match = re.search(r"owner pid (\d+)", text)
    assert match, f"no owner pid in output:\n{text}"
    return int(match.group(1))


def segments_of(run_dir: str) -> list[str]:
    """Shared-memory segments in the namespace of the simulation with this run dir."""
    namespace = os.path.basename(run_dir).removeprefix("simsyft-")
    return sorted(glob.glob(os.path.join(shm.SHM_DIR, f"simsyft_{namespace}_*")))


def plant_segment(run_dir: str) -> str:
    """A segment as a message never decoded would leave it: only a sweep of the namespace removes it."""
    namespace = os.path.basename(run_dir).removeprefix("simsyft-")
    path = os.path.join(shm.SHM_DIR, f"simsyft_{namespace}_{os.getpid()}_424242")
    with open(path, "wb") as f:
        f.write(b"\0" * 64)
    return path


def is_simsyft_process(pid: int) -> bool:
    """Alive (not a zombie) and running simsyft code: a recycled pid never counts."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any("simsyft" in part for part in proc.cmdline())
    except psutil.Error:
        return False


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until none of `pids` is a live simsyft process; returns those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if is_simsyft_process(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


class Cleanup:
    """What a test started; stopped and removed at teardown, whatever the outcome."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.pids: list[int] = []
        self.paths: list[str] = []

    def run(self) -> None:
        from simsyft.rundir import running_simulations

        running = {m.get("name") for _, m in running_simulations()}
        for name in self.names:
            if name in running:
                try:
                    simsyft("down", name, timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        for pid in self.pids:
            if is_simsyft_process(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for path in self.paths:
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)


@pytest.fixture
def cleanup():
    tracker = Cleanup()
    yield tracker
    tracker.run()


# -- check ---------------------------------------------------------------------------

def test_check_accepts_the_default_config():
    result = simsyft("check", "configs/default.toml", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "configs/default.toml: OK: simulation 'default', 2 worker(s): bob (cpu), alice (cpu)\n"
    assert result.stderr == ""


def _cpu_ranges(cpus: list[int]) -> str:
    cpus, ranges = sorted(cpus), []
    start = prev = cpus[0]
    for cpu in cpus[1:] + [None]:
        if cpu != prev + 1 if cpu is not None else True:
            ranges.append(str(start) if start == prev else f"{start}-{prev}")
            start = cpu
        prev = cpu
    return ",".join(ranges)


@pytest.mark.parametrize("case", ["unknown key", "missing data file", "unavailable cpu", "missing config",
                                  "tiny memory limit", "too many threads"])
def test_check_refuses_bad_configs_with_the_exact_error(tmp_path, case):
    config = tmp_path / "sim.toml"
    if case == "unknown key":
        config.write_text('[simulation]\nname = "cli-bad"\n\n[workers.bob]\ndevcie = "cpu"\n')
        reason = ("[workers.bob] devcie: unknown key "
                  "(expected one of: compute_factor, count, cpus, data, device, gpu_memory_fraction, memory_limit, "
                  "message_pending_time, node, offline, threads)")
    elif case == "missing data file":
        config.write_text('[simulation]\nname = "cli-bad"\n\n[workers.h.data]\n'
                          'x = { path = "data/x.pt", tags = ["#x"] }\n')
        reason = f"[workers.h.data.x] path: file not found: {tmp_path / 'data' / 'x.pt'}"
    elif case == "unavailable cpu":
        have = sorted(psutil.Process().cpu_affinity())
        config.write_text(f'[simulation]\nname = "cli-bad"\n\n[workers.bob]\ncpus = [{have[-1] + 1000}]\n')
        reason = f"[workers.bob] cpus: CPU {have[-1] + 1000} not available (have {_cpu_ranges(have)})"
    elif case == "tiny memory limit":
        config.write_text('[simulation]\nname = "cli-bad"\n\n[workers.bob]\nmemory_limit = "1B"\n')
        reason = ("[workers.bob] memory_limit: must be at least 256MiB, got '1B' "
                  "(a worker needs about 225 MiB to start: Python and torch)")
    elif case == "too many threads":
        config.write_text('[simulation]\nname = "cli-bad"\n\n[workers.bob]\nthreads = 100000\n')
        reason = ("[workers.bob] threads: must be at most 1024, got 100000 (torch starts that many threads "
                  "in the worker; more than the machine's CPUs only compete for them)")
    else:
        config = tmp_path / "nowhere.toml"
        reason = "cannot read config: No such file or directory"
    result = simsyft("check", str(config), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"simsyft: error: {config}: {reason}\n"


# -- up ------------------------------------------------------------------------------

def test_up_once_prints_the_table_and_leaves_nothing(tmp_path, cleanup):
    config, name = write_config(tmp_path, "once", "[workers.bob]\n\n[workers.alice]\n")
    cleanup.names.append(name)
    result = simsyft("up", config, "--once")
    assert result.returncode == 0, result.stderr
    table = parse_table(result.stdout, name)
    assert list(table) == ["bob", "alice"]
    pids = [int(row["pid"]) for row in table.values()]
    cleanup.pids += pids
    assert len(set(pids)) == 2
    assert all(row["state"] == "running" and row["device"] == "cpu" for row in table.values())
    assert result.stdout.rstrip().endswith(f"simulation {name!r} stopped")
    run_dir = run_dir_of(result.stdout)
    assert wait_gone(pids, timeout=0.0) == []  # up waited for its workers before exiting
    assert not os.path.exists(run_dir)
    assert segments_of(run_dir) == []


def test_up_stops_cleanly_on_ctrl_c(tmp_path, cleanup):
    config, name = write_config(tmp_path, "ctrlc")
    cleanup.names.append(name)
    # A shell's background job ignores SIGINT and children inherit that: give `up` the default.
    proc = subprocess.Popen([sys.executable, "-m", "simsyft", "up", config], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cleanup.pids.append(proc.pid)
    try:
        output, deadline = b"", time.monotonic() + 60
        while not re.search(rb"\nbob +running +\d+ ", output) and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                output += os.read(proc.stdout.fileno(), 65536)
        text = output.decode()
        table = parse_table(text, name)
        pid = int(table["bob"]["pid"])
        cleanup.pids.append(pid)
        assert is_simsyft_process(pid)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert (text + rest.decode()).rstrip().endswith(f"simulation {name!r} stopped")
    assert wait_gone([pid], timeout=0.0) == []
    assert not os.path.exists(run_dir_of(text))


def test_detach_status_connect_down(tmp_path, cleanup):
    config, name = write_config(tmp_path, "detach", "[workers.bob]\nthreads = 2\n\n[workers.alice]\n")
    cleanup.names.append(name)
    up = simsyft("up", config, "--detach")
    assert up.returncode == 0, up.stderr
    owner = owner_pid_of(up.stdout)
    cleanup.pids.append(owner)
    log = re.search(r"log ([^)\s]+)\)", up.stdout).group(1)
    cleanup.paths.append(log)
    run_dir = run_dir_of(up.stdout)
    assert f"stop it with `simsyft down {name}`" in up.stdout
    assert is_simsyft_process(owner)  # `up --detach` returned; its background owner lives on

    status = simsyft("status", name)
    assert status.returncode == 0, status.stderr
    table = parse_table(status.stdout, name)
    assert list(table) == ["bob", "alice"]
    assert all(row["state"] == "running" for row in table.values())
    pids = {w: int(row["pid"]) for w, row in table.items()}
    cleanup.pids += pids.values()
    assert all(is_simsyft_process(pid) for pid in pids.values())
    assert f"owner pid {owner}, run dir {run_dir}" in status.stdout

    # Another process attaches by name; its handles reach the simulation's workers.
    client = write_script(tmp_path, f"""
        import json
        import torch
        import simsyft as sy

        hook = sy.TorchHook(torch)
        sim = sy.connect({name!r})
        bob = sy.VirtualWorker(hook, id="bob")

        def compute():
            x = torch.arange(1 << 19, dtype=torch.float32)  # 2 MiB: crosses through shared memory
            x_ptr = x.send(bob)
            y = (x_ptr * 2 + 1).get()
            return bool(torch.equal(y, x * 2 + 1)), bob.object_count()

        ok, held = compute()  # the pointers die here; their frees are flushed when we detach at exit
        print(json.dumps({{"pid": bob.pid, "same": sim["bob"] is bob, "threads": bob.info()["threads"],
                          "ok": ok, "held": held}}))
    """)
    result = subprocess.run([sys.executable, client], capture_output=True, text=True, timeout=60, env=ENV,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {"pid": pids["bob"], "same": True, "threads": 2, "ok": True, "held": 1}

    after = parse_table(simsyft("status", name).stdout, name)
    assert after["bob"]["objects"] == "0"  # the client's frees reached bob before it exited
    assert after["bob"]["pid"] == str(pids["bob"])

    planted = plant_segment(run_dir)
    cleanup.paths.append(planted)
    down = simsyft("down", name)
    assert down.returncode == 0, down.stderr
    assert f"stopped simulation {name!r} (owner pid {owner})" in down.stdout
    gone = simsyft("status", name)
    assert gone.returncode == 1
    assert gone.stdout == f"no running simulation called {name!r}\n"
    assert wait_gone([owner, *pids.values()], timeout=5.0) == []
    assert not os.path.exists(run_dir)
    assert segments_of(run_dir) == []
    assert not os.path.exists(log)  # the background owner stopped cleanly: its log is not kept


def test_kill_9_of_the_detached_owner(tmp_path, cleanup):
    config, name = write_config(tmp_path, "kill9")
    cleanup.names.append(name)
    up = simsyft("up", config, "--detach")
    assert up.returncode == 0, up.stderr
    owner = owner_pid_of(up.stdout)
    cleanup.pids.append(owner)
    cleanup.paths += [re.search(r"log ([^)\s]+)\)", up.stdout).group(1), run_dir_of(up.stdout)]
    status = simsyft("status", name)
    assert owner_pid_of(status.stdout) == owner
    bob = int(parse_table(status.stdout, name)["bob"]["pid"])
    cleanup.pids.append(bob)
    run_dir = run_dir_of(status.stdout)
    planted = plant_segment(run_dir)
    cleanup.paths.append(planted)

    os.kill(owner, signal.SIGKILL)
    started = time.monotonic()
    assert wait_gone([bob], timeout=5.0) == [], "the worker did not notice its owner died"
    assert time.monotonic() - started < 5.0

    down = simsyft("down", name)
    assert down.returncode == 0, down.stderr
    assert not os.path.exists(run_dir)
    assert segments_of(run_dir) == []
    assert simsyft("status", name).returncode == 1


# -- run -----------------------------------------------------------------------------

RUN_SCRIPT = """
    import json
    import os
    import sys

    import psutil
    import torch
    import simsyft as sy

    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")  # attaches through $SIMSYFT_RUN_DIR, starts nothing
    value = (torch.tensor([1.0, 2.0]).send(bob) + 1).get()
    run_dir = os.environ["SIMSYFT_RUN_DIR"]
    namespace = os.path.basename(run_dir).removeprefix("simsyft-")
    segment = os.path.join({shm!r}, f"simsyft_{{namespace}}_{{os.getpid()}}_424242")
    open(segment, "wb").close()  # left for the owner's shutdown to sweep
    print(json.dumps({{
        "pid": bob.pid,
        "connect_pid": sy.connect({name!r})["bob"].pid,
        "threads": bob.info()["threads"],
        "worker_parent_is_run": psutil.Process(bob.pid).ppid() == os.getppid(),
        "value": value.tolist(),
        "run_dir": run_dir,
        "segment": segment,
    }}))
    sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("code, console_script", [(0, False), (3, True)], ids=["exit0-module", "exit3-script"])
def test_run_attaches_the_script_and_returns_its_exit_code(tmp_path, cleanup, code, console_script):
    config, name = write_config(tmp_path, "run")
    cleanup.names.append(name)
    script = write_script(tmp_path, RUN_SCRIPT.format(name=name, shm=shm.SHM_DIR))
    result = simsyft("run", config, "--", sys.executable, script, str(code), console_script=console_script)
    assert result.returncode == code, result.stderr
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    cleanup.pids.append(facts["pid"])
    cleanup.paths.append(facts["segment"])
    assert facts["pid"] == facts["connect_pid"]
    assert facts["threads"] == 2  # the configured bob, not an implicit one-thread worker
    assert facts["worker_parent_is_run"]
    assert facts["value"] == [2.0, 3.0]
    assert wait_gone([facts["pid"]], timeout=0.0) == []  # run stopped its workers before returning
    assert not os.path.exists(facts["run_dir"])
    assert not os.path.exists(facts["segment"])


def test_run_without_a_command_is_refused(tmp_path):
    config, _ = write_config(tmp_path, "nocmd")
    result = simsyft("run", config, timeout=30)
    assert result.returncode == 2
    assert result.stderr == "simsyft: error: simsyft run CONFIG -- COMMAND...: no command given\n"


# `x.T` on a 3-d tensor makes torch warn on the worker's stderr, i.e. in <run dir>/bob.log.
VERBOSE_SCRIPT = """
    import torch
    import simsyft as sy

    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")
    print("shape", tuple(torch.ones(2, 3, 4).send(bob).T.shape))
"""


def _assert_tagged_worker_log(result) -> None:
    assert result.returncode == 0, result.stderr
    assert "shape (4, 3, 2)" in result.stdout
    tagged = [line for line in result.stderr.splitlines() if line.startswith("[bob] ")]
    assert any("UserWarning" in line and "x.T" in line for line in tagged), result.stderr


def test_run_verbose_streams_worker_logs_tagged(tmp_path, cleanup):
    config, name = write_config(tmp_path, "verbose")
    cleanup.names.append(name)
    script = write_script(tmp_path, VERBOSE_SCRIPT)
    _assert_tagged_worker_log(simsyft("run", "--verbose", config, "--", sys.executable, script))


def test_run_verbose_after_the_config(tmp_path, cleanup):
    config, name = write_config(tmp_path, "verbose2")
    cleanup.names.append(name)
    script = write_script(tmp_path, VERBOSE_SCRIPT)
    _assert_tagged_worker_log(simsyft("run", config, "--verbose", "--", sys.executable, script))


# -- demo, version, sweep ------------------------------------------------------------

def test_demo_runs_the_part1_tutorial(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "simsyft", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=str(tmp_path))
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Out[35]: tensor([1., 1., 1., 1., 1.])" in out
    pointers = re.findall(r"^Out\[\d+\]: \(Wrapper\)>\[PointerTensor \| me:\d+ -> bob:\d+\]$", out, re.M)
    assert len(pointers) >= 5
    # The demo's own simulation (run dir and segments named after its pid) is gone.
    assert glob.glob(os.path.join(run_root(), f"{proc.pid}-*")) == []
    assert glob.glob(os.path.join(shm.SHM_DIR, f"simsyft_{proc.pid}-*")) == []


def test_bench_passes_its_options_to_the_suite():
    result = simsyft("bench", "--list", timeout=60)  # --list only names the rows: no benchmark runs
    assert "unrecognized arguments" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def test_version_prints_versions():
    import torch
    import zmq

    from simsyft import __version__

    result = simsyft("version", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"simsyft {__version__} (torch {torch.__version__}, pyzmq {zmq.__version__}, "
                             f"python {sys.version.split()[0]})\n")


def test_sweep_exits_0_and_reports_a_count():
    result = simsyft("sweep", timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\d+ leftover\(s\) removed$", result.stdout, re.M)


SHUTDOWN_SCRIPT = """
    import torch
    import simsyft as sy

    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")
    print((torch.ones(3).send(bob) + 1).get().tolist())
    sy.shutdown()  # as the tutorials end: detaching still leaves this client's traffic for run
"""


def test_run_counts_a_script_that_ends_with_shutdown(tmp_path, cleanup):
    config, name = write_config(tmp_path, "shutdown")
    cleanup.names.append(name)
    result = simsyft("run", config, "--", sys.executable, write_script(tmp_path, SHUTDOWN_SCRIPT))
    assert result.returncode == 0, result.stderr
    assert "[2.0, 2.0, 2.0]" in result.stdout
    sent = re.search(r"me -> bob +(\d+) ", result.stderr)
    assert sent and int(sent.group(1)) >= 2, result.stderr  # the send and the op at least
