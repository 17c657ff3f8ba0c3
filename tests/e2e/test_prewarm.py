"""The template `import simsyft` starts (Note [Prewarmed template], backends/template.py), and
workers asked for in one batch. Each case is a fresh Python process, as a user's script is:
the prewarm happens at import, once per process. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from simsyft.rundir import pid_alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
                                reason="prewarmed templates: Linux, 2 CPUs or more")


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if k not in ("SIMSYFT_RUN_DIR", "SIMSYFT_START", "SIMSYFT_PREWARM", "SIMSYFT_SIM_TOKEN")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    out.update(extra)
    return out


def run(script: str, *args: str, timeout: float = 180, **extra: str) -> dict:
    """Run `script` in a fresh interpreter; the JSON it prints last."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env(**extra), cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


PREAMBLE = """
    import json, os, sys
    import simsyft as sy
    from simsyft.backends import template as tpl
    prewarmed = tpl._prewarmed[0].pid if tpl._prewarmed else None
    import torch
    hook = sy.TorchHook(torch)
"""  # indented as the bodies added to it, which run() dedents together


def test_the_first_simulation_takes_the_template_import_started():
    facts = run(PREAMBLE + """
    from simsyft.config import parse_config
    from simsyft.rundir import is_worker_of
    sim = sy.launch(parse_config({"simulation": {"name": "prewarm-taken"},
                                  "workers": {"client": {"count": 3}}}))
    backend = sim.backend
    clients = sim.group("client")
    x = torch.arange(6.0).send(clients[2])
    out = {"prewarmed": prewarmed, "template": backend.template.pid, "starts": backend.template.starts,
           "value": (x * 2).get().tolist(), "ours": all(is_worker_of(c.pid, backend.token) for c in clients),
           "log": os.path.exists(os.path.join(sim.run_dir, ".template.log")),
           "left": tpl._prewarmed is not None}
    sim.shutdown()
    print(json.dumps(out))
    """)
    assert facts["prewarmed"] is not None
    assert facts["template"] == facts["prewarmed"] and facts["starts"] == 1
    assert facts["value"] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert facts["ours"]  # the workers carry the token the template was started with
    assert facts["log"]  # told its run directory once taken
    assert not facts["left"]
    assert gone(facts["prewarmed"])


def test_a_variable_set_after_the_import_is_not_missed_by_the_workers():
    # The template started at import has the environment of that moment; a worker must see
    # what the user set since (it may matter at import time: CUDA_VISIBLE_DEVICES, OMP_*).
    facts = run(PREAMBLE + """
    os.environ["SIMSYFT_TEST_SET_LATER"] = "yes"
    bob = sy.VirtualWorker(hook, id="bob")
    with open(f"/proc/{bob.pid}/environ", "rb") as f:
        environ = f.read().split(b"\\0")
    print(json.dumps({"prewarmed": prewarmed, "template": bob.simulation.backend.template.pid,
                      "seen": b"SIMSYFT_TEST_SET_LATER=yes" in environ}))
    """)
    assert facts["prewarmed"] is not None and facts["template"] != facts["prewarmed"]
    assert facts["seen"]
    assert gone(facts["prewarmed"])


@pytest.mark.parametrize("how", ["spawn", "in-process"])
def test_a_simulation_that_does_not_fork_stops_it(how):
    start = ("sy.launch(parse_config({'simulation': {'name': 'prewarm-spawn', 'start': 'spawn'}, "
             "'workers': {'bob': {}}}))" if how == "spawn" else
             "sy.launch(parse_config({'simulation': {'name': 'prewarm-inproc', 'backend': 'inprocess'}, "
             "'workers': {'bob': {}}}))")
    facts = run(PREAMBLE + f"""
    from simsyft.config import parse_config
    sim = {start}
    out = {{"prewarmed": prewarmed, "left": tpl._prewarmed is not None}}
    sim.shutdown()
    print(json.dumps(out))
    """)
    assert facts["prewarmed"] is not None and not facts["left"]
    assert gone(facts["prewarmed"], timeout=10)


def test_prewarm_can_be_turned_off_and_is_off_where_nothing_would_take_it(tmp_path):
    script = "import json, simsyft; from simsyft.backends import template as t; print(json.dumps(t._prewarmed is not None))"
    assert run(script) is True
    assert run(script, SIMSYFT_PREWARM="0") is False
    assert run(script, SIMSYFT_START="spawn") is False
    assert run(script, SIMSYFT_RUN_DIR="/nonexistent") is False  # a script `simsyft run` attaches
    # `simsyft status` (and the other commands that start nothing) do not; `simsyft up` does.
    cli = "import sys; sys.argv = ['/usr/local/bin/simsyft', sys.argv[1]]; " + script
    assert run(cli, "status") is False
    assert run(cli, "up") is True
    # A multiprocessing child (spawn: it imports simsyft afresh): its parent has the simulation.
    child = tmp_path / "child.py"
    child.write_text(textwrap.dedent("""
        import json, multiprocessing as mp
        def child(q):
            from simsyft.backends import template as t
            q.put(t._prewarmed is not None)
        if __name__ == "__main__":
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print(json.dumps(q.get(timeout=60)))
            p.join()
        """))
    proc = subprocess.run([sys.executable, str(child)], capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is False


@pytest.mark.parametrize("how", ["exit", "kill-9"])
def test_a_template_nobody_took_does_not_outlive_its_process(how):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        import simsyft
        from simsyft.backends import template as tpl
        print(tpl._prewarmed[0].pid, flush=True)
        if sys.argv[1] == "kill-9":
            time.sleep(600)
        """), how], stdout=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
    try:
        pid = int(proc.stdout.readline())
        if how == "kill-9":
            proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        # exit: stopped at exit at once; kill -9: its stdin ends, read once its import is done
        assert gone(pid, timeout=10 if how == "exit" else 120)
    finally:
        proc.kill()
        proc.wait()


def test_a_fork_of_the_process_neither_takes_nor_stops_the_parents_template():
    # A multiprocessing (fork) or DataLoader worker copies the parent's memory, prewarmed template
    # included: it must not write to that template's pipes, nor kill it when discarding it.
    facts = run(PREAMBLE + """
    from simsyft.config import parse_config
    child = os.fork()
    if child == 0:
        sim = sy.launch(parse_config({"simulation": {"name": "prewarm-child"}, "workers": {"kid": {}}}))
        ok = sim.backend.template.pid != prewarmed and (torch.ones(2).send(sim.handle("kid")) + 1).get().tolist() == [2.0, 2.0]
        sim.shutdown()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    sim = sy.launch(parse_config({"simulation": {"name": "prewarm-parent"}, "workers": {"bob": {}}}))
    out = {"child": os.waitstatus_to_exitcode(status), "prewarmed": prewarmed,
           "template": sim.backend.template.pid, "value": (torch.ones(2).send(sim.handle("bob")) * 3).get().tolist()}
    sim.shutdown()
    print(json.dumps(out))
    """)
    assert facts["child"] == 0
    assert facts["template"] == facts["prewarmed"] is not None
    assert facts["value"] == [3.0, 3.0]


def test_a_changed_working_directory_is_not_missed_by_the_workers(tmp_path):
    facts = run(PREAMBLE + f"""
    os.chdir({str(tmp_path)!r})
    bob = sy.VirtualWorker(hook, id="bob")
    print(json.dumps({{"prewarmed": prewarmed, "template": bob.simulation.backend.template.pid,
                      "cwd": os.readlink(f"/proc/{{bob.pid}}/cwd")}}))
    """)
    assert facts["prewarmed"] is not None and facts["template"] != facts["prewarmed"]
    assert facts["cwd"] == str(tmp_path)
