"""The import graph of ``jmeta`` (read with ``ast``, lazy imports inside functions included): no cycle, the library
never imports the run layer (the package ``jmeta.run``: configs, experiment wiring, the host loop, checkpoints,
logs, plots, export, search, the CLI), and no module imports a deprecated path."""

from __future__ import annotations

import ast
import pathlib

PKG = pathlib.Path(__file__).resolve().parents[1] / "jmeta"

#: Deprecated old paths (one release): shim files that alias the new module (jmeta._deprecation.moved), and
#: ``jmeta.train.evaluate``, answered by a stand-in in sys.modules (no file: the name is the function).
DEPRECATED = ("jmeta.cli", "jmeta.config", "jmeta.experiment", "jmeta.export", "jmeta.plots", "jmeta.sweep",
              "jmeta.train.runner", "jmeta.train.checkpoint", "jmeta.train.lock", "jmeta.train.interrupt",
              "jmeta.train.logging", "jmeta.train.tensorboard", "jmeta.train.wandb_logger", "jmeta.train.sweep",
              "jmeta.learned_optim.tasks", "jmeta.train.evaluate")
#: The run layer: it may import the library, never the other way round.
RUN_LAYER = ("jmeta.run",) + DEPRECATED
#: Above the run layer: ``python -m jmeta``, and the package root (lazy attributes for every subpackage).
TOP = ("jmeta", "jmeta.__main__")
#: Library packages and modules: (importer prefix, prefixes it must not import).
LAYERS = {
    "jmeta.validate": ("jmeta.",),
    "jmeta._deprecation": ("jmeta.",),
    "jmeta._struct": ("jmeta.",),
    "jmeta._refs": ("jmeta.",),
    "jmeta._io": RUN_LAYER,
    "jmeta.ops": RUN_LAYER + ("jmeta.algorithms", "jmeta.inner", "jmeta.learned_optim", "jmeta.rl", "jmeta.train"),
    "jmeta.models": RUN_LAYER + ("jmeta.algorithms", "jmeta.inner", "jmeta.learned_optim", "jmeta.rl", "jmeta.train"),
    "jmeta.inner": RUN_LAYER + ("jmeta.algorithms", "jmeta.learned_optim", "jmeta.rl", "jmeta.train"),
    "jmeta.tasks": RUN_LAYER + ("jmeta.algorithms", "jmeta.learned_optim", "jmeta.rl", "jmeta.train"),
    "jmeta.data": RUN_LAYER + ("jmeta.algorithms", "jmeta.learned_optim", "jmeta.rl", "jmeta.train"),
    "jmeta.implicit": RUN_LAYER + ("jmeta.learned_optim", "jmeta.rl", "jmeta.train"),
    "jmeta.algorithms": RUN_LAYER + ("jmeta.rl",),
    "jmeta.train": RUN_LAYER + ("jmeta.learned_optim", "jmeta.rl"),
    "jmeta.learned_optim": RUN_LAYER + ("jmeta.rl",),
    "jmeta.rl": RUN_LAYER,
    "jmeta.losses": RUN_LAYER,
}


def _within(name: str, prefixes) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p.rstrip(".") + ".") for p in prefixes)


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph(*, files_only: bool = True) -> dict[str, set[str]]:
    """``{module: the jmeta modules it imports}``; ``files_only=False`` keeps targets without a file."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if not base.startswith("jmeta"):
                    continue
                for alias in node.names:  # `from jmeta.x import y`: y may be a module
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("jmeta"))
        graph[name] = {e for e in edges if (e in modules or not files_only) and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 50  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_a_higher_layer():
    graph = _graph()
    bad = []
    for importer, targets in graph.items():
        for layer, forbidden in LAYERS.items():
            if _within(importer, [layer]) and not _within(importer, DEPRECATED):  # a shim imports its new home
                bad += [f"{importer} -> {t}" for t in sorted(targets) if _within(t, forbidden)]
    assert bad == []


def test_only_the_run_layer_imports_it():
    """Everything outside jmeta.run, the shims and the top (the library) imports neither jmeta.run nor a shim."""
    graph = _graph(files_only=False)
    library = [m for m in graph if not _within(m, RUN_LAYER) and m not in TOP]
    assert "jmeta.train.step" in library and "jmeta.learned_optim.meta_lstm" in library
    assert [f"{m} -> {t}" for m in sorted(library) for t in sorted(graph[m]) if _within(t, RUN_LAYER)] == []


def test_no_module_imports_a_deprecated_path():
    graph = _graph(files_only=False)
    assert [f"{m} -> {t}" for m in sorted(graph) for t in sorted(graph[m]) if t in DEPRECATED] == []


def test_the_deprecated_paths_are_exactly_the_shims():
    """DEPRECATED lists every shim file (a module calling jmeta._deprecation.moved) and nothing else with a file."""
    shims = {_module_name(p) for p in PKG.rglob("*.py") if "moved(__name__" in p.read_text()}
    assert shims == set(DEPRECATED) - {"jmeta.train.evaluate"}
    assert not (PKG / "train" / "evaluate.py").exists()  # the name jmeta.train.evaluate is the function
