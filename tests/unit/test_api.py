"""Cheap guards: the public surface and the direction of imports (STYLE.md's module map)."""

from __future__ import annotations

import ast
import os

import simsyft

PKG = os.path.dirname(simsyft.__file__)

# module -> simsyft modules it must never import
FORBIDDEN = {
    "errors": {"*"},
    "protocol": {"pointer", "workers", "hook", "worker", "connection", "simulation", "executor", "cli", "testing"},
    "sharing": {"pointer", "workers", "hook", "worker", "connection", "simulation", "protocol", "executor", "cli", "testing"},
    "executor": {"pointer", "workers", "hook", "worker", "connection", "simulation", "protocol", "cli", "testing"},
    "config": {"pointer", "workers", "hook", "worker", "connection", "simulation", "protocol", "executor", "cli", "testing"},
    # a worker's memory limit: used by worker.py only, knows no sockets or messages
    "limits": {"pointer", "workers", "hook", "worker", "connection", "simulation", "protocol", "executor", "cli", "testing"},
    "connection": {"pointer", "workers", "hook", "worker", "simulation", "cli", "testing"},
    # a worker reaches other workers (pointer chains) as a client: connection.py, never the user layer
    "worker": {"pointer", "workers", "hook", "simulation", "launcher", "models", "cli", "testing"},
    "simulation": {"pointer", "workers", "hook", "worker", "cli", "testing"},
    "pointer": {"worker", "workers", "hook", "simulation", "cli", "testing"},
    "workers": {"worker", "hook", "cli", "testing"},
    "hook": {"worker", "cli", "testing"},
    # the run root and identity checks: below everything that starts processes
    "rundir": {"pointer", "workers", "hook", "worker", "connection", "simulation", "protocol", "sharing",
               "pool", "executor", "config", "launcher", "cli", "testing"},
}


def simsyft_imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("simsyft"):
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("simsyft."):
                    found.add(alias.name.split(".")[1])
    return found


def test_all_is_sorted_and_complete():
    assert simsyft.__all__ == sorted(simsyft.__all__)
    for name in simsyft.__all__:
        assert hasattr(simsyft, name), name
    # "@py_builtins"-style names: pytest rewrites simsyft when it is loaded as a plugin (pytest11)
    public = {n for n in vars(simsyft) if not n.startswith(("_", "@"))} - {
        m[:-3] for m in os.listdir(PKG) if m.endswith(".py")
    } - {d for d in os.listdir(PKG) if os.path.exists(os.path.join(PKG, d, "__init__.py"))}
    assert public == set(simsyft.__all__)


def test_import_directions():
    for module, forbidden in FORBIDDEN.items():
        path = os.path.join(PKG, f"{module}.py")
        if not os.path.exists(path):
            continue
        imported = simsyft_imports(path)
        bad = imported if "*" in forbidden else imported & forbidden
        assert not bad, f"simsyft/{module}.py imports {sorted(bad)}, against STYLE.md's module map"


def test_nothing_imports_cli_or_testing():
    for name in os.listdir(PKG):
        if name.endswith(".py") and name not in ("cli.py", "__main__.py", "testing.py", "pytest_plugin.py"):
            imported = simsyft_imports(os.path.join(PKG, name))
            assert "cli" not in imported and "testing" not in imported, name
