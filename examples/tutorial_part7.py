"""PySyft 0.2 tutorial, Part 7: "Federated Learning with FederatedDataset", on simsyft.

The notebook's cells with `import simsyft as sy` for `import syft as sy`. The notebook took
the Boston housing data from Part 5's sandbox (`sy.create_sandbox`, then `grid.search`); here
an added cell builds a small synthetic dataset of the same shape (13 features, one target),
tags it as the sandbox did and sends it to bob and alice, and the search asks each worker.
Nothing is downloaded. The training loop is the notebook's, unchanged: each batch is cut on
its worker, the model goes to `data.location`, and each worker has its own Adam optimizer.

    python examples/tutorial_part7.py
"""

from notebook import run_cells

CELLS = [
    "epochs = 10  # changed: the notebook runs 50; a few keep the run short",
    """
import torch as th
import simsyft as sy
hook = sy.TorchHook(th)  # added: these lines stand in for sy.create_sandbox(globals(), verbose=False)
bob = sy.VirtualWorker(hook, id="bob")
alice = sy.VirtualWorker(hook, id="alice")
th.manual_seed(0)
# a Boston-housing-shaped dataset: 13 standardised features, a linear target plus noise
features = th.randn(192, 13)
prices = features @ th.linspace(-1, 1, 13) + 3.0 + 0.1 * th.randn(192)
shards = []  # the owning pointers: the data lives as long as they do
for worker, rows in ((bob, slice(0, 96)), (alice, slice(96, 192))):
    shards.append(features[rows].tag("#boston", "#housing", "#data").send(worker))
    shards.append(prices[rows].tag("#boston", "#housing", "#target").send(worker))
""",
    """
# changed: grid.search over the sandbox's grid; here each worker is asked in turn
boston_data = {worker.id: worker.search("#boston", "#data") for worker in (bob, alice)}
boston_target = {worker.id: worker.search("#boston", "#target") for worker in (bob, alice)}
""",
    """
n_features = boston_data['alice'][0].shape[1]
n_targets = 1

model = th.nn.Linear(n_features, n_targets)
""",
    """
# Cast the result in BaseDatasets
datasets = []
for worker in boston_data.keys():
    dataset = sy.BaseDataset(boston_data[worker][0], boston_target[worker][0])
    datasets.append(dataset)

# Build the FederatedDataset object
dataset = sy.FederatedDataset(datasets)
print(dataset.workers)
optimizers = {}
for worker in dataset.workers:
    optimizers[worker] = th.optim.Adam(params=model.parameters(),lr=1e-2)
""",
    "train_loader = sy.FederatedDataLoader(dataset, batch_size=32, shuffle=False, drop_last=False)",
    """
for epoch in range(1, epochs + 1):
    loss_accum = 0
    for batch_idx, (data, target) in enumerate(train_loader):
        model.send(data.location)

        optimizer = optimizers[data.location.id]
        optimizer.zero_grad()
        pred = model(data)
        loss = ((pred.view(-1) - target)**2).mean()
        loss.backward()
        optimizer.step()

        model.get()
        loss = loss.get()

        loss_accum += float(loss)

        if batch_idx % 8 == 0:
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\\tBatch loss: {:.6f}'.format(
                epoch, batch_idx, len(train_loader),
                       100. * batch_idx / len(train_loader), loss.item()))

    print('Total loss', loss_accum)
""",
]


if __name__ == "__main__":
    run_cells(CELLS)
