"""PySyft 0.2 tutorial, Part 10: "Federated Learning with Secure Aggregation", on simsyft.

The notebook's cells with `import simsyft as sy` for `import syft as sy`. Its Boston Housing
pickle is replaced by an added cell building a synthetic dataset of the same shape (13
standardised features, a linear target plus noise): nothing is downloaded. Section 1 trains
normally; Section 2 trains a model per worker and averages them with secure aggregation: each
worker encodes its parameters in fixed precision and splits them into shares on its own
process, the shares go worker to worker to bob and alice, the shared parameters are added,
and only the sum is decrypted (`.get().float_precision()/2`). james deals no triples here
(additions need none) but is the crypto provider, as in the notebook. The epochs are fewer
(changed, marked). A last added cell prints the averaged model's first weights and the plain
average of the two models', so a test can check that they agree.

    python examples/tutorial_part10.py
"""

from notebook import run_cells

CELLS = [
    """
import pickle

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import TensorDataset, DataLoader

class Parser:
    \"\"\"Parameters for training\"\"\"
    def __init__(self):
        self.epochs = 2  # changed: the notebook runs 10
        self.lr = 0.001
        self.test_batch_size = 8
        self.batch_size = 8
        self.log_interval = 10
        self.seed = 1

args = Parser()

torch.manual_seed(args.seed)
kwargs = {}
""",
    """
# added: a synthetic Boston-Housing-shaped set stands in for '../data/BostonHousing/boston_housing.pickle'
def boston_like(n):
    X = torch.randn(n, 13) * 3 + 5
    X[:, 3] = (torch.rand(n) > 0.9).float()  # column 3 is binary, as in Boston Housing
    y = X @ torch.linspace(-1, 1, 13) + 22.0 + torch.randn(n)
    return X.numpy(), y.numpy()
((X, y), (X_test, y_test)) = (boston_like(96), boston_like(32))
""",
    """
X = torch.from_numpy(X).float()
y = torch.from_numpy(y).float()
X_test = torch.from_numpy(X_test).float()
y_test = torch.from_numpy(y_test).float()
# preprocessing
mean = X.mean(0, keepdim=True)
dev = X.std(0, keepdim=True)
mean[:, 3] = 0. # the feature at column 3 is binary,
dev[:, 3] = 1.  # so we don't standardize it
X = (X - mean) / dev
X_test = (X_test - mean) / dev
train = TensorDataset(X, y)
test = TensorDataset(X_test, y_test)
train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, **kwargs)
test_loader = DataLoader(test, batch_size=args.test_batch_size, shuffle=True, **kwargs)
""",
    """
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(13, 32)
        self.fc2 = nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 1)

    def forward(self, x):
        x = x.view(-1, 13)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x

model = Net()
optimizer = optim.SGD(model.parameters(), lr=args.lr)
""",
    """
import simsyft as sy

hook = sy.TorchHook(torch)
bob = sy.VirtualWorker(hook, id="bob")
alice = sy.VirtualWorker(hook, id="alice")
james = sy.VirtualWorker(hook, id="james")

compute_nodes = [bob, alice]
""",
    """
train_distributed_dataset = []

for batch_idx, (data,target) in enumerate(train_loader):
    data = data.send(compute_nodes[batch_idx % len(compute_nodes)])
    target = target.send(compute_nodes[batch_idx % len(compute_nodes)])
    train_distributed_dataset.append((data, target))
""",
    """
def train(epoch):
    model.train()
    for batch_idx, (data,target) in enumerate(train_distributed_dataset):
        worker = data.location
        model.send(worker)

        optimizer.zero_grad()
        # update the model
        pred = model(data)
        loss = F.mse_loss(pred.view(-1), target)
        loss.backward()
        optimizer.step()
        model.get()

        if batch_idx % args.log_interval == 0:
            loss = loss.get()
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\\tLoss: {:.6f}'.format(
                epoch, batch_idx * data.shape[0], len(train_loader) * data.shape[0],
                       100. * batch_idx / len(train_loader), loss.item()))
""",
    """
def test():
    model.eval()
    test_loss = 0
    for data, target in test_loader:
        output = model(data)
        test_loss += F.mse_loss(output.view(-1), target, reduction='sum').item() # sum up batch loss

    test_loss /= len(test_loader.dataset)
    print('\\nTest set: Average loss: {:.4f}\\n'.format(test_loss))
""",
    "import time",
    """
t = time.time()

for epoch in range(1, args.epochs + 1):
    train(epoch)


total_time = time.time() - t
print('Total', round(total_time, 2), 's')
""",
    "test()",
    """
remote_dataset = (list(),list())

train_distributed_dataset = []

for batch_idx, (data,target) in enumerate(train_loader):
    data = data.send(compute_nodes[batch_idx % len(compute_nodes)])
    target = target.send(compute_nodes[batch_idx % len(compute_nodes)])
    remote_dataset[batch_idx % len(compute_nodes)].append((data, target))

def update(data, target, model, optimizer):
    model.send(data.location)
    optimizer.zero_grad()
    pred = model(data)
    loss = F.mse_loss(pred.view(-1), target)
    loss.backward()
    optimizer.step()
    return model

bobs_model = Net()
alices_model = Net()

bobs_optimizer = optim.SGD(bobs_model.parameters(), lr=args.lr)
alices_optimizer = optim.SGD(alices_model.parameters(), lr=args.lr)

models = [bobs_model, alices_model]
params = [list(bobs_model.parameters()), list(alices_model.parameters())]
optimizers = [bobs_optimizer, alices_optimizer]
""",
    """
# this is selecting which batch to train on
data_index = 0
# update remote models
# we could iterate this multiple times before proceeding, but we're only iterating once per worker here
for remote_index in range(len(compute_nodes)):
    data, target = remote_dataset[remote_index][data_index]
    models[remote_index] = update(data, target, models[remote_index], optimizers[remote_index])
""",
    """
# create a list where we'll deposit our encrypted model average
new_params = list()
""",
    """
# iterate through each parameter
for param_i in range(len(params[0])):

    # for each worker
    spdz_params = list()
    for remote_index in range(len(compute_nodes)):

        # select the identical parameter from each worker and copy it
        copy_of_parameter = params[remote_index][param_i].copy()

        # since SMPC can only work with integers (not floats), we need
        # to use Integers to store decimal information. In other words,
        # we need to use "Fixed Precision" encoding.
        fixed_precision_param = copy_of_parameter.fix_precision()

        # now we encrypt it on the remote machine. Note that
        # fixed_precision_param is ALREADY a pointer. Thus, when
        # we call share, it actually encrypts the data that the
        # data is pointing TO. This returns a POINTER to the
        # MPC secret shared object, which we need to fetch.
        encrypted_param = fixed_precision_param.share(bob, alice, crypto_provider=james)

        # now we fetch the pointer to the MPC shared value
        param = encrypted_param.get()

        # save the parameter so we can average it with the same parameter
        # from the other workers
        spdz_params.append(param)

    # average params from multiple workers, fetch them to the local machine
    # decrypt and decode (from fixed precision) back into a floating point number
    new_param = (spdz_params[0] + spdz_params[1]).get().float_precision()/2

    # save the new averaged parameter
    new_params.append(new_param)
""",
    """
# added: the plain average of the two trained models, to compare with the secure one
plain_average = [(params[0][i].copy().get() + params[1][i].copy().get()) / 2 for i in range(len(params[0]))]
""",
    """
with torch.no_grad():
    for model in params:
        for param in model:
            param *= 0

    for model in models:
        model.get()

    for remote_index in range(len(compute_nodes)):
        for param_index in range(len(params[remote_index])):
            params[remote_index][param_index].set_(new_params[param_index])
""",
    """
def train(epoch):
    for data_index in range(len(remote_dataset[0])-1):
        # update remote models
        for remote_index in range(len(compute_nodes)):
            data, target = remote_dataset[remote_index][data_index]
            models[remote_index] = update(data, target, models[remote_index], optimizers[remote_index])

        # encrypted aggregation
        new_params = list()
        for param_i in range(len(params[0])):
            spdz_params = list()
            for remote_index in range(len(compute_nodes)):
                spdz_params.append(params[remote_index][param_i].copy().get().fix_precision().share(bob, alice, crypto_provider=james))

            new_param = (spdz_params[0] + spdz_params[1]).get().float_precision()/2
            new_params.append(new_param)

        # cleanup
        with torch.no_grad():
            for model in params:
                for param in model:
                    param *= 0

            for model in models:
                model.get()

            for remote_index in range(len(compute_nodes)):
                for param_index in range(len(params[remote_index])):
                    params[remote_index][param_index].set_(new_params[param_index])
""",
    """
def test():
    models[0].eval()
    test_loss = 0
    for data, target in test_loader:
        output = models[0](data)
        test_loss += F.mse_loss(output.view(-1), target, reduction='sum').item() # sum up batch loss

    test_loss /= len(test_loader.dataset)
    print('Test set: Average loss: {:.4f}\\n'.format(test_loss))
""",
    """
t = time.time()

for epoch in range(args.epochs):
    print(f"Epoch {epoch + 1}")
    train(epoch)
    test()


total_time = time.time() - t
print('Total', round(total_time, 2), 's')
""",
    """
# added: the first averaged weights, secure and plain (the fixed-point error is at most 1e-3)
print("secure:", [round(v, 4) for v in new_params[0].flatten()[:5].tolist()])
print("plain: ", [round(v, 4) for v in plain_average[0].flatten()[:5].tolist()])
max_error = max((s - p).abs().max().item() for s, p in zip(new_params, plain_average))
print("max |secure - plain| over all parameters:", max_error)
""",
]

if __name__ == "__main__":
    run_cells(CELLS)
