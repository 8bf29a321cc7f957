"""Import structure of the ``sslsteal_jax`` package: no cycles, dependencies point one way.

The graph is built from the source (``ast``), not from what happens to be
imported at run time, so imports inside functions (often used to hide a cycle)
count like module-level ones. Nodes are the package's modules (found with
``pkgutil.walk_packages``); an edge ``a -> b`` means module ``a`` contains an
``import`` statement (anywhere) naming module ``b``, or a name defined in
``b``'s package ``__init__`` (``from sslsteal_jax.models import X`` is an edge
to ``sslsteal_jax.models``; ``from sslsteal_jax import losses`` is an edge to
``sslsteal_jax.losses``).

Layers, bottom to top (a module may import only from its own layer or below):

* ``data``, ``models``, ``losses``, ``defenses``: building blocks.
* ``training``: generic training infrastructure (loop, state, optimizers,
  checkpoints, device mesh).
* ``trainers``: per-method trainers (SimCLR victim, watermarked victim).
* ``attacks``, ``verification``, ``evaluation``, ``api``: uses of trained models.
* ``configs``: experiment configs and their checks (use the registries below them).
* ``pipeline``: the steps experiments compose (victim, answer cache, cells, rows, results).
* ``experiments``, ``main``: the experiments.
* ``serve``: the HTTP service (uses ``api``; nothing below imports it).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
import tempfile

import sslsteal_jax

PKG = "sslsteal_jax"

# (lower layers, upper layers they must never import, directly or in a function).
LAYER_RULES = [
    (("models", "training", "losses", "defenses", "data"),
     ("experiments", "pipeline", "verification", "attacks", "trainers", "api", "evaluation",
      "configs", "serve")),
    (("trainers", "attacks", "verification", "evaluation", "api"), ("serve",)),
    (("models", "losses", "defenses", "data"), ("training",)),
    (("trainers", "attacks", "verification", "evaluation", "api"),
     ("pipeline", "experiments", "configs")),
    (("configs",), ("experiments", "main", "pipeline")),
    (("pipeline",), ("experiments",)),
]


def package_modules() -> dict[str, str]:
    """``{module name: source path}`` for the package and every module under it.

    ``pkgutil.walk_packages`` does not descend into namespace subpackages
    (folders without ``__init__.py``, e.g. ``data/`` and ``attacks/``), so each
    such folder is walked on its own.
    """
    root = os.path.dirname(sslsteal_jax.__file__)
    mods = {PKG: sslsteal_jax.__file__}
    for info in pkgutil.walk_packages(sslsteal_jax.__path__, PKG + "."):
        mods[info.name] = importlib.util.find_spec(info.name).origin
    for d, subdirs, files in os.walk(root):
        subdirs[:] = [s for s in subdirs if s != "__pycache__"]
        if "__init__.py" in files or not any(f.endswith(".py") for f in files):
            continue
        prefix = ".".join([PKG] + os.path.relpath(d, root).split(os.sep)) + "."
        for info in pkgutil.walk_packages([d], prefix):
            if not info.ispkg:
                mods[info.name] = os.path.join(d, info.name[len(prefix):] + ".py")
    return mods


def _resolve(name: str, mods) -> str | None:
    """The longest prefix of dotted ``name`` that is a package module, or None."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in mods:
            return cand
    return None


def import_graph(mods: dict[str, str]) -> dict[str, set[str]]:
    """``{module: set of package modules it imports}`` from module- and function-level
    ``import`` / ``from ... import`` statements (relative imports resolved)."""
    graph = {}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_pkg = path.endswith("__init__.py")
        pkg_parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(pkg_parts[:len(pkg_parts) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                # ``from pkg import sub`` imports module ``pkg.sub`` when it is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                r = _resolve(t, mods)
                if r is not None and r != mod:
                    deps.add(r)
        graph[mod] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more
    than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def strongconnect(v):
        work = [(v, iter(sorted(graph[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        sccs.append(set(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_cycle_in(graph, comp) for comp in sccs]


def _cycle_in(graph, comp: set[str]) -> list[str]:
    """A shortest cycle through the alphabetically first module of ``comp`` (BFS)."""
    start = min(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:  # v -> start closes the cycle: walk back from v
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def _layer(mod: str) -> str:
    return mod.split(".")[1] if mod.count(".") >= 1 else ""


def test_package_modules_found():
    mods = package_modules()
    assert f"{PKG}.losses" in mods and f"{PKG}.training.loop" in mods
    assert all(p.endswith(".py") for p in mods.values())


def test_no_import_cycles():
    graph = import_graph(package_modules())
    cycles = find_cycles(graph)
    msg = "\n".join(" -> ".join(c) for c in cycles)
    assert not cycles, f"import cycles in {PKG} (module- or function-level imports):\n{msg}"


def test_layers_point_one_way():
    graph = import_graph(package_modules())
    bad = []
    for low_layers, high_layers in LAYER_RULES:
        for mod, deps in sorted(graph.items()):
            if _layer(mod) not in low_layers:
                continue
            bad += [f"{mod} -> {d}" for d in sorted(deps) if _layer(d) in high_layers]
    assert not bad, "lower layers import upper layers:\n" + "\n".join(bad)


def test_graph_sees_function_level_and_relative_imports():
    mods = {"p": "", "p.a": "", "p.b": "", "p.sub": "", "p.sub.c": ""}
    src = {"p.a": "def f():\n    from p import b\n",
           "p.b": "from .sub import c\nimport p.a\n",
           "p.sub.c": "from .. import a\nfrom ..b import x\n"}
    # Parse the snippets through the real function by writing them out.
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for m in mods:
            paths[m] = os.path.join(d, m.replace(".", "_") + ("/__init__.py" if m in ("p", "p.sub")
                                                              else ".py"))
            os.makedirs(os.path.dirname(paths[m]), exist_ok=True)
            with open(paths[m], "w") as f:
                f.write(src.get(m, ""))
        graph = import_graph(paths)
    assert graph["p.a"] == {"p.b"}
    assert graph["p.b"] == {"p.sub.c", "p.a"}
    assert graph["p.sub.c"] == {"p.a", "p.b"}
    assert find_cycles(graph) == [["p.a", "p.b", "p.a"]]  # shortest cycle of the one component
    del graph["p.b"]
    graph["p.b"] = {"p.sub.c"}
    assert find_cycles(graph) == [["p.a", "p.b", "p.sub.c", "p.a"]]
