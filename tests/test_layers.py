"""The package layers: no module of vlmkit imports a package above its own.

    config -> data -> models -> training -> (ssl, rlhf, hub, eval) -> (pipeline, cli)

A package may import its own package and any package of a lower layer. The root `vlmkit` (only
`__version__`) is below everything; `vlmkit.cli`, `vlmkit.__main__` and `vlmkit.pipeline` are the entry
points on top and may import each other.

ssl, rlhf, hub and eval are siblings: they do not import each other, so each can be read, tested and changed
alone. The one exception the code really needs is listed edge by edge in `SIBLING_EDGES`: RL scores
completions with the evaluation's own answer match, `eval.answers.exact_match` (a reward that disagreed with
the reported accuracy would optimise something else).

Imports are read with `ast` from every module, at module level and inside functions, so a lazy import cannot
hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "vlmkit"

LAYERS: dict[str, int] = {
    "config": 0,
    "data": 1,
    "models": 2,
    "training": 3,
    "ssl": 4,
    "rlhf": 4,
    "hub": 4,
    "eval": 4,
    "pipeline": 5,
    "cli": 5,
    "__main__": 5,
}
TOP_LAYER = max(LAYERS.values())

# (importing module, imported module): sibling edges the code needs; see the module docstring.
SIBLING_EDGES = {
    ("vlmkit.rlhf.verifiable", "vlmkit.eval.answers"),
    ("vlmkit.rlhf.rl_trainer", "vlmkit.eval.answers"),
    ("vlmkit.rlhf.sft_baseline", "vlmkit.eval.answers"),  # grades its baseline as the RL run is graded
}

# Upward imports being removed, each with its reason; empty: there are none.
KNOWN_UPWARD: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(absolute module name, line) of every vlmkit import in `source`, at any depth of the syntax tree.

    module: the dotted name the source has (relative imports resolve against it).
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = package.split(".")
                target = ".".join(
                    parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else [])
                )
            if target == "vlmkit":  # `from vlmkit import hub` imports the package vlmkit.hub
                found += [(_root_member(alias.name), node.lineno) for alias in node.names]
            else:  # `from vlmkit.training import checkpoint`: the layer is the package's either way
                found.append((target, node.lineno))
    return [(t, line) for t, line in found if t == "vlmkit" or t.startswith("vlmkit.")]


def _root_member(name: str) -> str:
    """`vlmkit.<name>` when it is a module or package of vlmkit, else `vlmkit` (e.g. `__version__`)."""
    is_module = (PACKAGE_ROOT / name).is_dir() or (PACKAGE_ROOT / f"{name}.py").is_file()
    return f"vlmkit.{name}" if is_module else "vlmkit"


def imports_of(path: Path) -> list[tuple[str, int]]:
    return imported_modules(path.read_text(), module_name(path), path.name == "__init__.py")


def layer_package(module: str) -> str | None:
    """The layered package of a module (`vlmkit.data.records` -> `data`); None for the root `vlmkit`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violation(importer: str, imported: str) -> str | None:
    """Why `importer` may not import `imported`, or None when the import is allowed."""
    src, dst = layer_package(importer), layer_package(imported)
    if dst is None or src == dst:
        return None
    if src not in LAYERS or dst not in LAYERS:
        return f"package not in LAYERS: {src if src not in LAYERS else dst} (add it to its layer)"
    if (importer, imported) in KNOWN_UPWARD:
        return None
    if LAYERS[dst] > LAYERS[src]:
        return f"upward import: {src} (layer {LAYERS[src]}) imports {dst} (layer {LAYERS[dst]})"
    if LAYERS[dst] == LAYERS[src] and LAYERS[src] != TOP_LAYER and (importer, imported) not in SIBLING_EDGES:
        return f"sibling import: {src} imports {dst} (not in SIBLING_EDGES)"
    return None


def all_modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def test_every_import_respects_the_layers():
    problems = [
        f"{module_name(path)} line {line}: imports {target}: {why}"
        for path in all_modules()
        for target, line in imports_of(path)
        if (why := violation(module_name(path), target))
    ]
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_allowed_exceptions_are_still_needed():
    """An exception whose import is gone must be deleted, so the lists cannot quietly widen the rules."""
    edges = {(module_name(p), t) for p in all_modules() for t, _ in imports_of(p)}
    stale = sorted((SIBLING_EDGES | KNOWN_UPWARD) - edges)
    assert not stale, f"exceptions no longer used (delete them): {stale}"


@pytest.mark.parametrize(
    ("source", "importer", "why"),
    [
        ("from vlmkit.training.loop import train\n", "vlmkit.data.x", "upward import: data (layer 1)"),
        ("def f():\n    from vlmkit.models import vlm\n", "vlmkit.data.x", "upward import: data"),
        ("import vlmkit.hub.push\n", "vlmkit.training.x", "upward import: training"),
        ("from vlmkit.hub import push\n", "vlmkit.ssl.x", "sibling import: ssl imports hub"),
        ("from vlmkit.eval.answers import exact_match\n", "vlmkit.ssl.x", "sibling import: ssl imports eval"),
        ("from ..models.vlm import VLM\n", "vlmkit.data.x", "upward import: data"),
        ("from vlmkit import hub\n", "vlmkit.training.x", "upward import: training"),
    ],
)
def test_the_check_names_the_offending_import(source, importer, why):
    """The checker itself: upward, lazy (function-level), sibling, relative and root imports are all caught."""
    reasons = [violation(importer, target) for target, _ in imported_modules(source, importer)]
    assert any(r and r.startswith(why) for r in reasons), reasons


def test_the_check_allows_downward_and_same_package_imports():
    source = "from vlmkit.data.records import Sample\nfrom . import checkpoint\nimport vlmkit\n"
    targets = imported_modules(source, "vlmkit.training.loop")
    assert [t for t, _ in targets] == ["vlmkit.data.records", "vlmkit.training", "vlmkit"]
    assert [violation("vlmkit.training.loop", t) for t, _ in targets] == [None, None, None]


@pytest.mark.parametrize("path", [p for p in all_modules() if p.stem != "__main__"], ids=module_name)
def test_every_module_imports(path: Path):
    """Parsing the imports is not enough: every module must also import (no name moved away under it)."""
    import importlib

    importlib.import_module(module_name(path))
