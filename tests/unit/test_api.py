"""Cheap guards: the public surface, and the layers of docs/architecture.md for every module.

Every module of the package has a layer below; a module imports only modules of its own layer
or lower, never anything in the face (cli, testing, the pytest plugin), and the two sides of
the process boundary (the user layer and the worker) never import each other. A new module
without a layer fails `test_every_module_has_a_layer`, so none goes unchecked.
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict

import simsyft

PKG = os.path.dirname(simsyft.__file__)

# docs/architecture.md draws these. Lower numbers sit lower; "simsyft.backends" alone is the
# registry of backend names (it imports nothing), which config reads to check `backend = ...`.
LAYERS = {
    # L0: no simsyft imports but each other
    "simsyft.errors": 0, "simsyft.exceptions": 0, "simsyft.ids": 0, "simsyft.wire.args": 0, "simsyft.backends": 0,
    "simsyft.gradients": 0,
    "simsyft.ring": 0,
    "simsyft.binary": 0,
    "simsyft.wire": 0, "simsyft.links": 0, "simsyft.worker": 0, "simsyft.config": 1, "simsyft.testing": 7,
    # L1: the wire, configs, the run root
    "simsyft.wire.messages": 1, "simsyft.wire.shm": 1, "simsyft.wire.segments": 1, "simsyft.wire.tensors": 1,
    "simsyft.wire.compact": 1, "simsyft.wire.codec": 1, "simsyft.wire.ops": 1,
    "simsyft.config.model": 1, "simsyft.config.parse": 1, "simsyft.rundir": 1,
    "simsyft.ledger": 1, "simsyft.network": 1,
    # L2: links, and the worker side
    "simsyft.links.link": 2, "simsyft.links.zmq": 2,
    "simsyft.worker.spec": 2, "simsyft.worker.execute": 2, "simsyft.worker.limits": 2, "simsyft.worker.peers": 2,
    "simsyft.worker.core": 2, "simsyft.worker.main": 2, "simsyft.worker.__main__": 2,
    "simsyft.worker.origins": 2,
    "simsyft.worker.mpc": 2,
    "simsyft.worker.template": 2,
    # L3: backends
    "simsyft.backends.base": 3, "simsyft.backends.local": 3, "simsyft.backends.inprocess": 3,
    "simsyft.backends.template": 3,
    "simsyft.backends.ray": 3, "simsyft.backends.ray_actor": 3, "simsyft.backends.ray_link": 3,
    # L4: the user layer
    "simsyft.facts": 4, "simsyft.pipelining": 4, "simsyft.pointer": 4, "simsyft.models": 4, "simsyft.handles": 4,
    "simsyft.hook": 4,
    "simsyft.federated": 4, "simsyft.federated.dataset": 4, "simsyft.federated.loader": 4,
    "simsyft.federated.floptimizer": 4,
    "simsyft.multipointer": 4,
    "simsyft.origins": 4,
    "simsyft.smpc": 4, "simsyft.smpc.additive": 4, "simsyft.smpc.fixed": 4, "simsyft.smpc.remote": 4,
    "simsyft.smpc.compare": 4, "simsyft.smpc.autograd": 4, "simsyft.smpc.nn": 4,
    "simsyft.smpc.layers": 4,
    # L5: simulations
    "simsyft.simulation": 5,
    # L6+: the face; nothing imports these
    "simsyft.__init__": 6, "simsyft.cli": 7, "simsyft.__main__": 7, "simsyft.pytest_plugin": 7,
    "simsyft.testing.inprocess": 7, "simsyft.testing.compare": 7, "simsyft.testing.strategies": 7,
    "simsyft.testing.grammar": 7, "simsyft.testing.worlds": 7, "simsyft.testing.programs": 7,
    "simsyft.testing.machine": 7, "simsyft.testing.multi": 7,
}
FACE = {"simsyft.cli", "simsyft.__main__", "simsyft.pytest_plugin", "simsyft.testing"}
USER_LAYER = {"simsyft.facts", "simsyft.pipelining", "simsyft.pointer", "simsyft.models", "simsyft.handles",
              "simsyft.hook", "simsyft.federated", "simsyft.federated.dataset", "simsyft.federated.loader",
              "simsyft.federated.floptimizer", "simsyft.multipointer", "simsyft.origins",
              "simsyft.smpc", "simsyft.smpc.additive", "simsyft.smpc.fixed", "simsyft.smpc.remote",
              "simsyft.smpc.compare", "simsyft.smpc.autograd", "simsyft.smpc.nn",
              "simsyft.smpc.layers"}


def modules() -> dict[str, str]:
    """Dotted name -> path, for every module of the package (packages as 'pkg' for __init__)."""
    found = {}
    for root, _, files in os.walk(PKG):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PKG))[:-3].replace(os.sep, ".")
            if rel.endswith(".__init__"):
                rel = rel[: -len(".__init__")] if rel != "simsyft.__init__" else rel
            found[rel] = os.path.join(root, name)
    return found


def _package_of(module: str, path: str) -> str:
    return module if path.endswith("__init__.py") and module != "simsyft.__init__" else module.rsplit(".", 1)[0]


def _runtime_nodes(tree: ast.AST):
    """Every node, except under `if TYPE_CHECKING:` (imports there never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports(module: str, path: str, known: set[str]) -> set[str]:
    """The simsyft modules `module` imports, anywhere in its file (function-level imports too)."""
    found = set()
    package = _package_of(module, path)
    for node in _runtime_nodes(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            elif node.module and node.module.startswith("simsyft"):
                base = node.module
            else:
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("simsyft"))
    return {name if name != "simsyft" else "simsyft.__init__" for name in found}


def test_all_is_sorted_and_complete():
    assert simsyft.__all__ == sorted(simsyft.__all__)
    for name in simsyft.__all__:
        assert hasattr(simsyft, name), name
    # "@py_builtins"-style names: pytest rewrites simsyft when it is loaded as a plugin (pytest11)
    submodules = {m.split(".")[1] for m in modules() if m.count(".") >= 1 and m != "simsyft.__init__"}
    public = {n for n in vars(simsyft) if not n.startswith(("_", "@"))} - submodules
    assert public == set(simsyft.__all__)


def test_every_module_has_a_layer():
    missing = sorted(set(modules()) - set(LAYERS))
    assert not missing, f"modules without a layer in tests/unit/test_api.py (and docs/architecture.md): {missing}"


def test_imports_flow_downward_only():
    found = modules()
    known = set(found)
    bad = []
    for module, path in found.items():
        for target in imports(module, path, known):
            if target == module or target not in LAYERS:
                continue
            if LAYERS[target] > LAYERS[module]:
                bad.append(f"{module} (L{LAYERS[module]}) imports {target} (L{LAYERS[target]})")
    assert not bad, "imports against docs/architecture.md's layers:\n" + "\n".join(bad)


def test_nothing_imports_the_face():
    found = modules()
    known = set(found)
    for module, path in found.items():
        if any(module == f or module.startswith(f + ".") for f in FACE):
            continue
        for target in imports(module, path, known):
            assert not any(target == f or target.startswith(f + ".") for f in FACE), (module, target)


def test_the_process_boundary_is_not_crossed():
    found = modules()
    known = set(found)
    for module, path in found.items():
        targets = imports(module, path, known)
        if module.startswith("simsyft.worker"):
            assert not targets & USER_LAYER, f"{module} (worker side) imports {sorted(targets & USER_LAYER)}"
        if module in USER_LAYER:
            worker = {t for t in targets if t.startswith("simsyft.worker")}
            assert not worker, f"{module} (user layer) imports {sorted(worker)}"


def test_no_import_cycles():
    found = modules()
    known = set(found)
    graph = defaultdict(set)
    for module, path in found.items():
        graph[module] = {t for t in imports(module, path, known) if t in known and t != module}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [node, nxt]))
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
