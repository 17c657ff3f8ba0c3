"""The cost curve of many workers: start time, unique memory and one FedAvg round, by worker count.

    python -m bench.many                       # rows for 1, 4, 16, 64, 256 workers (a few minutes)
    python -m bench.many --sizes 1,4,16        # fewer rows
    python -m bench.many --leaks 256           # also: `simsyft down`, Ctrl-C and kill -9 at 256 workers
    python -m bench.many --markdown            # the table as Markdown (docs/benchmarks.md)

Each row is a fresh Python process that imports simsyft and launches `[workers.client] count = N`
(cpus = "spread") from a config, the way a user's script would, and measures:
- start: `sy.launch(config)` until every worker answers. "fork": the script imports simsyft,
  then torch (the order `simsyft up` has), so the template `import simsyft` starts (Note
  [Prewarmed template]) imports torch beside the script's own import; "fork, torch first": the
  script imports torch, then simsyft (the tutorials' order): the template starts only then,
  and is still importing when launch is called; "fork, cold": SIMSYFT_PREWARM=0, the template's
  whole `import torch` inside launch; "spawn": one fresh interpreter per worker. "from exec" is
  the same moment counted from the process's start;
- memory: USS (pages only that process holds), PSS and RSS of every worker and the template;
- one FedAvg round: a small MLP copied to each worker, one SGD step on its data there, brought
  back and averaged; next to the same round computed in one process with plain torch, whose
  result it must equal (checked: a bench that disagrees with torch says so);
- leftovers after shutdown: processes and shared-memory segments (must be 0).
Floors in the same run: `python -c "import torch"` (median of 3), and a spawned simulation of
`--spawn` workers (start = "spawn", today's way) for the memory and start-time comparison.
The table goes to stdout, JSON to --json, and a PNG of the curve to --plot when matplotlib is
importable (skipped quietly otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
MiB = 2**20
FEATURES, HIDDEN, CLASSES, SAMPLES = 32, 64, 2, 32


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def import_torch_s(reps: int = 3) -> float:
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def write_config(directory: str, name: str, count: int, start: str) -> str:
    path = os.path.join(directory, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'[simulation]\nname = "{name}"\nseed = 0\nstart = "{start}"\n\n'
                f'[workers.client]\ncount = {count}\ncpus = "spread"\n')
    return path


def memory(pids: list[int]) -> dict[str, int]:
    import psutil

    total = {"uss": 0, "pss": 0, "rss": 0}
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        for key in total:
            total[key] += getattr(info, key)
    return total


def model_and_data(count: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))
    data = [(torch.randn(SAMPLES, FEATURES), torch.randint(0, CLASSES, (SAMPLES,))) for _ in range(count)]
    return model, data


def fedavg_round(model, shards, lr: float = 0.1):
    """One round: per shard a copy of `model`, one SGD step on it, then the plain average.

    `shards` holds tensors (one process) or pointers (simsyft): the code is the same.
    """
    import torch
    import torch.nn.functional as F
    from torch import optim

    import simsyft as sy

    trained = []
    for x, y in shards:
        remote = isinstance(x, sy.PointerTensor)
        local = model.copy().send(x.location) if remote else _copy(model)
        opt = optim.SGD(local.parameters(), lr=lr)
        opt.zero_grad()
        F.cross_entropy(local(x), y).backward()
        opt.step()
        trained.append(local.get() if remote else local)
    with torch.no_grad():
        for averaged, *copies in zip(model.parameters(), *(m.parameters() for m in trained)):
            averaged.copy_(torch.stack([p.data for p in copies]).mean(0))
    return model


def _copy(model):
    import copy

    return copy.deepcopy(model)


def run_row(n: int, start: str, directory: str, rounds: int, repeats: int = 1) -> dict[str, Any]:
    """One row: `repeats` fresh processes (a launch is a script's first, Note [Prewarmed template]),
    the first also measuring memory and FedAvg; start times are their median."""
    runs = [_run_row_once(n, start, directory, rounds)]
    runs += [_run_row_once(n, start, directory, 0) for _ in range(repeats - 1)]
    out = runs[0]
    out["start_samples"] = [r["start_s"] for r in runs]
    out["start_s"] = statistics.median(out["start_samples"])
    out["from_exec_s"] = statistics.median(r["from_exec_s"] for r in runs)
    out["left_processes"] = sum(r["left_processes"] for r in runs)
    out["left_segments"] = sum(r["left_segments"] for r in runs)
    return out


def _run_row_once(n: int, start: str, directory: str, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    env.pop("SIMSYFT_PREWARM", None)  # this process turned it off for itself only
    method, extra = start, []
    if start == "fork, cold":
        env["SIMSYFT_PREWARM"], method = "0", "fork"
    elif start == "fork, torch first":
        method, extra = "fork", ["--torch-first", "yes"]  # in a row: a flag
    proc = subprocess.run([sys.executable, "-m", "bench.many", "--row", str(n), "--start", method,
                           "--rounds", str(rounds), "--dir", directory, *extra], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"row {n} ({start}) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["start"] = start
    return out


def fedavg(n: int, clients: list, rounds: int) -> dict[str, Any]:
    """FedAvg rounds over `clients`, next to the same rounds in one process with plain torch."""
    import torch

    model, data = model_and_data(n)  # data placed first, then rounds timed
    shards = [(x.send(c), y.send(c)) for (x, y), c in zip(data, clients)]
    reference = _copy(model)
    fedavg_round(model, shards)  # warm-up for both: first-call costs are not a round's
    fedavg_round(reference, data)
    remote_s, local_s = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        fedavg_round(model, shards)
        remote_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        fedavg_round(reference, data)
        local_s.append(time.perf_counter() - t)
    return {"fedavg_s": statistics.median(remote_s), "fedavg_one_process_s": statistics.median(local_s),
            "fedavg_equal": all(torch.allclose(a, b, atol=1e-6)
                                for a, b in zip(model.parameters(), reference.parameters()))}


def row(n: int, start: str, directory: str, rounds: int, torch_first: bool = False) -> dict[str, Any]:
    if torch_first:
        import torch  # noqa: F401  (before simsyft: its prewarmed template starts only after this)
    import simsyft as sy
    import psutil
    import torch

    from simsyft.wire import shm

    sy.TorchHook(torch)
    torch.set_num_threads(1)  # as each worker (threads = 1): the one-process round is not a 2-thread one
    config = write_config(directory, f"many-{start}-{n}", n, start)
    t = time.perf_counter()
    sim = sy.launch(config)
    start_s = time.perf_counter() - t
    out: dict[str, Any] = {"workers": n, "start": start, "start_s": start_s,
                           "from_exec_s": time.time() - psutil.Process().create_time()}
    try:
        clients = sim.group("client")
        pids = [c.pid for c in clients]
        template = sim.backend.template.pid if getattr(sim.backend, "template", None) else None
        workers_mem = memory(pids)
        out.update({f"workers_{k}": v for k, v in workers_mem.items()})
        out["template_uss"] = memory([template])["uss"] if template else 0
        out["uss_per_worker"] = workers_mem["uss"] / n
        namespace, run_dir = sim.namespace, sim.run_dir
        if rounds:  # else a start-only repeat (run_row)
            out.update(fedavg(n, clients, rounds))
    finally:
        sim.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in pids + ([template] if template else []) if _alive(p)]
        segments = [s for s in shm.list_segments() if s.startswith(f"simsyft_{namespace}_")]
        if not alive and not segments and not os.path.exists(run_dir):
            break
        time.sleep(0.1)
    out["left_processes"], out["left_segments"] = len(alive), len(segments)
    return out


def _alive(pid: int) -> bool:
    from simsyft.rundir import pid_alive

    return pid_alive(pid)


# -- no leaks at scale: simsyft down, Ctrl-C, kill -9 of the user's process -------------------------

_SCRIPT = """
import json, sys, time, torch, simsyft as sy
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started where SIGINT is ignored (nohup, &)
hook = sy.TorchHook(torch)
sim = sy.launch(sys.argv[1])
clients = sim.group("client")
kept = [torch.ones(64 * 1024).send(c) for c in clients[:8]]
print(json.dumps({"pids": [c.pid for c in clients] + [sim.backend.template.pid],
                  "namespace": sim.namespace, "run_dir": sim.run_dir}), flush=True)
time.sleep(3600)
"""


def leaks(n: int, directory: str) -> list[dict[str, Any]]:
    from simsyft.rundir import read_pids
    from simsyft.wire import shm

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    env.pop("SIMSYFT_RUN_DIR", None)
    script = os.path.join(directory, "leak_script.py")
    with open(script, "w") as f:
        f.write(textwrap.dedent(_SCRIPT))
    results = []
    for how in ("simsyft down", "Ctrl-C", "kill -9"):
        config = write_config(directory, f"leak-{how.split()[-1].strip('-')}-{n}", n, "fork")
        if how == "simsyft down":
            name = os.path.basename(config)[:-5]
            up = subprocess.run([sys.executable, "-m", "simsyft", "up", config, "--detach"], env=env,
                                capture_output=True, text=True, timeout=600)
            if up.returncode:
                results.append({"how": how, "workers": n, "error": up.stderr.strip()[-300:]})
                continue
            run_dir = up.stdout.split("run dir ")[1].split(",")[0]
            pids = list(read_pids(run_dir).values())
            namespace = os.path.basename(run_dir)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "simsyft", "down", name], env=env, capture_output=True, timeout=600)
        else:
            proc = subprocess.Popen([sys.executable, script, config], stdout=subprocess.PIPE, text=True, env=env)
            facts = json.loads(proc.stdout.readline())
            pids, namespace, run_dir = facts["pids"], facts["namespace"], facts["run_dir"]
            t = time.perf_counter()
            proc.send_signal(signal.SIGINT if how == "Ctrl-C" else signal.SIGKILL)
            proc.wait(600)
        deadline = time.monotonic() + 120
        while True:
            alive = [p for p in pids if _alive(p)]
            segments = [s for s in shm.list_segments() if s.startswith(f"simsyft_{namespace}_")]
            left_dir = os.path.exists(run_dir)
            if (not alive and not segments and not left_dir) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        results.append({"how": how, "workers": len(pids), "clean_s": time.perf_counter() - t,
                        "left_processes": len(alive), "left_segments": len(segments), "left_run_dir": left_dir})
        log(f"  leaks: {how}: {results[-1]}")
    return results


# -- output ------------------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]], torch_s: float, markdown: bool) -> str:
    headers = ("workers", "start", "start s", "x import torch", "from exec s", "USS total", "USS/worker", "PSS total",
               "RSS total", "FedAvg round", "one process", "same result", "left")
    lines = []
    for r in rows:
        lines.append((
            str(r["workers"]), r["start"], f"{r['start_s']:.2f}", f"{r['start_s'] / torch_s:.2f}",
            f"{r['from_exec_s']:.2f}",
            f"{(r['workers_uss'] + r['template_uss']) / MiB:.0f} MiB", f"{r['uss_per_worker'] / MiB:.1f} MiB",
            f"{r['workers_pss'] / MiB:.0f} MiB", f"{r['workers_rss'] / MiB:.0f} MiB",
            f"{r['fedavg_s'] * 1000:.0f} ms", f"{r['fedavg_one_process_s'] * 1000:.1f} ms",
            "yes" if r["fedavg_equal"] else "NO", f"{r['left_processes']}+{r['left_segments']}",
        ))
    if markdown:
        out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(headers)]
    out = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in lines]
    return "\n".join(out)


def targets(rows: list[dict[str, Any]], torch_s: float) -> list[str]:
    """The issue's targets, judged as ratios measured in this run."""
    fork = {r["workers"]: r for r in rows if r["start"] == "fork"}
    found = []
    if 64 in fork and 4 in fork:
        ratio = fork[64]["start_s"] / fork[4]["start_s"]
        found.append(f"start 64 / start 4 = {ratio:.2f} (goal <= 2): {'met' if ratio <= 2 else 'NOT met'}")
        ratio = fork[64]["start_s"] / torch_s
        found.append(f"start 64 / import torch = {ratio:.2f} (goal <= 1): {'met' if ratio <= 1 else 'NOT met'}")
    for variant, what in (("fork, torch first", "a script importing torch before simsyft"),
                          ("fork, cold", "no prewarmed template (SIMSYFT_PREWARM=0)")):
        other = {r["workers"]: r for r in rows if r["start"] == variant}
        if 64 in other:
            line = f"  with {what}: start 64 / import torch = {other[64]['start_s'] / torch_s:.2f}"
            if 4 in other:
                line += f", start 64 / start 4 = {other[64]['start_s'] / other[4]['start_s']:.2f}"
            found.append(line)
    if fork:
        worst = max(r["uss_per_worker"] for r in fork.values()) / MiB
        found.append(f"USS per idle worker, worst row = {worst:.1f} MiB (goal <= 32): {'met' if worst <= 32 else 'NOT met'}")
    if 256 in fork:
        found.append(f"256 workers started and answered in {fork[256]['start_s']:.1f} s")
    if 64 in fork:
        r = fork[64]
        found.append(f"FedAvg round over 64 workers: {r['fedavg_s'] * 1000:.0f} ms vs "
                     f"{r['fedavg_one_process_s'] * 1000:.1f} ms in one process (same result: "
                     f"{'yes' if r['fedavg_equal'] else 'NO'})")
    return found


def plot(rows: list[dict[str, Any]], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fork = sorted((r for r in rows if r["start"] == "fork"), key=lambda r: r["workers"])
    n = [r["workers"] for r in fork]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(n, [r["start_s"] for r in fork], marker="o", label="fork (prewarmed template)")
    for variant, marker in (("fork, torch first", "s"), ("fork, cold", "^"), ("spawn", "x")):
        other = sorted((r for r in rows if r["start"] == variant), key=lambda r: r["workers"])
        if other:
            axes[0].plot([r["workers"] for r in other], [r["start_s"] for r in other], marker=marker,
                         linestyle=":", label=variant)
    axes[0].set_ylabel("start until all answer (s)")
    axes[0].legend(fontsize=7)
    axes[1].plot(n, [(r["workers_uss"] + r["template_uss"]) / MiB for r in fork], marker="o", label="USS")
    axes[1].plot(n, [r["workers_pss"] / MiB for r in fork], marker="o", label="PSS")
    axes[1].set_ylabel("memory, all workers (MiB)")
    axes[1].legend()
    axes[2].plot(n, [r["fedavg_s"] for r in fork], marker="o", label="simsyft")
    axes[2].plot(n, [r["fedavg_one_process_s"] for r in fork], marker="o", label="one process")
    axes[2].set_ylabel("one FedAvg round (s)")
    axes[2].legend()
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")  # each grows about linearly in N: straight lines of slope 1, past the fixed costs
        ax.set_xlabel("workers")
        ax.grid(True, alpha=0.3)
    fig.suptitle("simsyft: many workers forked from a warm template")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.many", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,4,16,64,256", help="worker counts, comma-separated")
    parser.add_argument("--spawn", default="4", help="worker counts to also start with start = \"spawn\" ('' for none)")
    parser.add_argument("--cold", default="4,64", help="worker counts to also start with SIMSYFT_PREWARM=0 ('' for none)")
    parser.add_argument("--torch-first", default="64", help="worker counts to also start from a script importing "
                        "torch before simsyft ('' for none)")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # one row, in this process (run_row)
    parser.add_argument("--start", default="fork", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds per row (the median is shown)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per row (the median start is shown)")
    parser.add_argument("--leaks", type=int, default=0, help="also check down / Ctrl-C / kill -9 at this many workers")
    parser.add_argument("--json", default=os.path.join(RESULTS, "many.json"))
    parser.add_argument("--plot", default=os.path.join(RESULTS, "many.png"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.row is not None:
        print(json.dumps(row(args.row, args.start, args.dir, args.rounds, args.torch_first == "yes")))
        return 0
    os.environ["SIMSYFT_PREWARM"] = "0"  # this process starts no simulation: each row is its own process
    sizes = [int(s) for s in args.sizes.split(",") if s]
    spawn = [int(s) for s in args.spawn.split(",") if s]
    cold = [int(s) for s in args.cold.split(",") if s]
    torch_first = [int(s) for s in args.torch_first.split(",") if s]
    log("timing python -c 'import torch' (3 runs)")
    torch_s = import_torch_s()
    rows = []
    with tempfile.TemporaryDirectory(prefix="simsyft-many-") as directory:
        for start, counts in (("spawn", spawn), ("fork, cold", cold), ("fork, torch first", torch_first),
                              ("fork", sizes)):
            for n in counts:
                log(f"{n} workers ({start})")
                rows.append(run_row(n, start, directory, args.rounds, args.repeats))
                log(f"  {json.dumps(rows[-1])}")
        leak_rows = leaks(args.leaks, directory) if args.leaks else []
    print(f'python -c "import torch": {torch_s:.2f} s (median of 3)')
    print(table(rows, torch_s, args.markdown))
    for line in targets(rows, torch_s):
        print(("- " if args.markdown else "") + line)
    for r in leak_rows:
        print(f"{'- ' if args.markdown else ''}leaks, {r['how']} at {r['workers']} processes: "
              + (r["error"] if "error" in r else f"{r['left_processes']} processes, {r['left_segments']} segments, "
                 f"run dir {'left' if r['left_run_dir'] else 'removed'} ({r['clean_s']:.1f} s)"))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"import_torch_s": torch_s, "rows": rows, "leaks": leak_rows,
                   "load_before_after": os.getloadavg()}, f, indent=1)
    if not args.no_plot:
        drawn = plot(rows, args.plot)
        log(f"plot: {drawn}" if drawn else "plot: skipped (matplotlib not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
