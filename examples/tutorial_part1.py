"""PySyft 0.2 tutorial, Part 1: "The Basic Tools of Private Deep Learning", on simsyft.

The notebook's cells, unchanged except `import simsyft as sy` for `import syft as sy`,
run in order; each cell's displayed value is printed the way Jupyter shows it.
Bob is a real worker process; his tensors cross through shared memory.

    python examples/tutorial_part1.py
"""

import ast

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


def run_cells(cells: list[str]) -> None:
    """Execute cells like a notebook: statements run, a final expression is displayed."""
    namespace: dict = {"__name__": "__tutorial__"}
    for number, source in enumerate(cells, start=1):
        source = source.strip()
        prompt = f"In [{number}]: "
        print(prompt + source.replace("\n", "\n" + " " * len(prompt)))
        tree = ast.parse(source)
        last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        body = ast.Module(body=tree.body[:-1] if last else tree.body, type_ignores=[])
        exec(compile(body, f"<cell {number}>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), f"<cell {number}>", "eval"), namespace)
            if value is not None:
                print(f"Out[{number}]: {value!r}")
        print()
    namespace["sy"].shutdown()


if __name__ == "__main__":
    run_cells(CELLS)
