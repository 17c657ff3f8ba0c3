"""PySyft 0.2 tutorial, Part 9: "Intro to Encrypted Programs", on simsyft.

The notebook's cells with `import simsyft as sy` for `import syft as sy`. bob, alice, bill and
the crypto provider are each a process: `x.share(bob, alice, bill)` sends one share to each, a
share is uniform in the 2^64 ring (so the numbers differ from the notebook's, run to run), and
the three shares sum, with int64 wrap-around, to the secret. In `x * y` the crypto provider
deals a Beaver triple straight to bob and alice, who open their masked shares to each other;
the client only sends commands. The comparisons (`>`, `<=`, `==`) and `max` run the protocol of
docs/smpc.md ("Comparisons"): the crypto provider deals random bits and AND triples, the parties
open only masked values to each other, and the result is again a shared tensor. `x.max()` prints
`tensor(4)`, the 0-dim sum PySyft 0.2.9 returns (the notebook, run on an older PySyft, shows
`tensor([4])`); `x.max(dim=0)` unpacks to (values, indices) as the notebook's cell does. A first
cell seeds Python's `random` (added) so the pure-Python part prints the same shares each run.

    python examples/tutorial_part9.py
"""

from notebook import run_cells

CELLS = [
    "import random\nrandom.seed(0)  # added: the pure-Python shares below are the same each run",
    "Q = 1234567891011",
    "x = 25",
    """
import random

def encrypt(x):
    share_a = random.randint(-Q,Q)
    share_b = random.randint(-Q,Q)
    share_c = (x - share_a - share_b) % Q
    return (share_a, share_b,  share_c)
""",
    "encrypt(x)",
    """
def decrypt(*shares):
    return sum(shares) % Q
""",
    "a,b,c = encrypt(25)",
    "decrypt(a, b, c)",
    "decrypt(a, b)",
    """
x = encrypt(25)
y = encrypt(5)
""",
    """
def add(x, y):
    z = list()
    # the first worker adds their shares together
    z.append((x[0] + y[0]) % Q)

    # the second worker adds their shares together
    z.append((x[1] + y[1]) % Q)

    # the third worker adds their shares together
    z.append((x[2] + y[2]) % Q)

    return z
""",
    "decrypt(*add(x,y))",
    """
import torch
import simsyft as sy
hook = sy.TorchHook(torch)

bob = sy.VirtualWorker(hook, id="bob")
alice = sy.VirtualWorker(hook, id="alice")
bill = sy.VirtualWorker(hook, id="bill")
""",
    "x = torch.tensor([25])",
    "x",
    "encrypted_x = x.share(bob, alice, bill)",
    "encrypted_x.get()",
    "bob._objects",
    "x = torch.tensor([25]).share(bob, alice, bill)",
    """
# Bob's share
bobs_share = list(bob._objects.values())[0]
bobs_share
""",
    """
# Alice's share
alices_share = list(alice._objects.values())[0]
alices_share
""",
    """
# Bill's share
bills_share = list(bill._objects.values())[0]
bills_share
""",
    "(bobs_share + alices_share + bills_share)",
    """
x = torch.tensor([25]).share(bob,alice)
y = torch.tensor([5]).share(bob,alice)
""",
    "z = x + y\nz.get()",
    "z = x - y\nz.get()",
    'crypto_provider = sy.VirtualWorker(hook, id="crypto_provider")',
    """
x = torch.tensor([25]).share(bob,alice, crypto_provider=crypto_provider)
y = torch.tensor([5]).share(bob,alice, crypto_provider=crypto_provider)
""",
    """
# multiplication

z = x * y
z.get()
""",
    """
x = torch.tensor([[1, 2],[3,4]]).share(bob,alice, crypto_provider=crypto_provider)
y = torch.tensor([[2, 0],[0,2]]).share(bob,alice, crypto_provider=crypto_provider)
""",
    """
# matrix multiplication

z = x.mm(y)
z.get()
""",
    "x  # added: the shared tensor as PySyft showed it",
    """
x = torch.tensor([25]).share(bob,alice, crypto_provider=crypto_provider)
y = torch.tensor([5]).share(bob,alice, crypto_provider=crypto_provider)
""",
    "z = x > y\nz.get()",
    "z = x <= y\nz.get()",
    "z = x == y\nz.get()",
    "z = x == y + 20\nz.get()",
    """
x = torch.tensor([2, 3, 4, 1]).share(bob,alice, crypto_provider=crypto_provider)
x.max().get()
""",
    """
x = torch.tensor([[2, 3], [4, 1]]).share(bob,alice, crypto_provider=crypto_provider)
max_values, max_ids = x.max(dim=0)
max_values.get()
""",
    "max_ids.get()  # added: the row of each column's maximum",
]

if __name__ == "__main__":
    run_cells(CELLS)
