"""The Part 1 tutorial, run as a user would, prints what the PySyft notebook shows (ids masked)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "tutorial_part1.txt")
ID = re.compile(r"\b\d{6,}\b")


def mask(text: str) -> str:
    return ID.sub("<id>", text)


def test_tutorial_part1_output_matches_the_notebook():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tutorial_part1.py")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr
    with open(GOLDEN) as f:
        expected = f.read()
    assert mask(result.stdout) == expected


def test_tutorial_ids_are_consistent():
    """The id shown for x_ptr is the key in bob._objects and x_ptr.id_at_location."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "tutorial_part1.py")],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    out = result.stdout
    pointer = re.search(r"Out\[7\]: \(Wrapper\)>\[PointerTensor \| me:(\d+) -> bob:(\d+)\]", out)
    assert pointer
    assert f"Out[16]: {pointer.group(2)}" in out
    assert re.search(rf"Out\[8\]: \{{{pointer.group(2)}: tensor\(\[1, 2, 3, 4, 5\]\)", out)
