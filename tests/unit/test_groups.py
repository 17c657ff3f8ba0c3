"""Worker groups (`[workers.X] count = N`), `{i}`, `cpus = "spread"`, `[simulation] start`,
`sim.group`, and the folded status table; no processes (the inprocess backend)."""

from __future__ import annotations

import psutil
import pytest
import torch

import simsyft as sy
from simsyft.cli import format_status
from simsyft.config import GROUP_MAX, SimulationConfig, WorkerConfig, parse_config
from simsyft.errors import ConfigError


def config(workers: dict, **simulation) -> SimulationConfig:
    return parse_config({"simulation": {"name": "g", **simulation}, "workers": workers}, source="g.toml")


def test_count_makes_indexed_workers_with_the_same_settings():
    cfg = config({"bob": {}, "client": {"count": 3, "threads": 2}})
    assert [w.name for w in cfg.workers] == ["bob", "client_0", "client_1", "client_2"]
    assert [w.group for w in cfg.workers] == [None, "client", "client", "client"]
    assert {w.threads for w in cfg.group("client")} == {2}
    assert cfg.worker("bob").threads == 1


def test_index_replaces_braces_i_in_every_string_of_a_group_only(tmp_path):
    for i in range(2):
        torch.save(torch.full((2,), float(i)), tmp_path / f"shard_{i}.pt")
    torch.save(torch.ones(1), tmp_path / "shard_{i}.pt")  # a single worker keeps "{i}" as it is
    cfg = parse_config({"simulation": {"name": "g"}, "workers": {
        "client": {"count": 2, "data": {"shard": {"path": "shard_{i}.pt", "tags": ["#train", "#c{i}"],
                                                  "description": "shard {i} of 2"}}},
        "solo": {"data": {"shard": {"path": "shard_{i}.pt", "tags": ["#solo"]}}},
    }}, base_dir=tmp_path)
    first, second, solo = cfg.workers
    assert first.data[0].path == str(tmp_path / "shard_0.pt") and second.data[0].path == str(tmp_path / "shard_1.pt")
    assert first.data[0].tags == ("#train", "#c0") and second.data[0].tags == ("#train", "#c1")
    assert second.data[0].description == "shard 1 of 2"
    assert solo.data[0].path == str(tmp_path / "shard_{i}.pt")


def test_missing_shard_names_the_group_and_the_indexed_file(tmp_path):
    torch.save(torch.ones(1), tmp_path / "shard_0.pt")
    with pytest.raises(ConfigError) as err:
        parse_config({"simulation": {"name": "g"}, "workers": {
            "client": {"count": 2, "data": {"shard": {"path": "shard_{i}.pt", "tags": ["#t"]}}}}},
            source="g.toml", base_dir=tmp_path)
    assert str(err.value) == f"g.toml: [workers.client.data.shard] path: file not found: {tmp_path / 'shard_1.pt'}"


def test_spread_gives_one_cpu_each_round_robin_across_tables():
    available = sorted(psutil.Process().cpu_affinity())
    cfg = config({"client": {"count": 5, "cpus": "spread"}, "pinned": {"cpus": [available[0]]},
                  "extra": {"cpus": "spread"}})
    spread = [w.cpus for w in cfg.workers if w.name != "pinned"]
    assert spread == [(available[i % len(available)],) for i in range(6)]
    assert cfg.worker("pinned").cpus == (available[0],)


def test_seed_counts_over_group_members_in_order():
    cfg = config({"a": {}, "client": {"count": 3}}, seed=10)
    assert [w.seed for w in cfg.workers] == [10, 11, 12, 13]
    assert all(w.group == "client" for w in cfg.workers[1:])  # replacing the seed keeps the group


def test_group_config_crosses_to_a_worker_as_json():
    worker = config({"client": {"count": 1}}).workers[0]
    assert WorkerConfig.from_dict(worker.to_dict()) == worker and worker.group == "client"


@pytest.mark.parametrize("workers, message", [
    ({"client": {"count": 0}}, f"g.toml: [workers.client] count: must be from 1 to {GROUP_MAX}, got 0"),
    ({"client": {"count": GROUP_MAX + 1}},
     f"g.toml: [workers.client] count: must be from 1 to {GROUP_MAX}, got {GROUP_MAX + 1}"),
    ({"client": {"count": "3"}}, "g.toml: [workers.client] count: expected an integer, got a string ('3')"),
    ({"client": {"count": 2}, "client_1": {}},
     "g.toml: [workers.client_1]: [workers.client] count already names a worker 'client_1'; rename one of them"),
    ({"client_1": {}, "client": {"count": 2}},
     "g.toml: [workers.client] count: names a worker 'client_1' (client_<index>), which [workers.client_1] also names"),
    ({"client": {"count": 2, "device": "cuda:*"}},
     "g.toml: [workers.client] device: 'cuda:*' cannot be combined with count "
     '(use device = "cuda:{i}" to give worker i GPU i)'),
    ({"c" * 63: {"count": 2}},
     f"g.toml: [workers.{'c' * 63}] count: cannot name worker 0: invalid worker name '{'c' * 63}_0': use letters, "
     "digits, '_' and '-', starting with a letter or '_' (at most 64 characters)"),
])
def test_group_errors(workers, message):
    with pytest.raises(ConfigError) as err:
        config(workers)
    assert str(err.value) == message


def test_start_key():
    assert config({"bob": {}}).start is None
    assert config({"bob": {}}, start="spawn").start == "spawn"
    with pytest.raises(ConfigError) as err:
        config({"bob": {}}, start="thread")
    assert str(err.value).startswith("g.toml: [simulation] start: 'thread' is not a way to start workers")
    with pytest.raises(ConfigError) as err:
        config({"bob": {}}, start="fork", backend="inprocess")
    assert str(err.value) == ("g.toml: [simulation] start: only the local backend starts worker processes "
                              "(backend is 'inprocess')")


def test_sim_group_returns_handles_in_index_order_even_after_a_restart():
    hook = sy.TorchHook(torch)
    with sy.launch(config({"bob": {}, "client": {"count": 12}}, backend="inprocess")) as sim:
        sim.restart("client_2")  # moves client_2 to the end of the backend's names
        clients = sim.group("client")
        assert [c.id for c in clients] == [f"client_{i}" for i in range(12)]
        assert clients[3] is sim["client_3"]
        assert torch.equal((torch.ones(2).send(clients[11]) * 2).get(), torch.full((2,), 2.0))
        with pytest.raises(KeyError, match=r"no group 'server' \(groups: client\)"):
            sim.group("server")
    assert hook is not None


def test_status_folds_a_group_into_one_line_unless_all():
    status = {"bob": {"name": "bob", "state": "running", "pid": 7, "device": "cpu", "cpus": [0], "rss": 2**20,
                      "uss": 2**19, "objects": 1, "bytes": 0, "messages_in": 1, "messages_out": 1, "uptime": 3}}
    for i in range(3):
        status[f"client_{i}"] = {"name": f"client_{i}", "group": "client", "pid": 10 + i, "device": "cpu",
                                 "cpus": [i % 2], "rss": 100 * 2**20, "uss": 10 * 2**20, "objects": i,
                                 "bytes": 1024, "messages_in": 2, "messages_out": 2, "uptime": 5 + i,
                                 "state": "running" if i else "exited (-9)"}
    folded = format_status("g", status).splitlines()
    assert len(folded) == 4  # title, header, bob, the group
    line = folded[3]
    assert line.startswith("client [3]")
    assert "exited (-9) 1, running 2" in line
    assert "300.0 MiB" in line and "30.0 MiB" in line and "3.0 KiB" in line and "6/6" in line and "7s" in line
    every = format_status("g", status, fold=False).splitlines()
    assert len(every) == 6 and every[3].startswith("client_0") and "exited (-9)" in every[3]
