"""PySyft 0.2 tutorial, Part 3: "Advanced Remote Execution Tools", on simsyft.

The notebook's cells with `import simsyft as sy` for `import syft as sy`: pointers to
pointers (alice holds a pointer to bob's tensor), chains through one worker, and moving
data worker to worker (through shared memory, never through this process).

    python examples/tutorial_part3.py
"""

from notebook import run_cells

CELLS = [
    """
import torch
import simsyft as sy
hook = sy.TorchHook(torch)
""",
    """
bob = sy.VirtualWorker(hook, id='bob')
alice = sy.VirtualWorker(hook, id='alice')
""",
    """
# this is a local tensor
x = torch.tensor([1,2,3,4])
x
""",
    """
# this sends the local tensor to Bob
x_ptr = x.send(bob)

# this is now a pointer
x_ptr
""",
    """
# now we can SEND THE POINTER to alice!!!
pointer_to_x_ptr = x_ptr.send(alice)

pointer_to_x_ptr
""",
    """
# As you can see above, Bob still has the actual data (data is always stored in a LocalTensor type).
bob._objects
""",
    """
# Alice, on the other hand, has x_ptr!! (notice how it points at bob)
alice._objects
""",
    """
# and we can use .get() to get x_ptr back from Alice

x_ptr = pointer_to_x_ptr.get()
x_ptr
""",
    """
# and then we can use x_ptr to get x back from Bob!

x = x_ptr.get()
x
""",
    """
p2p2x = torch.tensor([1,2,3,4,5]).send(bob).send(bob).send(bob).send(bob).send(bob)

p2p2x
""",
    "bob._objects",
    "alice._objects",
    "p2p2x.get()",
    # Section 2: Pointer Chain Operations
    """
bob.clear_objects()
alice.clear_objects()
""",
    "x = torch.tensor([1,2,3,4,5]).send(bob)",
    "bob._objects",
    "alice._objects",
    "x = x.move(alice)",
    "bob._objects",
    "alice._objects",
    "x = torch.tensor([1,2,3,4,5]).send(bob).send(alice)",
    "bob._objects",
    "alice._objects",
    "x.remote_get()",
    "bob._objects",
    "alice._objects",
    "x.move(bob)",
    "x",
    "bob._objects",
    "alice._objects",
    # The 2020 edition: remote_send (bob sends the data straight to alice and keeps a pointer)
    "x.remote_send(alice)",
    "bob._objects",
    "alice._objects",
    "x.get().get()",
]


if __name__ == "__main__":
    run_cells(CELLS)
