"""simsyft.config: every refusal with its exact text, the cuda:* expansion, the shipped configs.

No processes. CPU affinity and the CUDA device count are monkeypatched, so the
expected texts do not depend on the machine running the tests.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import psutil
import pytest
import torch

from simsyft.config import (
    MEMORY_LIMIT_MIN,
    REQUEST_TIMEOUT_S,
    THREADS_MAX,
    DataItem,
    SimulationConfig,
    WorkerConfig,
    check_worker_name,
    format_size,
    load_config,
    parse_config,
    parse_size,
)
from simsyft.errors import ConfigError, SimsyftError

REPO = Path(__file__).resolve().parents[2]
HEAD = '[simulation]\nname = "s"\n'


@pytest.fixture(autouse=True)
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pretend machine: CPUs 0-3 and 8 usable, no CUDA device (tests raise the count as needed)."""
    monkeypatch.setattr(psutil.Process, "cpu_affinity", lambda self, cpus=None: [0, 1, 2, 3, 8])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def write(tmp_path: Path, text: str, name: str = "sim.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(tmp_path: Path, text: str) -> str:
    """The ConfigError text for config ``text``, without the leading '<file>: '."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: ") :]


# --- sizes and names ---------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("10B", 10),
        ("2KB", 2000),
        ("3MB", 3_000_000),
        ("4GB", 4_000_000_000),
        ("1TB", 10**12),
        ("2KiB", 2048),
        ("3MiB", 3 * 2**20),
        ("4GiB", 4 * 2**30),
        ("8TiB", 8 * 2**40),
        ("1.5 GiB", 3 * 2**29),
        ("512mib", 512 * 2**20),
    ],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


SIZE_RULE = (
    "use a number of bytes or a number with a unit: B, KB, MB, GB, TB (powers of 1000) "
    'or KiB, MiB, GiB, TiB (powers of 1024), e.g. "4GiB"'
)


@pytest.mark.parametrize(
    "value, message",
    [
        ("4 GG", f"invalid size '4 GG': {SIZE_RULE}"),
        ("GiB", f"invalid size 'GiB': {SIZE_RULE}"),
        ("-1KB", f"invalid size '-1KB': {SIZE_RULE}"),
        ("", f"invalid size '': {SIZE_RULE}"),
        (-5, "invalid size -5: must not be negative"),
        (True, "invalid size: expected an integer or a string, got a boolean (true)"),
        (1.5, "invalid size: expected an integer or a string, got a float (1.5)"),
    ],
)
def test_parse_size_refuses(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    "size, text",
    [(0, "0B"), (1000, "1000B"), (1024, "1KiB"), (256 * 2**20, "256MiB"), (3 * 2**29, "1.5GiB"), (2**40, "1TiB"),
     (int(223.74 * 2**20), "223.7MiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    if "." not in text:
        assert parse_size(text) == size  # round numbers come back exactly


@pytest.mark.parametrize("name", ["bob", "_x", "Hospital-A_2", "a" * 64, "me2", "Me"])
def test_good_worker_names(name: str) -> None:
    check_worker_name(name)


RULE = "use letters, digits, '_' and '-', starting with a letter or '_' (at most 64 characters)"


@pytest.mark.parametrize(
    "name, message",
    [
        ("a b", f"invalid worker name 'a b': {RULE}"),
        ("1abc", f"invalid worker name '1abc': {RULE}"),
        ("-x", f"invalid worker name '-x': {RULE}"),
        ("", f"invalid worker name '': {RULE}"),
        ("bob.x", f"invalid worker name 'bob.x': {RULE}"),
        ("a" * 65, f"invalid worker name '{'a' * 65}': {RULE}"),
        ("me", "invalid worker name 'me': it is reserved for the local client (sy.local_worker)"),
        (7, "invalid worker name 7: expected a string, got an integer (7)"),
    ],
)
def test_bad_worker_names(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_worker_name(name)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError) and isinstance(info.value, SimsyftError)


# --- valid configs -----------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    sim = load_config(write(tmp_path, HEAD + "[workers.bob]\n"))
    assert sim == SimulationConfig("s", None, (WorkerConfig("bob"),), str(tmp_path / "sim.toml"))
    assert sim.request_timeout_s == REQUEST_TIMEOUT_S == 300.0
    bob = sim.worker("bob")
    assert (bob.device, bob.cpus, bob.threads, bob.memory_limit, bob.seed, bob.data) == (
        "cpu", None, 1, None, None, ())  # fmt: skip


def test_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    (tmp_path / "x.pt").write_bytes(b"")
    sim = load_config(write(tmp_path, HEAD + "seed = 10\nrequest_timeout_s = 2.5\n" + """
[workers.bob]
device = "cpu"
cpus = [0, 8]
threads = 2
memory_limit = "4GiB"

[workers.alice]
device = "cuda:1"
gpu_memory_fraction = 0.5
cpus = "1-3"

[workers.alice.data]
xray = { path = "x.pt", tags = ["#xray", "#train"], description = "scans" }
"""))
    bob, alice = sim.workers
    assert sim.request_timeout_s == 2.5
    assert bob == WorkerConfig("bob", "cpu", (0, 8), 2, 4 * 2**30, None, 10, ())
    assert alice == WorkerConfig(
        "alice", "cuda:1", (1, 2, 3), 1, None, 0.5, 11,
        (DataItem("xray", str(tmp_path / "x.pt"), ("#xray", "#train"), "scans"),),
    )  # fmt: skip


@pytest.mark.parametrize("value, expected", [("0", 0.0), ("0.1", 0.1), ("30", 30.0), ("86400", 86400.0)])
def test_request_timeout_range(tmp_path: Path, value: str, expected: float) -> None:
    sim = load_config(write(tmp_path, HEAD + f"request_timeout_s = {value}\n[workers.bob]\n"))
    assert sim.request_timeout_s == expected and isinstance(sim.request_timeout_s, float)


def test_limits_that_can_work_are_accepted(tmp_path: Path) -> None:
    # Oversubscribed (8 threads on a 2-CPU machine) works, only slower: it is not refused.
    text = HEAD + f"[workers.bob]\nthreads = {THREADS_MAX}\nmemory_limit = '256MiB'\n[workers.alice]\nthreads = 8\n"
    bob, alice = load_config(write(tmp_path, text)).workers
    assert (bob.threads, bob.memory_limit, alice.threads) == (1024, MEMORY_LIMIT_MIN, 8)


def test_seeds_follow_file_order(tmp_path: Path) -> None:
    sim = load_config(write(tmp_path, HEAD + "seed = 5\n[workers.c]\n[workers.a]\n[workers.b]\n"))
    assert [(w.name, w.seed) for w in sim.workers] == [("c", 5), ("a", 6), ("b", 7)]


def test_plain_cuda_means_cuda0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 1)
    assert load_config(write(tmp_path, HEAD + '[workers.g]\ndevice = "cuda"\n')).workers[0].device == "cuda:0"


def test_cpu_only_config_does_not_import_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    assert load_config(write(tmp_path, HEAD + "[workers.bob]\ncpus = [1]\n")).workers[0].cpus == (1,)
    with pytest.raises(ImportError):
        load_config(write(tmp_path, HEAD + '[workers.bob]\ndevice = "cuda"\n'))


def test_parse_config_resolves_data_against_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.pt").write_bytes(b"")
    spec = {
        "simulation": {"name": "s"},
        "workers": {"bob": {"data": {"t": {"path": "t.pt", "tags": ("#t",)}}}},
    }
    sim = parse_config(spec, base_dir=tmp_path / "d")
    assert sim.source == "<config>"
    assert sim.workers[0].data[0].path == str(tmp_path / "d" / "t.pt")
    monkeypatch.chdir(tmp_path / "d")  # without base_dir: the current directory
    assert parse_config(spec).workers[0].data[0].path == str(tmp_path / "d" / "t.pt")
    with pytest.raises(ConfigError) as info:
        parse_config(spec, "inline", base_dir=tmp_path)
    assert str(info.value) == f"inline: [workers.bob.data.t] path: file not found: {tmp_path / 't.pt'}"


def test_data_path_absolute_and_dotdot(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.pt").write_bytes(b"")
    (tmp_path / "configs").mkdir()
    text = HEAD + f"""[workers.h.data]
rel = {{ path = "../data/a.pt", tags = ["#a"] }}
abs = {{ path = "{tmp_path / 'data' / 'a.pt'}", tags = ["#a"] }}
"""
    rel, absolute = load_config(write(tmp_path / "configs", text)).workers[0].data
    assert rel.path == absolute.path == str(tmp_path / "data" / "a.pt")
    assert rel.description is None


# --- to_dict / from_dict ---------------------------------------------------------


def test_worker_round_trip_through_json() -> None:
    spec = WorkerConfig(
        "alice", "cuda:1", (0, 2), 3, 2**30, 0.25, 7,
        (DataItem("x", "/d/x.pt", ("#x", "#train"), None), DataItem("y", "/d/y.pt", ("#y",), "labels")),
    )  # fmt: skip
    plain = json.loads(json.dumps(spec.to_dict()))
    assert plain["cpus"] == [0, 2] and plain["data"][1]["tags"] == ["#y"]
    back = WorkerConfig.from_dict(plain)
    assert back == spec
    assert isinstance(back.cpus, tuple) and isinstance(back.data[0].tags, tuple)
    assert WorkerConfig.from_dict(WorkerConfig("bob").to_dict()) == WorkerConfig("bob")
    assert WorkerConfig.from_dict({"name": "bob"}) == WorkerConfig("bob")


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(ConfigError) as info:
        WorkerConfig.from_dict({"name": "bob", "devcie": "cpu"})
    assert str(info.value) == "worker spec: unknown keys ['devcie']"


def test_dataclasses_are_frozen() -> None:
    spec = WorkerConfig("bob")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.threads = 2  # type: ignore[misc]
    assert not hasattr(spec, "__dict__")  # slots


def test_worker_lookup(tmp_path: Path) -> None:
    sim = load_config(write(tmp_path, HEAD + "[workers.bob]\n[workers.alice]\n"))
    assert sim.worker("alice").name == "alice"
    with pytest.raises(KeyError, match=r"simulation 's' has no worker 'carol' \(workers: bob, alice\)"):
        sim.worker("carol")


# --- refusals: exact text ----------------------------------------------------------

WORKER_KEYS = ("compute_factor, count, cpus, data, device, gpu_memory_fraction, memory_limit, message_pending_time, "
               "node, offline, threads")


THREADS_TOO_MANY = (
    "must be at most 1024, got %d (torch starts that many threads in the worker; "
    "more than the machine's CPUs only compete for them)"
)
MEMORY_TOO_SMALL = "must be at least 256MiB, got %s (a worker needs about 225 MiB to start: Python and torch)"
TIMEOUT_RANGE = "must be 0 (wait forever) or from 0.1 to 86400 seconds (a day), got %s"


@pytest.mark.parametrize(
    "text, message",
    [
        # top level and [simulation]
        ("[workers.bob]\n", '[simulation]: missing (every config needs [simulation] with name = "...")'),
        ('simulation = "x"\n[workers.bob]\n', "simulation: expected a table [simulation], got a string ('x')"),
        ("[simulation]\n[workers.bob]\n", '[simulation] name: missing (e.g. name = "hospitals")'),
        ("[simulation]\nname = 3\n", "[simulation] name: expected a string, got an integer (3)"),
        ('[simulation]\nname = "my sim"\n', f"[simulation] name: invalid simulation name 'my sim': {RULE}"),
        (HEAD + "nmae = 1\n",
         "[simulation] nmae: unknown key (expected one of: address, backend, name, request_timeout_s, seed, start)"),
        (HEAD + "seed = true\n[workers.bob]\n", "[simulation] seed: expected an integer, got a boolean (true)"),
        (HEAD + "seed = 1.0\n[workers.bob]\n", "[simulation] seed: expected an integer, got a float (1.0)"),
        (HEAD + "seed = -1\n[workers.bob]\n", "[simulation] seed: must be 0 or more, got -1"),
        (HEAD + "seed = 9223372036854775807\n[workers.a]\n[workers.b]\n",
         "[simulation] seed: must be at most 9223372036854775806 (worker i gets seed + i, and there are 2 workers)"),
        (HEAD + "request_timeout_s = '30s'\n[workers.bob]\n",
         "[simulation] request_timeout_s: expected a number of seconds, got a string ('30s')"),
        (HEAD + "request_timeout_s = true\n[workers.bob]\n",
         "[simulation] request_timeout_s: expected a number of seconds, got a boolean (true)"),
        (HEAD + "request_timeout_s = -1\n[workers.bob]\n", f"[simulation] request_timeout_s: {TIMEOUT_RANGE % -1}"),
        (HEAD + "request_timeout_s = 0.05\n[workers.bob]\n", f"[simulation] request_timeout_s: {TIMEOUT_RANGE % 0.05}"),
        (HEAD + "request_timeout_s = 86401\n[workers.bob]\n", f"[simulation] request_timeout_s: {TIMEOUT_RANGE % 86401}"),
        (HEAD + "request_timeout_s = inf\n[workers.bob]\n", f"[simulation] request_timeout_s: {TIMEOUT_RANGE % 'inf'}"),
        (HEAD + "request_timeout_s = nan\n[workers.bob]\n", f"[simulation] request_timeout_s: {TIMEOUT_RANGE % 'nan'}"),
        (HEAD, "[workers]: no workers (add a table such as [workers.bob])"),
        (HEAD + "[workers]\n", "[workers]: no workers (add a table such as [workers.bob])"),
        (HEAD + "[gpus.x]\n", "[gpus]: unknown table (expected one of: network, simulation, workers)"),
        ("version = 2\n" + HEAD, "version: unknown key (expected one of: network, simulation, workers)"),
        (HEAD + "[[workers]]\n", "workers: expected tables [workers.<name>], got an array"),
        # worker tables
        (HEAD + "[workers]\nbob = 1\n", "[workers.bob]: expected a table, got an integer (1)"),
        (HEAD + '[workers."a b"]\n', f'[workers."a b"]: invalid worker name \'a b\': {RULE}'),
        (HEAD + "[workers.1st]\n", f"[workers.1st]: invalid worker name '1st': {RULE}"),
        (HEAD + "[workers.me]\n",
         "[workers.me]: invalid worker name 'me': it is reserved for the local client (sy.local_worker)"),
        (HEAD + "[workers.bob]\ndevcie = 'cpu'\n", f"[workers.bob] devcie: unknown key (expected one of: {WORKER_KEYS})"),
        # device
        (HEAD + "[workers.bob]\ndevice = 'gpu'\n",
         "[workers.bob] device: 'gpu' is not a device: use \"cpu\", \"cuda\", \"cuda:N\" or 'cuda:*'"),
        (HEAD + "[workers.bob]\ndevice = 'cuda:01'\n",
         "[workers.bob] device: 'cuda:01' is not a device: use \"cpu\", \"cuda\", \"cuda:N\" or 'cuda:*'"),
        (HEAD + "[workers.bob]\ndevice = 'CPU'\n",
         "[workers.bob] device: 'CPU' is not a device: use \"cpu\", \"cuda\", \"cuda:N\" or 'cuda:*'"),
        (HEAD + "[workers.bob]\ndevice = 0\n", "[workers.bob] device: expected a string, got an integer (0)"),
        (HEAD + "[workers.bob]\ndevice = 'cuda:1'\n",
         "[workers.bob] device: cuda:1 not available (this machine has 0 CUDA devices)"),
        (HEAD + "[workers.bob]\ndevice = 'cuda'\n",
         "[workers.bob] device: cuda not available (this machine has 0 CUDA devices)"),
        # threads
        (HEAD + "[workers.bob]\nthreads = 0\n", "[workers.bob] threads: must be at least 1, got 0"),
        (HEAD + "[workers.bob]\nthreads = true\n", "[workers.bob] threads: expected an integer, got a boolean (true)"),
        (HEAD + "[workers.bob]\nthreads = '2'\n", "[workers.bob] threads: expected an integer, got a string ('2')"),
        (HEAD + "[workers.bob]\nthreads = 100000\n", f"[workers.bob] threads: {THREADS_TOO_MANY % 100000}"),
        (HEAD + "[workers.bob]\nthreads = 1025\n", f"[workers.bob] threads: {THREADS_TOO_MANY % 1025}"),
        # cpus (the fixture's machine has CPUs 0-3 and 8)
        (HEAD + "[workers.bob]\ncpus = [17]\n", "[workers.bob] cpus: CPU 17 not available (have 0-3,8)"),
        (HEAD + "[workers.bob]\ncpus = [0, 4, 5, 6, 9]\n", "[workers.bob] cpus: CPUs 4-6,9 not available (have 0-3,8)"),
        (HEAD + "[workers.bob]\ncpus = '2-9'\n", "[workers.bob] cpus: CPUs 4-7,9 not available (have 0-3,8)"),
        (HEAD + "[workers.bob]\ncpus = []\n",
         "[workers.bob] cpus: no CPUs given (leave cpus out to let the worker run on any CPU)"),
        (HEAD + "[workers.bob]\ncpus = [1, 1]\n", "[workers.bob] cpus: CPU 1 listed twice"),
        (HEAD + "[workers.bob]\ncpus = [-1]\n", "[workers.bob] cpus: CPU numbers are 0 or more, got -1"),
        (HEAD + "[workers.bob]\ncpus = [true]\n", "[workers.bob] cpus: expected an integer, got a boolean (true)"),
        (HEAD + "[workers.bob]\ncpus = 0\n", "[workers.bob] cpus: expected an array of CPU numbers, got an integer (0)"),
        (HEAD + "[workers.bob]\ncpus = '3-1'\n",
         "[workers.bob] cpus: invalid CPU list '3-1': use an array such as [0, 1] or a string such as \"0-3,6\""),
        # memory_limit
        (HEAD + "[workers.bob]\nmemory_limit = '4 GG'\n", f"[workers.bob] memory_limit: invalid size '4 GG': {SIZE_RULE}"),
        (HEAD + "[workers.bob]\nmemory_limit = 0\n", f"[workers.bob] memory_limit: {MEMORY_TOO_SMALL % 0}"),
        (HEAD + "[workers.bob]\nmemory_limit = '1B'\n", f"[workers.bob] memory_limit: {MEMORY_TOO_SMALL % repr('1B')}"),
        (HEAD + "[workers.bob]\nmemory_limit = '255MiB'\n",
         f"[workers.bob] memory_limit: {MEMORY_TOO_SMALL % repr('255MiB')}"),
        (HEAD + "[workers.bob]\nmemory_limit = 268435455\n", f"[workers.bob] memory_limit: {MEMORY_TOO_SMALL % 268435455}"),
        (HEAD + "[workers.bob]\nmemory_limit = -1\n", "[workers.bob] memory_limit: invalid size -1: must not be negative"),
        # gpu_memory_fraction
        (HEAD + "[workers.bob]\ngpu_memory_fraction = 0.5\n",
         "[workers.bob] gpu_memory_fraction: only valid with a cuda device (device is 'cpu')"),
        (HEAD + "[workers.bob]\ngpu_memory_fraction = '1/2'\n",
         "[workers.bob] gpu_memory_fraction: expected a number, got a string ('1/2')"),
    ],
)
def test_refusals(tmp_path: Path, text: str, message: str) -> None:
    assert error(tmp_path, text) == message


@pytest.mark.parametrize(
    "fraction, message",
    [
        ("0", "must be more than 0 and at most 1, got 0"),
        ("1.5", "must be more than 0 and at most 1, got 1.5"),
        ("-0.1", "must be more than 0 and at most 1, got -0.1"),
        ("nan", "must be more than 0 and at most 1, got nan"),
        ("true", "expected a number, got a boolean (true)"),
    ],
)
def test_gpu_fraction_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fraction: str, message: str) -> None:
    gpus(monkeypatch, 1)
    text = HEAD + f"[workers.bob]\ndevice = 'cuda:0'\ngpu_memory_fraction = {fraction}\n"
    assert error(tmp_path, text) == f"[workers.bob] gpu_memory_fraction: {message}"


def test_gpu_fractions_on_one_gpu_must_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    base = HEAD + """
[workers.a]
device = "cuda"
gpu_memory_fraction = 0.6
[workers.b]
device = "cuda:1"
gpu_memory_fraction = 0.6
[workers.c]
device = "cuda:0"
"""
    assert len(load_config(write(tmp_path, base + "gpu_memory_fraction = 0.4\n")).workers) == 3
    assert error(tmp_path, base + "gpu_memory_fraction = 0.5\n") == (
        "[workers] gpu_memory_fraction: fractions on cuda:0 add up to 1.1 (a 0.6, c 0.5); they must not exceed 1"
    )
    # float error must not refuse fractions that add up to exactly 1 (this sum is 1.0000000000000002)
    exact = HEAD + "".join(
        f"[workers.w{i}]\ndevice = 'cuda'\ngpu_memory_fraction = {f}\n" for i, f in enumerate([0.2, 0.4, 0.3, 0.1])
    )
    assert len(load_config(write(tmp_path, exact)).workers) == 4


def test_cuda_device_count_in_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 1)
    assert error(tmp_path, HEAD + "[workers.bob]\ndevice = 'cuda:1'\n") == (
        "[workers.bob] device: cuda:1 not available (this machine has 1 CUDA device)"
    )
    gpus(monkeypatch, 2)
    assert load_config(write(tmp_path, HEAD + "[workers.bob]\ndevice = 'cuda:1'\n")).workers[0].device == "cuda:1"
    assert error(tmp_path, HEAD + "[workers.bob]\ndevice = 'cuda:2'\n") == (
        "[workers.bob] device: cuda:2 not available (this machine has 2 CUDA devices)"
    )


@pytest.mark.parametrize(
    "item, message",
    [
        ('x = "a.pt"', "[workers.h.data.x]: expected a table such as { path = \"x.pt\", tags = [\"#x\"] }, "
         "got a string ('a.pt')"),
        ('x = { path = "a.pt", tags = ["#a"], tag = "#b" }',
         "[workers.h.data.x] tag: unknown key (expected one of: description, path, tags)"),
        ('x = { tags = ["#a"] }', '[workers.h.data.x] path: missing (e.g. path = "data/xray.pt")'),
        ('x = { path = 3, tags = ["#a"] }', "[workers.h.data.x] path: expected a string, got an integer (3)"),
        ('x = { path = "a.pt" }', '[workers.h.data.x] tags: missing (e.g. tags = ["#xray", "#train"])'),
        ('x = { path = "a.pt", tags = "#a" }', "[workers.h.data.x] tags: expected an array of strings, got a string ('#a')"),
        ('x = { path = "a.pt", tags = [] }',
         '[workers.h.data.x] tags: give at least one tag, e.g. ["#xray"]: tags are how the data is found'),
        ('x = { path = "a.pt", tags = ["xray"] }',
         "[workers.h.data.x] tags: tag 'xray' must be '#' followed by text without spaces, e.g. '#xray'"),
        ('x = { path = "a.pt", tags = ["#"] }',
         "[workers.h.data.x] tags: tag '#' must be '#' followed by text without spaces, e.g. '#xray'"),
        ('x = { path = "a.pt", tags = ["#a b"] }',
         "[workers.h.data.x] tags: tag '#a b' must be '#' followed by text without spaces, e.g. '#xray'"),
        ('x = { path = "a.pt", tags = [1] }', "[workers.h.data.x] tags: expected a string, got an integer (1)"),
        ('x = { path = "a.pt", tags = ["#a", "#b", "#a"] }', "[workers.h.data.x] tags: tag '#a' listed twice"),
        ('x = { path = "a.pt", tags = ["#a"], description = 1 }',
         "[workers.h.data.x] description: expected a string, got an integer (1)"),
        ('"x y" = { path = "a.pt" }', '[workers.h.data."x y"] tags: missing (e.g. tags = ["#xray", "#train"])'),
    ],
)
def test_data_refusals(tmp_path: Path, item: str, message: str) -> None:
    (tmp_path / "a.pt").write_bytes(b"")
    assert error(tmp_path, HEAD + f"[workers.h.data]\n{item}\n") == message


def test_data_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    text = HEAD + '[workers.h.data]\nx = { path = "missing/x.pt", tags = ["#x"] }\n'
    assert error(tmp_path, text) == f"[workers.h.data.x] path: file not found: {tmp_path / 'missing' / 'x.pt'}"
    text = HEAD + '[workers.h.data]\nx = { path = "sub", tags = ["#x"] }\n'
    assert error(tmp_path, text) == f"[workers.h.data.x] path: not a file: {tmp_path / 'sub'}"
    assert error(tmp_path, HEAD + "[workers.h]\ndata = [1]\n") == (
        "[workers.h.data]: expected a table of data items, got an array"
    )


# --- TOML-level errors --------------------------------------------------------------


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    assert error(tmp_path, HEAD + "[workers.bob]\nthreads =\n") == "line 4: invalid TOML: invalid value (column 10)"
    assert error(tmp_path, HEAD + 'x = "abc') == "end of file: invalid TOML: unterminated string"


def test_duplicate_worker_is_refused_with_line(tmp_path: Path) -> None:
    text = HEAD + "[workers.bob]\nthreads = 1\n\n[workers.bob]\ndevice = 'cpu'\n"
    assert error(tmp_path, text) == "line 6: [workers.bob] is declared twice (worker names must be unique)"
    text = HEAD + "[workers]\nbob = { threads = 1 }\n[workers.bob]\n"
    assert error(tmp_path, text) == "line 5: [workers.bob] is declared twice (worker names must be unique)"
    assert error(tmp_path, HEAD + "[simulation]\n") == "line 3: [simulation] is declared twice"


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}: cannot read config: No such file or directory"
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b'name = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert str(info.value) == f"{binary}: byte 8: not UTF-8 text (TOML files are UTF-8)"


# --- device = "cuda:*" --------------------------------------------------------------


def test_all_gpus_expands_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 3)
    text = HEAD + """seed = 100
[workers.first]
[workers.gpu]
device = "cuda:*"
threads = 2
gpu_memory_fraction = 0.5
[workers.last]
device = "cuda:0"
gpu_memory_fraction = 0.5
"""
    sim = load_config(write(tmp_path, text))
    assert [(w.name, w.device, w.seed) for w in sim.workers] == [
        ("first", "cpu", 100), ("gpu0", "cuda:0", 101), ("gpu1", "cuda:1", 102),
        ("gpu2", "cuda:2", 103), ("last", "cuda:0", 104),
    ]  # fmt: skip
    assert {(w.threads, w.gpu_memory_fraction) for w in sim.workers[1:4]} == {(2, 0.5)}
    # the template's fraction counts once per GPU: 0.5 + 0.5 on cuda:0 fits, 0.6 would not
    greedy = text.replace('device = "cuda:0"\ngpu_memory_fraction = 0.5', 'device = "cuda:0"\ngpu_memory_fraction = 0.6')
    assert error(tmp_path, greedy) == (
        "[workers] gpu_memory_fraction: fractions on cuda:0 add up to 1.1 (gpu0 0.5, last 0.6); they must not exceed 1"
    )


def test_all_gpus_without_gpu(tmp_path: Path) -> None:
    assert error(tmp_path, HEAD + "[workers.gpu]\ndevice = 'cuda:*'\n") == (
        "[workers.gpu] device: 'cuda:*' needs at least one CUDA device (this machine has 0 CUDA devices)"
    )


def test_all_gpus_name_clashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    assert error(tmp_path, HEAD + "[workers.gpu1]\n[workers.gpu]\ndevice = 'cuda:*'\n") == (
        "[workers.gpu] device: 'cuda:*' names a worker 'gpu1', which [workers.gpu1] also names"
    )
    assert error(tmp_path, HEAD + "[workers.gpu]\ndevice = 'cuda:*'\n[workers.gpu0]\n") == (
        "[workers.gpu0] device: 'cuda:*' names a worker 'gpu0', which [workers.gpu] also names"
    )
    long = "g" * 64
    assert error(tmp_path, HEAD + f"[workers.{long}]\ndevice = 'cuda:*'\n") == (
        f"[workers.{long}] device: 'cuda:*' cannot name worker 0: invalid worker name '{long}0': {RULE}"
    )


# --- shipped configs and the data script ---------------------------------------------


def test_shipped_default() -> None:
    sim = load_config(REPO / "configs" / "default.toml")
    assert sim.name == "default" and sim.seed is None
    assert sim.workers == (WorkerConfig("bob"), WorkerConfig("alice"))


def test_shipped_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    sim = load_config(REPO / "configs" / "gpu.toml")
    assert [(w.name, w.device, w.seed) for w in sim.workers] == [("gpu0", "cuda:0", 0), ("gpu1", "cuda:1", 1)]
    gpus(monkeypatch, 0)
    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs" / "gpu.toml")
    assert str(info.value) == (
        f"{REPO / 'configs' / 'gpu.toml'}: [workers.gpu] device: "
        "'cuda:*' needs at least one CUDA device (this machine has 0 CUDA devices)"
    )


def _data_script():  # examples/ is not a package
    spec = importlib.util.spec_from_file_location("make_hospital_data", REPO / "examples" / "make_hospital_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_three_hospitals(tmp_path: Path) -> None:
    # Same layout as the repo (configs/ beside data/hospitals/), so the shipped relative paths are tested.
    (tmp_path / "configs").mkdir()
    config = shutil.copy(REPO / "configs" / "three_hospitals.toml", tmp_path / "configs")
    message = f"[workers.hospital_a.data.data] path: file not found: {tmp_path / 'data/hospitals/hospital_a_data.pt'}"
    with pytest.raises(ConfigError, match=f"^{config}: " + message.replace("[", r"\[").replace("]", r"\]")):
        load_config(config)
    _data_script().make_shards(tmp_path / "data" / "hospitals", seed=0)
    sim = load_config(config)
    assert [w.name for w in sim.workers] == ["hospital_a", "hospital_b", "hospital_c"]
    assert {w.device for w in sim.workers} == {"cpu"} and [w.seed for w in sim.workers] == [0, 1, 2]
    for worker in sim.workers:
        data, target = worker.data
        assert (data.key, data.tags, target.key, target.tags) == ("data", ("#data", "#train"), "target", ("#target", "#train"))
        x, y = torch.load(data.path), torch.load(target.path)
        assert x.shape == (200, 8) and x.dtype == torch.float32
        assert y.shape == (200,) and y.dtype == torch.int64 and set(y.tolist()) == {0, 1}


def test_data_script_is_deterministic(tmp_path: Path) -> None:
    script = _data_script()
    first = script.make_shards(tmp_path / "a", seed=3, samples=50)
    again = script.make_shards(tmp_path / "b", seed=3, samples=50)
    other = script.make_shards(tmp_path / "c", seed=4, samples=50)
    assert [p.name for p in first] == [
        f"hospital_{h}_{kind}.pt" for h in "abc" for kind in ("data", "target")
    ]
    for a, b, c in zip(first, again, other):
        assert torch.equal(torch.load(a), torch.load(b))
        assert not torch.equal(torch.load(a), torch.load(c))
    # hospitals differ from each other (non-IID shards), not copies
    assert not torch.allclose(torch.load(first[0]).mean(0), torch.load(first[2]).mean(0), atol=0.3)
