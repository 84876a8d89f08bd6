"""The package's layers only import downwards, and no two modules import each other.

Layers, lowest first: common < world < datasets < models < train < pipeline < eval < app < cli;
``mm2latent/__init__.py`` is the top and may import anything. Every ``import`` of
``mm2latent.*`` counts, absolute or relative, at module level or inside a function
(a lazy import still ties the two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "mm2latent"
LAYERS = ("common", "world", "datasets", "models", "train", "pipeline", "eval", "app", "cli")
#: top-level modules that are not a package of their own, placed between the layers
LOOSE: dict[str, float] = {}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module under src/mm2latent."""
    out = {}
    for f in sorted((SRC / PKG).rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The mm2latent modules that module ``name`` imports (each resolved to a file)."""
    tree = ast.parse(modules[name].read_text(encoding="utf-8"), filename=str(modules[name]))
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:  # the longest prefix that is a module of ours
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PKG or alias.name.startswith(PKG + "."):
                    found.add(resolve(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == PKG or target.startswith(PKG + ".")):
                continue
            for alias in node.names:  # ``from .x import y``: y may be a submodule of x
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else resolve(target))
    found.discard(None)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {m: imports_of(m, modules) for m in modules}


def layer(name: str) -> float:
    parts = name.split(".")
    if len(parts) == 1:  # mm2latent/__init__.py
        return float(len(LAYERS))
    if parts[1] in LAYERS:
        return float(LAYERS.index(parts[1]))
    return LOOSE[parts[1]]


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, deps in graph.items() for b in deps if layer(b) > layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_every_module_has_a_layer():
    for name in module_files():
        layer(name)  # KeyError names a module outside the layer plan


def test_resolver_sees_relative_and_lazy_imports():
    g = import_graph()
    assert "mm2latent.common.errors" in g["mm2latent.cli.main"]  # from ..common.errors import UserError
    assert "mm2latent.pipeline" in g["mm2latent"]  # lazy, inside __getattr__


def test_no_upward_imports():
    bad = upward_imports(import_graph())
    assert not bad, "imports of a higher layer:\n" + "\n".join(f"  {a} -> {b}" for a, b in bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in found)


if __name__ == "__main__":  # print the counts
    g = import_graph()
    up, cyc = upward_imports(g), cycles(g)
    print(f"upward imports: {len(up)}")
    for a, b in up:
        print(f"  {a} -> {b}")
    print(f"cycles: {len(cyc)}")
    for c in cyc:
        print("  " + " <-> ".join(c))
