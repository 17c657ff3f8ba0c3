"""Another local user, and planted files, never get into a simulation (issue 10).

The attacker is a second Unix user: a child forked from this test process that drops to
`nobody` (or a user made for the test) before it touches anything. The victim is a fresh
Python process whose TMPDIR is a shared sticky directory the test made, as /tmp is. Needs
root to switch users (CI runs as root); skipped with the reason otherwise.

The same-user cases (a stale run dir naming live processes, a reused owner pid) need no
second user and always run.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from simsyft import rundir
from simsyft.rundir import sweep_stale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def other_user() -> tuple[int, int]:
    """(uid, gid) of a second user this process may become; skips where there is none."""
    if os.getuid() != 0:
        pytest.skip("acting as a second local user needs root (CI runs as root)")
    for name in ("nobody", "simsyft-other"):
        try:
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
        except KeyError:
            continue
    made = subprocess.run(["useradd", "--system", "--no-create-home", "simsyft-other"], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"no second user on this machine and useradd failed: {made.stderr.decode().strip()}")
    entry = pwd.getpwnam("simsyft-other")
    return entry.pw_uid, entry.pw_gid


def as_other_user(action, *args) -> None:
    """Run `action(*args)` in a child that became the other user; raises if it failed."""
    uid, gid = other_user()
    pid = os.fork()
    if pid == 0:  # the child: drop privileges, act, and leave without running any cleanup
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action(*args)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            os.write(2, f"attacker failed: {exc!r}\n".encode())
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the attacker's own steps failed"


@pytest.fixture
def shared_tmp():
    """A sticky, world-writable directory like /tmp (in it, so the other user can reach it),
    used as the victim's TMPDIR."""
    path = tempfile.mkdtemp(prefix="simsyft-test-shared-", dir="/tmp" if os.path.isdir("/tmp") else None)
    os.chmod(path, 0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listen(path: str) -> socket.socket:
    """A Unix socket at `path` that records whether anyone connected (the attacker's fake worker)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(8)
    sock.setblocking(False)
    return sock


def plant_simulation(run_dir: str, name: str) -> None:
    """What the attacker writes: a live-looking simulation (pid 1 never dies) with a worker socket."""
    os.mkdir(run_dir, 0o755)
    with open(os.path.join(run_dir, "simulation.json"), "w") as f:
        json.dump({"name": name, "owner_pid": 1, "namespace": os.path.basename(run_dir).removeprefix("simsyft-"),
                   "token": "planted", "ready": True}, f)
    with open(os.path.join(run_dir, "pids.json"), "w") as f:
        json.dump({"bob": 1}, f)


VICTIM = textwrap.dedent("""
    import json, sys, torch
    import simsyft as sy
    sy.TorchHook(torch)
    out = {}
    try:
        sim = sy.connect(sys.argv[1])
        bob = sim["bob"]
        torch.tensor([4.0, 2.0]).send(bob)  # the secret
        out["attached"] = True
    except sy.SimsyftError as exc:
        out["error"] = str(exc)
    if sys.argv[2] == "launch":
        try:
            with sy.launch(sys.argv[3]) as sim:
                out["launched"] = (torch.ones(2).send(sim["bob"]) * 2).get().tolist()
        except sy.SimsyftError as exc:
            out["launch_error"] = str(exc)
    print(json.dumps(out))
""")


def run_victim(tmpdir: str, name: str, config: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SIMSYFT_RUN_DIR", rundir.ROOT_ENV)}
    env.update(TMPDIR=tmpdir, PYTHONPATH=ROOT)
    args = [sys.executable, "-c", VICTIM, name, "launch" if config else "no", config or ""]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=90)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def config(tmp_path) -> str:
    path = tmp_path / "victim.toml"
    path.write_text('[simulation]\nname = "victim"\n\n[workers.bob]\n')
    return str(path)


def test_a_simulation_planted_in_the_temp_dir_is_never_attached(shared_tmp, tmp_path):
    planted = os.path.join(shared_tmp, "simsyft-1-cafef00d")

    def attacker() -> None:
        plant_simulation(planted, "hospitals")

    as_other_user(attacker)
    # The fake worker socket, owned by the other user, listening for the victim's tensors.
    sock_path = os.path.join(planted, "bob.sock")
    listener = listen(sock_path)
    os.chown(sock_path, *other_user())
    try:
        out = run_victim(shared_tmp, "hospitals", config(tmp_path))
        assert "attached" not in out
        assert "no running simulation called 'hospitals'" in out["error"]
        assert out["launched"] == [2.0, 2.0]  # the victim's own simulation is unaffected
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected to the fake worker
    finally:
        listener.close()


@pytest.mark.parametrize("how", ["directory", "symlink"])
def test_a_run_root_made_by_another_user_is_refused(shared_tmp, tmp_path, how):
    root = os.path.join(shared_tmp, f"simsyft-{os.getuid()}")
    decoy = os.path.join(shared_tmp, "decoy")

    def attacker() -> None:
        os.mkdir(decoy, 0o777)
        if how == "symlink":
            os.symlink(decoy, root)
        else:
            os.mkdir(root, 0o777)
            os.chmod(root, 0o777)
        plant_simulation(os.path.join(decoy, f"1-cafef00d"), "hospitals")

    as_other_user(attacker)
    out = run_victim(shared_tmp, "hospitals", config(tmp_path))
    reason = "is a symbolic link" if how == "symlink" else "is owned by uid"
    for key in ("error", "launch_error"):
        assert f"refusing to use {root} as simsyft's run root: it {reason}" in out[key]
    assert "attached" not in out and "launched" not in out


def test_a_group_writable_run_root_is_refused(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o770)
    monkeypatch.setenv(rundir.ROOT_ENV, str(root))
    with pytest.raises(rundir.SimsyftError, match=r"it is writable by other users \(mode 0770\)"):
        rundir.run_root()


def _stale_run_dir(pids: dict[str, int], owner_started: float | None = None, owner_pid: int | None = None) -> str:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner = dead.pid if owner_pid is None else owner_pid
    namespace = f"{owner}-{os.urandom(4).hex()}"
    path = os.path.join(rundir.run_root(), namespace)
    os.mkdir(path, 0o700)
    rundir.write_json(os.path.join(path, "simulation.json"), {
        "name": f"stale-{namespace}", "owner_pid": owner, "owner_started": owner_started,
        "namespace": namespace, "token": os.urandom(16).hex(), "ready": True})
    rundir.write_json(os.path.join(path, "pids.json"), pids)
    return path


def test_sweep_never_kills_a_process_that_is_not_that_simulations_worker(process_bob):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A stale simulation whose pids.json names an unrelated process of ours and a live worker
        # of another simulation (the session's bob): neither carries the stale one's token.
        path = _stale_run_dir({"bob": process_bob.pid, "alice": bystander.pid})
        removed = sweep_stale()
        assert path in removed and not os.path.exists(path)
        assert bystander.poll() is None
        assert process_bob.info()["pid"] == process_bob.pid  # still answering
    finally:
        bystander.kill()
        bystander.wait()


def test_down_force_never_signals_a_reused_owner_pid():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # simulation.json says the owner is the bystander's pid, but started at another time:
        # the pid was reused, so the owner is gone and its process must not be signalled.
        path = _stale_run_dir({}, owner_started=12345.0, owner_pid=bystander.pid)
        name = rundir.read_meta(path)["name"]
        env = {k: v for k, v in os.environ.items() if k != "SIMSYFT_RUN_DIR"}
        env["PYTHONPATH"] = ROOT
        done = subprocess.run([sys.executable, "-m", "simsyft", "down", name, "--force"], capture_output=True,
                              text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"no running simulation called {name!r}" in done.stdout
        time.sleep(0.2)
        assert bystander.poll() is None
        assert not os.path.exists(path)  # swept as stale instead
    finally:
        bystander.kill()
        bystander.wait()


def test_attaching_through_the_environment_accepts_only_run_dirs_in_the_root(tmp_path):
    fake = tmp_path / "123-abc"
    fake.mkdir(mode=0o700)
    with pytest.raises(rundir.SimsyftError, match="is not a simsyft run directory"):
        rundir.verify_run_dir(str(fake))


def test_segments_another_user_plants_in_a_simulations_namespace_change_nothing(process_bob):
    import torch

    from simsyft.wire import messages, shm, tensors

    namespace = process_bob.connection.namespace  # visible to everyone in `ls /dev/shm`
    creators = (os.getpid(), process_bob.pid)
    # Every name the old scheme would pick next, and a well-formed one a forged handle will name.
    planted = [os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(namespace)}{pid}_{n}")
               for pid in creators for n in range(128)]
    forged = os.path.join(shm.SHM_DIR, f"{shm.segment_prefix(namespace)}{os.getpid()}_{'ab' * 8}")
    capacity = 1 << 20

    def attacker() -> None:
        for path in planted + [forged]:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.ftruncate(fd, shm.HEADER + capacity)
            os.close(fd)

    as_other_user(attacker)
    try:
        x = torch.randn(1 << 20)  # 4 MiB: through segments, both ways
        assert torch.equal((x.send(process_bob) * 2).get(), x * 2)
        # A handle naming the other user's file is refused before anything is mapped.
        descriptor = ("float32", (capacity // 4,), False, ("s", forged, capacity, 1), None)
        with pytest.raises(rundir.SimsyftError, match=r"owned by uid \d+, not by this user"):
            handed = tensors.Handover(descriptor[:3], descriptor[3], None, None)  # the descriptor as it is
            process_bob.connection.request(lambda seq: messages.Store(seq, 77, handed, (), None))
        assert 77 not in process_bob._objects
    finally:
        for path in planted + [forged]:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
