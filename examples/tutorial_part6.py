"""PySyft 0.2 tutorial, Part 6: "Federated Learning on MNIST using a CNN", on simsyft.

The notebook's cells with `import simsyft as sy` for `import syft as sy`. torchvision's MNIST
is replaced by an added cell defining `datasets.MNIST` and `transforms` stand-ins: a small
synthetic MNIST-shaped dataset (28x28 uint8 images of ten noisy class patterns) built on the
spot, so nothing is downloaded and the notebook's data cell runs unchanged. `.federate((bob,
alice))` splits it between the two worker processes; every batch is cut on its worker.
Marked changes keep the run to seconds: fewer images, three epochs, a larger learning rate.

    python examples/tutorial_part6.py
"""

from notebook import run_cells

CELLS = [
    """
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
""",
    '''
# added: stand-ins for `from torchvision import datasets, transforms` (not installed, nothing downloaded)
import types

class MNIST(torch.utils.data.Dataset):
    """torchvision's MNIST surface (data, targets, transform) over synthetic images."""

    def __init__(self, root, train=True, download=False, transform=None):
        size = 640 if train else 320
        patterns = torch.Generator().manual_seed(7)  # the same ten class patterns for both splits
        templates = (torch.rand(10, 28, 28, generator=patterns) > 0.75).float() * 200
        noise = torch.Generator().manual_seed(0 if train else 1)
        self.targets = torch.randint(0, 10, (size,), generator=noise)
        images = templates[self.targets] + 60 * torch.rand(size, 28, 28, generator=noise)
        self.data = images.clamp(0, 255).to(torch.uint8)
        self.transform = transform

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        return (self.transform(img) if self.transform else img), target

class Compose:
    def __init__(self, steps):
        self.steps = steps

    def __call__(self, img):
        for step in self.steps:
            img = step(img)
        return img

class ToTensor:
    def __call__(self, img):  # HxW uint8 -> 1xHxW float in [0, 1]
        return img.float().div(255).unsqueeze(0)

class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = mean[0], std[0]

    def __call__(self, img):
        return (img - self.mean) / self.std

datasets = types.SimpleNamespace(MNIST=MNIST)
transforms = types.SimpleNamespace(Compose=Compose, ToTensor=ToTensor, Normalize=Normalize)
''',
    """
import simsyft as sy  # <-- NEW: import the Pysyft library
hook = sy.TorchHook(torch)  # <-- NEW: hook PyTorch ie add extra functionalities to support Federated Learning
bob = sy.VirtualWorker(hook, id="bob")  # <-- NEW: define remote worker bob
alice = sy.VirtualWorker(hook, id="alice")  # <-- NEW: and alice
""",
    """
class Arguments():
    def __init__(self):
        self.batch_size = 64
        self.test_batch_size = 1000
        self.epochs = 3  # changed: 10 in the notebook
        self.lr = 0.05  # changed: 0.01 in the notebook, which needs far more data to move
        self.momentum = 0.5
        self.no_cuda = True  # changed: the workers keep this data on the CPU
        self.seed = 1
        self.log_interval = 5  # changed: 30 in the notebook; an epoch here has 10 batches
        self.save_model = False

args = Arguments()

use_cuda = not args.no_cuda and torch.cuda.is_available()

torch.manual_seed(args.seed)

device = torch.device("cuda" if use_cuda else "cpu")

kwargs = {'num_workers': 1, 'pin_memory': True} if use_cuda else {}
""",
    """
federated_train_loader = sy.FederatedDataLoader( # <-- this is now a FederatedDataLoader
    datasets.MNIST('../data', train=True, download=True,
                   transform=transforms.Compose([
                       transforms.ToTensor(),
                       transforms.Normalize((0.1307,), (0.3081,))
                   ]))
    .federate((bob, alice)), # <-- NEW: we distribute the dataset across all the workers, it's now a FederatedDataset
    batch_size=args.batch_size, shuffle=True, **kwargs)

test_loader = torch.utils.data.DataLoader(
    datasets.MNIST('../data', train=False, transform=transforms.Compose([
                       transforms.ToTensor(),
                       transforms.Normalize((0.1307,), (0.3081,))
                   ])),
    batch_size=args.test_batch_size, shuffle=True, **kwargs)
""",
    """
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4*4*50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4*4*50)
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)
""",
    """
def train(args, model, device, federated_train_loader, optimizer, epoch):
    model.train()
    for batch_idx, (data, target) in enumerate(federated_train_loader): # <-- now it is a distributed dataset
        model.send(data.location) # <-- NEW: send the model to the right location
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        model.get() # <-- NEW: get the model back
        if batch_idx % args.log_interval == 0:
            loss = loss.get() # <-- NEW: get the loss back
            print('Train Epoch: {} [{}/{} ({:.0f}%)]\\tLoss: {:.6f}'.format(
                epoch, batch_idx * args.batch_size, len(federated_train_loader) * args.batch_size,
                100. * batch_idx / len(federated_train_loader), loss.item()))
""",
    """
def test(args, model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction='sum').item() # sum up batch loss
            pred = output.argmax(1, keepdim=True) # get the index of the max log-probability
            correct += pred.eq(target.view_as(pred)).sum().item()

    test_loss /= len(test_loader.dataset)

    print('\\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\\n'.format(
        test_loss, correct, len(test_loader.dataset),
        100. * correct / len(test_loader.dataset)))
""",
    """
model = Net().to(device)
optimizer = optim.SGD(model.parameters(), lr=args.lr) # TODO momentum is not supported at the moment

for epoch in range(1, args.epochs + 1):
    train(args, model, device, federated_train_loader, optimizer, epoch)
    test(args, model, device, test_loader)

if (args.save_model):
    torch.save(model.state_dict(), "mnist_cnn.pt")
""",
]


if __name__ == "__main__":
    run_cells(CELLS)
