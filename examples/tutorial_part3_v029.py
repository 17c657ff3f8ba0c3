"""PySyft 0.2 tutorial, Part 3 as PySyft v0.2.9 ships it: "Advanced Remote Execution Tools".

The notebook's cells, unchanged except `import simsyft as sy` for `import syft as sy`:
pointers to pointers keep their ids (alice stores x_ptr under x_ptr's own id), arithmetic
through a chain, and a chain freed as a whole. `tutorial_part3.py` runs the older edition
(remote_get, and remote_send added).

    python examples/tutorial_part3_v029.py
"""

from notebook import run_cells

CELLS = [
    "import torch\nimport simsyft as sy\nhook = sy.TorchHook(torch)",
    "bob = sy.VirtualWorker(hook, id='bob')\nalice = sy.VirtualWorker(hook, id='alice')",
    "# this is a local tensor\nx = torch.tensor([1,2,3,4])\nx",
    "# this sends the local tensor to Bob\nx_ptr = x.send(bob)\n\n# this is now a pointer\nx_ptr",
    "# now we can SEND THE POINTER to alice!!!\npointer_to_x_ptr = x_ptr.send(alice)\n\npointer_to_x_ptr",
    "# As you can see above, Bob still has the actual data (data is always stored in a LocalTensor type). \n"
    "bob._objects",
    "# Alice, on the other hand, has x_ptr!! (notice how it points at bob)\nalice._objects",
    "# and we can use .get() to get x_ptr back from Alice\n\nx_ptr = pointer_to_x_ptr.get()\nx_ptr",
    "# and then we can use x_ptr to get x back from Bob!\n\nx = x_ptr.get()\nx",
    "bob._objects",
    "alice._objects",
    "p2p2x = torch.tensor([1,2,3,4,5]).send(bob).send(alice)\n\ny = p2p2x + p2p2x",
    "bob._objects",
    "alice._objects",
    "y.get().get()",
    "bob._objects",
    "alice._objects",
    "p2p2x.get().get()",
    "bob._objects",
    "alice._objects",
    "# x is now a pointer to the data which lives on Bob's machine\nx = torch.tensor([1,2,3,4,5]).send(bob)",
    "print('  bob:', bob._objects)\nprint('alice:',alice._objects)",
    "x = x.move(alice)",
    "print('  bob:', bob._objects)\nprint('alice:',alice._objects)",
    "x",
]


if __name__ == "__main__":
    run_cells(CELLS)
