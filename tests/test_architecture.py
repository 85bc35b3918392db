"""Architecture rules of the code base, checked from the source with ``ast`` (nothing is imported):

- no import cycle among the modules of ``kd_keras`` (module-level and function-level imports count; imports
  under ``if TYPE_CHECKING:`` do not, since they never run);
- layering: ``kd_keras.models`` / ``data`` / ``evaluation`` never import ``engine``, ``studies`` or ``export``;
  ``kd_keras.engine`` never imports ``studies``;
- every module of ``kd_keras/``, ``experiments/`` and ``export/`` is at most 600 lines.

What an import is an edge to: ``import a.b.c`` and ``from a.b import c`` (``c`` a submodule) point at the module
``a.b.c``; ``from a.b import name`` (``name`` not a submodule) points at ``a.b`` (its ``__init__``). The implicit
import of parent packages is not an edge: every submodule would otherwise form a cycle with its package's
``__init__``, which is harmless as long as the ``__init__`` is not itself imported for a name it re-exports.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "kd_keras"
MAX_LINES = 600


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{"pkg.sub.module": path}`` for every ``.py`` file of the package folder ``root / package``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth (functions, methods, try blocks), except the bodies of
    ``if TYPE_CHECKING:`` (their ``else`` branch does run and is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """The import graph of ``package`` (a folder under ``root``): module name -> modules of the package it
    imports (see the module docstring for what an edge is)."""
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = here.split(".")
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                # "import a.b.c" of a module; a name imported from a module points at that module.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components of more than one module, or a module importing itself,
    are cycles."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = lowlink[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = lowlink[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    lowlink[node] = min(lowlink[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    lowlink[parent] = min(lowlink[parent], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: strongly connected components of two or more modules (a module cannot
    import itself in this graph)."""
    return sorted(c for c in strongly_connected_components(graph) if len(c) > 1)


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    members = set(cycle)
    edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a] & members)]
    return "{" + ", ".join(cycle) + "}: " + "; ".join(edges)


# -- the rules on this repository ------------------------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph(REPO, PACKAGE)
    assert len(graph) > 50, "the graph should hold every module of kd_keras"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


LAYERS = {
    "kd_keras.models": ("kd_keras.engine", "kd_keras.studies", "kd_keras.export"),
    "kd_keras.data": ("kd_keras.engine", "kd_keras.studies", "kd_keras.export"),
    "kd_keras.evaluation": ("kd_keras.engine", "kd_keras.studies", "kd_keras.export"),
    "kd_keras.engine": ("kd_keras.studies",),
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for each import of a layer that ``LAYERS`` forbids."""
    found = []
    for module, targets in sorted(graph.items()):
        for layer, forbidden in LAYERS.items():
            if _within(module, layer):
                found += [f"{module} -> {t}" for t in sorted(targets) if any(_within(t, f) for f in forbidden)]
    return found


def test_layering():
    violations = layering_violations(import_graph(REPO, PACKAGE))
    assert not violations, "imports across layers:\n" + "\n".join(violations)


def _line_counts() -> dict[str, int]:
    counts = {}
    for folder in (PACKAGE, "experiments", "export"):
        for path in sorted((REPO / folder).rglob("*.py")):
            counts[str(path.relative_to(REPO))] = len(path.read_text(encoding="utf-8").splitlines())
    return counts


def test_modules_at_most_600_lines():
    counts = _line_counts()
    assert len(counts) > 50
    offenders = {path: n for path, n in counts.items() if n > MAX_LINES}
    assert not offenders, f"modules over {MAX_LINES} lines: {offenders}"


# -- the checks themselves, on a tiny fake package --------------------------------------------------------------


def _fake_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_planted_cycle_is_found(tmp_path):
    _fake_package(tmp_path, {
        "fake/__init__.py": "",
        "fake/a.py": "from fake.b import thing\n",
        # function-level and relative: still an edge
        "fake/b.py": "def f():\n    from . import c\n    return c\nthing = 1\n",
        "fake/c.py": "import fake.a\n",
        "fake/d.py": "from fake import a\n",  # imports into the cycle, is not part of it
    })
    graph = import_graph(tmp_path, "fake")
    assert graph["fake.a"] == {"fake.b"}
    assert graph["fake.b"] == {"fake.c"}
    assert graph["fake.c"] == {"fake.a"}
    assert graph["fake.d"] == {"fake.a"}
    assert find_cycles(graph) == [["fake.a", "fake.b", "fake.c"]]
    assert "fake.a -> fake.b" in _describe(find_cycles(graph)[0], graph)


def test_type_checking_imports_are_not_edges(tmp_path):
    _fake_package(tmp_path, {
        "fake/__init__.py": "",
        "fake/a.py": "from fake.b import thing\n",
        "fake/b.py": (
            "import typing\nfrom typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from fake.a import x\n"
            "if typing.TYPE_CHECKING:\n    import fake.a\n"
            "else:\n    import fake.c\n"
            "thing = 1\n"
        ),
        "fake/c.py": "",
    })
    graph = import_graph(tmp_path, "fake")
    assert graph["fake.b"] == {"fake.c"}
    assert find_cycles(graph) == []


def test_package_init_reexport_cycle_is_found(tmp_path):
    # A submodule importing a name its own package's __init__ re-exports from it: a real cycle.
    _fake_package(tmp_path, {
        "fake/__init__.py": "from fake.sub.x import X\n",
        "fake/sub/__init__.py": "from .x import X\nfrom .y import Y\n",
        "fake/sub/x.py": "from fake.sub import Y\nX = 1\n",
        "fake/sub/y.py": "Y = 2\n",
    })
    graph = import_graph(tmp_path, "fake")
    assert graph["fake.sub"] == {"fake.sub.x", "fake.sub.y"}
    assert graph["fake.sub.x"] == {"fake.sub"}
    assert find_cycles(graph) == [["fake.sub", "fake.sub.x"]]


def test_layering_violation_is_found():
    graph = {"kd_keras.data.a": {"kd_keras.engine.b"}, "kd_keras.engine.b": {"kd_keras.data.a"},
             "kd_keras.engine.c": {"kd_keras.studies.d"}, "kd_keras.studies.d": {"kd_keras.engine.b"}}
    assert layering_violations(graph) == ["kd_keras.data.a -> kd_keras.engine.b",
                                          "kd_keras.engine.c -> kd_keras.studies.d"]


# -- the flat public API of kd_keras/__init__.py -----------------------------------------------------------------

REQUIRED_PUBLIC_NAMES = {
    "Distiller", "get_objective", "list_objectives", "register_objective", "build_model", "list_models",
    "load_model", "train", "train_lr_grid", "predict", "export_model", "evaluate_predictions",
    "clustered_bootstrap", "make_dataset", "PreprocessConfig", "Records", "__version__",
}


def test_import_kd_keras_does_not_import_tensorflow():
    code = (
        "import sys, kd_keras\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'cv2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'Distiller' in dir(kd_keras)\n"
        "print('ok', kd_keras.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


def test_public_all_is_sorted_and_complete():
    import kd_keras

    assert kd_keras.__all__ == sorted(kd_keras.__all__)
    assert len(set(kd_keras.__all__)) == len(kd_keras.__all__)
    assert REQUIRED_PUBLIC_NAMES <= set(kd_keras.__all__), REQUIRED_PUBLIC_NAMES - set(kd_keras.__all__)
    assert set(kd_keras.__all__) <= set(dir(kd_keras))
    with pytest.raises(AttributeError, match="no_such_name"):
        kd_keras.no_such_name  # noqa: B018


def test_every_public_name_resolves_to_its_package_export():
    import importlib

    import kd_keras

    for name in kd_keras.__all__:
        value = getattr(kd_keras, name)
        assert value is not None, name
        if name == "__version__":
            assert isinstance(value, str)
            continue
        module = importlib.import_module(kd_keras._LAZY_NAMES[name])
        assert value is getattr(module, name), name
        # a class or a function, never a module that shadows a same-named function (engine.predict, ...)
        assert callable(value) and not isinstance(value, types.ModuleType), name
        assert value.__module__.startswith("kd_keras."), (name, value.__module__)
    assert kd_keras.get_objective("hinton", alpha=0.25).alpha == 0.25
