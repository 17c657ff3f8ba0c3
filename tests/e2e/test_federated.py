"""Federated datasets on worker processes: BaseDataset send/get, tags, federate, the loader, Optims."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

import simsyft as sy
from simsyft.federated import PointerDataset, search_datasets
from simsyft.federated.floptimizer import Optims


@pytest.fixture
def workers(process_bob, process_alice):
    """bob and alice as worker processes, with empty stores before and after the test."""
    for worker in (process_bob, process_alice):
        worker.clear_objects()
    yield process_bob, process_alice
    for worker in (process_bob, process_alice):
        worker.clear_objects()


def toy(n: int = 10, width: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n * width, dtype=torch.float32).view(n, width), torch.arange(n) * 10


# -- BaseDataset -------------------------------------------------------------------------

def test_local_dataset_len_items_and_transforms():
    x, y = toy()
    ds = sy.BaseDataset(x, y, transform=lambda a: a * 2)  # PySyft hands the transform a numpy array
    assert len(ds) == 10
    data, target = ds[3]
    assert torch.equal(data, x[3] * 2) and target == 30
    plain = sy.BaseDataset(x.clone(), y)
    plain.transform(lambda t: t + 1)
    assert torch.equal(plain.data, x + 1)
    with pytest.raises(ValueError, match="10 data points but 9 targets"):
        sy.BaseDataset(x, y[:9])


def test_send_gives_a_pointer_dataset_and_get_brings_it_home(workers):
    bob, _ = workers
    x, y = toy()
    ptr = sy.BaseDataset(x, y).send(bob)
    assert isinstance(ptr, PointerDataset) and ptr.location is bob
    assert bob.object_count() == 2 and len(ptr) == 10
    data, target = ptr[4]
    assert data.location is bob and torch.equal(data.get(), x[4]) and target.get() == 40
    assert repr(ptr).startswith(f"[PointerDataset | me:{ptr.id} -> bob:")
    local = ptr.get()
    assert type(local) is sy.BaseDataset
    assert torch.equal(local.data, x) and torch.equal(local.targets, y)
    assert bob.object_count() == 0
    with pytest.raises(sy.ObjectNotFoundError):
        ptr.data.get()


def test_dataset_of_pointers_gets_in_place(workers):
    bob, alice = workers
    x, y = toy()
    ds = sy.BaseDataset(x.send(bob), y.send(bob))
    assert ds.location is bob and len(ds) == 10
    assert ds.get() is ds and torch.equal(ds.data, x) and ds.location is None
    with pytest.raises(ValueError, match="data is on 'bob' but targets are on 'alice'"):
        sy.BaseDataset(x.send(bob), y.send(alice))
    with pytest.raises(ValueError, match="both be local or both be pointers"):
        sy.BaseDataset(x.send(bob), y)


def test_a_transform_that_cannot_run_on_the_worker_is_refused(workers):
    bob, _ = workers
    x, y = toy()
    with pytest.raises(TypeError, match="cannot run on worker 'bob'"):
        sy.BaseDataset(x, y, transform=lambda a: a).send(bob)
    assert bob.object_count() == 0  # refused before anything was sent
    remote = sy.BaseDataset(x.send(bob), y.send(bob), transform=lambda a: a)
    with pytest.raises(TypeError, match="cannot run on worker 'bob'"):
        remote[0]
    with pytest.raises(TypeError, match="cannot run on worker 'bob'"):
        sy.FederatedDataLoader(sy.FederatedDataset([remote]))
    with pytest.raises(TypeError, match="only on torch tensors"):
        remote.transform(lambda t: t)


def test_tags_description_and_search(workers):
    bob, alice = workers
    x, y = toy()
    ds = sy.BaseDataset(x, y).tag("#toy", "#train").describe("ten rows\nmore")
    ptr, again = ds.send(bob), ds.send(bob)  # the same dataset twice: two datasets on bob
    del again
    sy.BaseDataset(x + 1, y + 1).tag("#toy").send(bob)  # a second one; the pointer is dropped
    assert bob.object_count() == 2  # ... and with it that dataset's data
    assert "\tTags: #toy #train \n\tShape: (10, 3)\n\tDescription: ten rows..." in repr(ptr)
    found = bob.search("#toy", "#data")
    assert len(found) == 1 and torch.equal(found[0].copy().get(), x)
    datasets = search_datasets([bob, alice], "#train")
    assert len(datasets) == 1
    assert datasets[0].tags == {"#toy", "#train"} and datasets[0].description == "ten rows\nmore"
    assert torch.equal(datasets[0].targets.copy().get(), y)
    assert search_datasets(alice, "#toy") == []
    del datasets, found
    assert bob.object_count() == 2  # what search found only observes
    with pytest.raises(ValueError, match="tag the dataset before sending it"):
        ptr.tag("#late")


# -- federate and FederatedDataset -----------------------------------------------------

def test_federate_splits_as_pysyft_and_keeps_the_data(workers):
    bob, alice = workers
    x, y = toy(9)
    fed = sy.BaseDataset(x, y).federate((bob, alice))
    assert fed.workers == ["bob", "alice"] and len(fed) == 9
    assert [len(fed[w]) for w in fed.workers] == [5, 4]  # ceil(9 / 2) first
    assert fed["bob"].data.location is bob and fed[alice].targets.location is alice
    assert "Distributed accross: bob, alice" in repr(fed) and "Number of datapoints: 9" in repr(fed)
    with pytest.raises(ValueError, match="get_dataset"):
        fed["bob"].get()
    part = fed.get_dataset("alice")
    assert torch.equal(part.data, x[5:]) and torch.equal(part.targets, y[5:])
    assert fed.workers == ["bob"] and alice.object_count() == 0
    with pytest.raises(KeyError, match="no dataset on worker 'alice'"):
        fed["alice"]


def test_federate_a_torch_dataset_through_the_hook(workers):
    bob, alice = workers
    x, y = toy(5)

    class Squares(torch.utils.data.Dataset):  # torchvision-style: data, targets, a transform
        data, targets = x, y

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            return self.data[i] ** 2, int(self.targets[i])

    fed = Squares().federate(bob, alice)  # installed on torch's Dataset by TorchHook
    assert [len(fed[w]) for w in fed.workers] == [3, 2]
    assert torch.equal(fed.get_dataset("bob").data, x[:3] ** 2)
    with pytest.raises(ValueError, match="two datasets on worker 'bob'"):  # PySyft kept only the last
        torch.utils.data.TensorDataset(x, y).federate([bob, alice, bob])
    with pytest.raises(ValueError, match="is not on a worker"):
        sy.FederatedDataset([sy.BaseDataset(x, y)])


# -- FederatedDataLoader -----------------------------------------------------------------

def batches(loader) -> list[tuple[str, list[int]]]:
    """(worker, target values) per batch; asserts each batch is on its worker and equals its rows."""
    out = []
    for data, target in loader:
        assert data.location is target.location
        rows, values = data.get(), target.get()
        assert torch.equal(rows, torch.stack([XS[v // 10] for v in values.tolist()]))
        out.append((data.location.id, values.tolist()))
    return out


XS, YS = toy(11)


def test_loader_order_batch_size_and_drop_last(workers):
    bob, alice = workers
    fed = sy.BaseDataset(XS, YS).federate((bob, alice))  # bob rows 0-5, alice rows 6-10
    loader = sy.FederatedDataLoader(fed, batch_size=4)
    got = batches(loader)
    assert got == [("bob", [0, 10, 20, 30]), ("bob", [40, 50]), ("alice", [60, 70, 80, 90]), ("alice", [100])]
    assert len(loader) == 4
    dropped = sy.FederatedDataLoader(fed, batch_size=4, drop_last=True)
    assert batches(dropped) == [("bob", [0, 10, 20, 30]), ("alice", [60, 70, 80, 90])] and len(dropped) == 2
    assert batches(loader) == got  # a new epoch starts over
    assert bob.object_count() == 2 and alice.object_count() == 2  # batches and indices were freed


def test_loader_shuffle_draws_the_permutations_pysyft_drew(workers):
    bob, alice = workers
    fed = sy.BaseDataset(XS, YS).federate((bob, alice))
    loader = sy.FederatedDataLoader(fed, batch_size=4, shuffle=True)
    torch.manual_seed(3)
    assert len(loader) == 4  # counts without drawing from the generator
    got = batches(loader)
    torch.manual_seed(3)  # PySyft: one RandomSampler per worker, drawn when its first batch is asked
    expected = [("bob", [int(YS[i]) for i in b]) for b in BatchSampler(RandomSampler(range(6)), 4, False)]
    expected += [("alice", [int(YS[6 + i]) for i in b]) for b in BatchSampler(RandomSampler(range(5)), 4, False)]
    assert got == expected
    assert sorted(v for _, values in got for v in values) == YS.tolist()


def test_loader_iter_per_worker_gives_a_dict_until_a_worker_runs_out(workers):
    bob, alice = workers
    fed = sy.BaseDataset(XS, YS).federate((bob, alice))
    loader = sy.FederatedDataLoader(fed, batch_size=2, iter_per_worker=True)
    steps = list(loader)
    assert len(steps) == len(loader) == 3  # alice's 5 rows make 3 batches, bob's 6 make 3
    assert [set(step) for step in steps] == [{bob, alice}] * 3
    assert [step[alice][1].get().tolist() for step in steps] == [[60, 70], [80, 90], [100]]
    assert steps[0][bob][0].location is bob


def test_loader_num_iterators_and_len(workers):
    bob, alice = workers
    x, y = toy(12)
    carol = sy.VirtualWorker(id="carol")
    fed = torch.utils.data.TensorDataset(x, y).federate((bob, alice, carol))
    try:
        loader = sy.FederatedDataLoader(fed, batch_size=3, num_iterators=5)
        assert loader.num_iterators == 2  # at most workers - 1
        steps = list(loader)
        assert len(steps) == len(loader)
        for step in steps:
            assert len(step) == 2 and all(d.location is w for w, (d, _) in step.items())
        assert len(sy.FederatedDataLoader(fed, batch_size=3)) == 6 == sum(1 for _ in sy.FederatedDataLoader(fed, 3))
    finally:
        del fed
        carol.shutdown()


def test_batches_are_cut_on_the_worker(workers):
    bob, _ = workers
    x = torch.randn(64, 512)  # 128 KiB on bob
    fed = sy.FederatedDataset([sy.BaseDataset(x, torch.zeros(64)).send(bob)])
    before = bob.traffic()
    data, target = next(iter(sy.FederatedDataLoader(fed, batch_size=32)))
    after = bob.traffic()
    assert data.location is bob and data.shape == (32, 512)
    sent = (after["bytes_sent"] + after["shm_bytes_sent"]) - (before["bytes_sent"] + before["shm_bytes_sent"])
    received = (after["bytes_received"] + after["shm_bytes_received"]
                - before["bytes_received"] - before["shm_bytes_received"])
    assert sent < 4096 and received < 4096  # the batch itself (64 KiB) never crossed
    assert torch.equal(data.get(), x[:32])


def test_loader_refuses_what_is_not_federated(workers):
    with pytest.raises(TypeError, match="not a FederatedDataset"):
        sy.FederatedDataLoader(sy.BaseDataset(*toy()))


def test_custom_collate_runs_on_the_pointers(workers):
    bob, alice = workers
    fed = sy.BaseDataset(XS, YS).federate((bob, alice))
    seen = []

    def collate(items):
        seen.append(len(items))
        return torch.stack([d for d, _ in items]), torch.stack([t for _, t in items])

    got = batches(sy.FederatedDataLoader(fed, batch_size=4, collate_fn=collate))
    assert got[0] == ("bob", [0, 10, 20, 30]) and seen == [4, 2, 4, 1]


# -- Optims ------------------------------------------------------------------------------

def test_optims_one_optimizer_per_worker(workers):
    bob, alice = workers
    model = torch.nn.Linear(3, 1)
    optims = Optims(["bob", "alice"], optim=torch.optim.Adam(params=model.parameters(), lr=0.1))
    assert optims.count() == 2
    assert optims.get_optim(bob) is optims.get_optim("bob") is not optims.get_optim("alice")
    x, y = toy(4)
    for worker in (bob, alice, bob):
        data, target = x.send(worker), y.float().send(worker)
        model.send(worker)
        opt = optims.get_optim(worker.id)
        opt.zero_grad()
        ((model(data).view(-1) - target) ** 2).mean().backward()
        opt.step()
        model.get()
    assert optims.get_optim("bob").state[model.weight]["step"] == 2
    assert optims.get_optim("alice").state[model.weight]["step"] == 1
    with pytest.raises(KeyError, match="no optimizer for worker 'carol'"):
        optims.get_optim("carol")
    assert math.isfinite(float(model.weight.detach().sum()))
