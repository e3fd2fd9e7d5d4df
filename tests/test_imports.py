"""Imports point down: no module imports a layer above its own, and no import cycle exists.

Every `import`/`from ... import` in maskgen is read from the source (ast), lazy ones inside
functions included, since a lazy upward import is still an upward dependency. The layers are the
ones docs/architecture.md documents; a module's layer is that of its top-level part
(`maskgen.data.sources` -> `data`). Parts of one layer may not import each other (recipes and
evaluators never see each other), and a part may import itself freely (but not in a cycle).
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "maskgen")

# Lowest first. Keep in step with the layer table in docs/architecture.md.
LAYERS = [
    ("config", "tasks", "outputs"),
    ("parallel", "metrics", "audio"),
    ("checkpoint", "data", "models", "masking"),
    ("sampling", "tokenizers", "diffusion"),
    ("perception",),
    ("recipes", "evaluators"),
    ("runs",),
    ("train", "tokenize", "generate"),
    ("demo", "placement", "weights"),
    ("main",),
    ("__main__",),
]
LAYER_OF = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def _modules() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found[_module_name(path)] = path
    return found


def _imports(module: str, path: str, known: set[str]) -> set[tuple[str, int]]:
    """(imported maskgen module, line) pairs, resolving relative imports and `from pkg import mod`."""
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update((alias.name, node.lineno) for alias in node.names if alias.name.startswith("maskgen"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("maskgen"):
                continue
            for alias in node.names:  # `from maskgen import train` imports the module maskgen.train
                sub = f"{target}.{alias.name}"
                out.add((sub if sub in known else target, node.lineno))
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph():
    modules = _modules()
    known = set(modules)
    return {m: _imports(m, p, known) for m, p in modules.items()}, modules


def test_every_part_has_a_layer():
    graph, _ = _graph()
    parts = {_part(m) for m in graph} - {""}
    missing = sorted(parts - set(LAYER_OF))
    assert not missing, f"maskgen parts without a layer in LAYERS (and docs/architecture.md): {missing}"


def test_imports_point_down():
    graph, modules = _graph()
    upward = []
    for module, imports in graph.items():
        source = _part(module)
        if not source:  # maskgen/__init__.py imports nothing of maskgen
            assert not imports, f"maskgen/__init__.py imports {sorted(imports)}"
            continue
        for target, line in imports:
            dest = _part(target)
            if dest == source or not dest:
                continue
            if LAYER_OF[dest] >= LAYER_OF[source]:
                where = os.path.relpath(modules[module], REPO)
                upward.append(f"{where}:{line}: {module} (layer {LAYER_OF[source]}: {source}) imports {target} "
                              f"(layer {LAYER_OF[dest]}: {dest})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph, modules = _graph()
    edges = {m: sorted({t for t, _ in imports if t in graph and t != m}) for m, imports in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", ["maskgen.evaluators", "maskgen.recipes", "maskgen.data", "maskgen.runs"])
def test_layers_import_without_the_layers_above(module):
    """Importing a layer loads nothing above it (the same fact, checked by Python itself)."""
    import subprocess
    import sys

    code = (f"import sys, {module}; above = sorted(m for m in sys.modules if m.split('.')[1:2] and "
            f"m.split('.')[0] == 'maskgen' and m.split('.')[1] in {{'train', 'tokenize', 'generate', 'demo', 'main'}}); "
            "print(above); sys.exit(1 if above else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
