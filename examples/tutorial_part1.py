"""PySyft 0.2 tutorial, Part 1: "The Basic Tools of Private Deep Learning", on simsyft.

The notebook's cells, unchanged except `import simsyft as sy` for `import syft as sy`,
run in order; each cell's displayed value is printed the way Jupyter shows it.
Bob is a real worker process; his tensors cross through shared memory.

    python examples/tutorial_part1.py
"""

from notebook import run_cells

CELLS = [
    # Part 1: The Basic Tools of Private Deep Learning
    """
import torch
from torch.nn import Parameter
import torch.nn as nn
import torch.nn.functional as F
import simsyft as sy
hook = sy.TorchHook(torch)
""",
    "torch.tensor([1,2,3,4,5])",
    """
x = torch.tensor([1,2,3,4,5])
y = x + x
print(y)
""",
    # Section 1.1 - Sending Tensors to Bob
    'bob = sy.VirtualWorker(hook, id="bob")',
    """
x = torch.tensor([1,2,3,4,5])
y = torch.tensor([1,1,1,1,1])
""",
    """
x_ptr = x.send(bob)
y_ptr = y.send(bob)
""",
    "x_ptr",
    "bob._objects",
    "z = x_ptr + x_ptr",
    "z",
    "bob._objects",
    # Section 1.2 - Using Tensor Pointers
    "x_ptr",
    "x_ptr.location",
    "bob",
    "bob == x_ptr.location",
    "x_ptr.id_at_location",
    "x_ptr.owner",
    """
me = sy.local_worker
me
""",
    "me == x_ptr.owner",
    "x_ptr",
    "x_ptr.get()",
    "y_ptr",
    "y_ptr.get()",
    "z.get()",
    "bob._objects",
    # Part 2: Using Tensor Pointers
    """
x = torch.tensor([1,2,3,4,5]).send(bob)
y = torch.tensor([1,1,1,1,1]).send(bob)
""",
    """
z = x + y
z
""",
    """
z = z.get()
z
""",
    """
z = torch.add(x,y)
z
""",
    """
z = z.get()
z
""",
    # Backpropagation on a remote worker
    """
x = torch.tensor([1,2,3,4,5.], requires_grad=True).send(bob)
y = torch.tensor([1,1,1,1,1.], requires_grad=True).send(bob)
""",
    "z = (x + y).sum()",
    "z.backward()",
    """
x = x.get()
x
""",
    "x.grad",
]


if __name__ == "__main__":
    run_cells(CELLS)
