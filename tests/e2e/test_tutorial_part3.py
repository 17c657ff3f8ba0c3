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


def test_part3_v029_output_repeats_ids_as_the_notebook_does():
    """PySyft v0.2.9's Part 3: a pointer sent on keeps its id; ids repeat where the notebook repeats them."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tutorial_part3_v029.py")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    out = {int(n): v for n, v in re.findall(r"^Out\[(\d+)\]: (.*)$", result.stdout, re.M)}
    a, b = re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:(\d+) -> bob:(\d+)\]", out[4]).groups()
    c = re.fullmatch(rf"\(Wrapper\)>\[PointerTensor \| me:(\d+) -> alice:{a}\]", out[5])  # me:C -> alice:A
    assert c and c.group(1) not in (a, b)
    assert out[6] == f"{{{b}: tensor([1, 2, 3, 4])}}"
    assert out[7] == f"{{{a}: (Wrapper)>[PointerTensor | alice:{a} -> bob:{b}]}}"
    assert out[8] == f"(Wrapper)>[PointerTensor | me:{a} -> bob:{b}]"  # the same pointer comes back
    assert out[9] == "tensor([1, 2, 3, 4])"
    assert out[10] == out[11] == "{}"
    assert len(re.findall(r"tensor\(", out[13])) == 2 and out[13].count("tensor([ 2,  4,  6,  8, 10])") == 1
    assert len(re.findall(r"alice:(\d+) -> bob:", out[14])) == 2
    assert out[15] == "tensor([ 2,  4,  6,  8, 10])"
    assert re.fullmatch(r"\{\d+: tensor\(\[1, 2, 3, 4, 5\]\)\}", out[16])
    assert len(re.findall(r"alice:(\d+) -> bob:", out[17])) == 1
    assert out[18] == "tensor([1, 2, 3, 4, 5])"
    assert out[19] == out[20] == "{}"
    assert re.search(r"  bob: \{\}\nalice: \{\d+: tensor\(\[1, 2, 3, 4, 5\]\)\}", result.stdout)
    assert re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> alice:\d+\]", out[25])


def test_part3_2020_remote_send():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tutorial_part3.py")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    out = {int(n): v for n, v in re.findall(r"^Out\[(\d+)\]: (.*)$", result.stdout, re.M)}
    ptr = re.fullmatch(r"\(Wrapper\)>\[PointerTensor \| me:\d+ -> bob:(\d+)\]", out[31])  # still points at bob
    assert ptr
    b = ptr.group(1)
    assert re.fullmatch(rf"\{{{b}: \(Wrapper\)>\[PointerTensor \| bob:{b} -> alice:(\d+)\]\}}", out[32])
    assert re.fullmatch(r"\{\d+: tensor\(\[1, 2, 3, 4, 5\]\)\}", out[33])
    assert out[34] == "tensor([1, 2, 3, 4, 5])"
