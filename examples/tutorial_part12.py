"""PySyft 0.2 tutorial, Part 12: "Train an Encrypted NN on Encrypted Data", on simsyft.

The notebook's cells with `import simsyft as sy` for `import syft as sy`: the toy data and the
model are encoded in fixed precision and shared between bob and alice with requires_grad=True,
and the training loop is the notebook's, unchanged. The forward pass, the loss, backward() and
the SGD step all run on the shares (Beaver products, the comparison protocol for F.relu), with
james dealing the randomness; only `loss.get()` reveals each iteration's loss. The notebook's
"Impact of fixed precision" cell's initial weights are set in `__init__` (added), so the losses
can be compared with the same training in plain torch, printed at the end (added).

    python examples/tutorial_part12.py
"""

from notebook import run_cells

INIT = """
        with torch.no_grad():  # added: the notebook's deterministic initialisation
            self.fc1.weight.set_(torch.tensor([[ 0.0738, -0.2109],[-0.1579,  0.3174]], requires_grad=True))
            self.fc1.bias.set_(torch.tensor([0.,0.1], requires_grad=True))
            self.fc2.weight.set_(torch.tensor([[-0.5368,  0.7050]], requires_grad=True))
            self.fc2.bias.set_(torch.tensor([-0.0343], requires_grad=True))
"""

CELLS = [
    """
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
import simsyft as sy
""",
    """
# Set everything up
hook = sy.TorchHook(torch)

alice = sy.VirtualWorker(id="alice", hook=hook)
bob = sy.VirtualWorker(id="bob", hook=hook)
james = sy.VirtualWorker(id="james", hook=hook)
""",
    """
# A Toy Dataset
data = torch.tensor([[0,0],[0,1],[1,0],[1,1.]])
target = torch.tensor([[0],[0],[1],[1.]])

# A Toy Model
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 1)
""" + INIT + """
    def forward(self, x):
        x = self.fc1(x)
        x = F.relu(x)
        x = self.fc2(x)
        return x
model = Net()
""",
    """
# We encode everything
data = data.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
target = target.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
model = model.fix_precision().share(bob, alice, crypto_provider=james, requires_grad=True)
""",
    "print(data)",
    """
opt = optim.SGD(params=model.parameters(),lr=0.1).fix_precision()

for iter in range(20):
    # 1) erase previous gradients (if they exist)
    opt.zero_grad()

    # 2) make a prediction
    pred = model(data)

    # 3) calculate how much we missed
    loss = ((pred - target)**2).sum()

    # 4) figure out which weights caused us to miss
    loss.backward()

    # 5) change those weights
    opt.step()

    # 6) print our progress
    print(loss.get().float_precision())
""",
    """
# added: the same training in plain torch, from the same initial weights
plain, plain_data = Net(), torch.tensor([[0,0],[0,1],[1,0],[1,1.]])
plain_target = torch.tensor([[0],[0],[1],[1.]])
plain_opt = optim.SGD(params=plain.parameters(), lr=0.1)
for iter in range(20):
    plain_opt.zero_grad()
    plain_loss = ((plain(plain_data) - plain_target)**2).sum()
    plain_loss.backward()
    plain_opt.step()
    print(f"plain torch: {plain_loss.item():.4f}")
""",
]

if __name__ == "__main__":
    run_cells(CELLS)
