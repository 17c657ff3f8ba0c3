"""Tutorial Part 3 (pointer chains, move, remote_get) prints what the notebook shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_part3_output():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tutorial_part3.py")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    out = {int(n): v for n, v in re.findall(r"^Out\[(\d+)\]: (.*)$", result.stdout, re.M)}
    x_ptr = re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> bob:(\d+)\]", out[4])
    chain = re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> alice:(\d+)\]", out[5])
    assert x_ptr and chain
    assert out[6] == f"{{{x_ptr.group(1)}: tensor([1, 2, 3, 4])}}"
    assert out[7] == (f"{{{chain.group(1)}: (Wrapper)>[PointerTensor | alice:{chain.group(1)} "
                      f"-> bob:{x_ptr.group(1)}]}}")
    assert re.fullmatch(rf"\(Wrapper\)>\[PointerTensor \| me:\d+ -> bob:{x_ptr.group(1)}\]", out[8])
    assert out[9] == "tensor([1, 2, 3, 4])"
    assert out[11].count("tensor([1, 2, 3, 4, 5])") == 1 and out[11].count("-> bob:") == 4
    assert out[12] == "{}"
    # move: bob -> alice
    assert out[17] == "{}" and re.fullmatch(r"\{\d+: tensor\(\[1, 2, 3, 4, 5\]\)\}", out[20])
    # remote_get: alice's pointer becomes the tensor, bob empties
    assert "-> bob:" in out[23] and out[25] == "{}" and "tensor([1, 2, 3, 4, 5])" in out[26]
    # and move back to bob
    assert re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> bob:\d+\]", out[27])
    assert "tensor([1, 2, 3, 4, 5])" in out[29] and out[30] == "{}"
