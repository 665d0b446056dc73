"""The package's import rules, checked statically in a second (no import is executed):

- no import cycle between vocalprobe's modules (function-level imports count too);
- runtime/ imports neither training/ nor export/, nor torch, transformers, optimum or onnx (it is what a recorder
  installs: numpy, soundfile, soxr, onnxruntime);
- training/ does not import export/ (dependencies point runtime <- training <- export);
- library modules do not print: only the CLI (``cli.py``, ``commands/``) and the demo write to stdout.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("runtime", "training", "export", "commands")
ROOT_MODULES = ("__init__.py", "__main__.py", "cli.py", "demo.py")
# matplotlib is left out: its plots are optional
HEAVY = {"torch", "transformers", "optimum", "onnx", "onnxscript", "safetensors", "sklearn"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("vocalprobe", *parts))


def package_modules() -> dict[str, Path]:
    files = [ROOT / name for name in ROOT_MODULES]
    for folder in PACKAGE_DIRS:
        files += sorted((ROOT / folder).rglob("*.py"))
    return {module_name(p): p for p in files if p.exists()}


MODULES = package_modules()


def imported_names(path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (``from a import b`` gives ``a`` and ``a.b``)."""
    names = set()
    is_package = path.name == "__init__.py"
    current = module_name(path).split(".")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = current if is_package else current[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def internal_edges() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in imported_names(path):
            while imported and imported not in MODULES:
                imported = imported.rpartition(".")[0]
            # importing a parent package is package initialisation, not a dependency on a sibling
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_checker_sees_cycles_and_the_package():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert {"vocalprobe.runtime.field.stream", "vocalprobe.training.study.runner", "vocalprobe.export.fusion",
            "vocalprobe.cli"} <= set(MODULES)


def test_no_import_cycle():
    cycle = find_cycle(internal_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("room,forbidden", [
    ("vocalprobe.runtime", ("vocalprobe.training", "vocalprobe.export", "vocalprobe.demo", "vocalprobe.cli",
                            "vocalprobe.commands")),
    ("vocalprobe.training", ("vocalprobe.export", "vocalprobe.demo", "vocalprobe.cli", "vocalprobe.commands")),
    ("vocalprobe.export", ("vocalprobe.demo", "vocalprobe.cli", "vocalprobe.commands")),
    ("vocalprobe.demo", ("vocalprobe.cli", "vocalprobe.commands")),
    # inside the runtime: core <- engine (the producer) <- field, archive (its consumers, which share only those two)
    ("vocalprobe.runtime.core", ("vocalprobe.runtime.engine", "vocalprobe.runtime.field", "vocalprobe.runtime.archive",
                                 "vocalprobe.runtime.datasets")),
    ("vocalprobe.runtime.engine", ("vocalprobe.runtime.field", "vocalprobe.runtime.archive",
                                   "vocalprobe.runtime.datasets")),
    ("vocalprobe.runtime.field", ("vocalprobe.runtime.archive",)),
    ("vocalprobe.runtime.archive", ("vocalprobe.runtime.field",)),
])
def test_dependencies_point_one_way(room, forbidden):
    bad = [(name, target) for name, targets in internal_edges().items() if name.startswith(room)
           for target in targets if target.startswith(forbidden)]
    assert not bad, f"{room} must not import {forbidden}: {bad}"


def test_runtime_imports_no_heavy_library():
    bad = [(name, imported) for name, path in MODULES.items() if name.startswith("vocalprobe.runtime")
           for imported in imported_names(path) if imported.split(".")[0] in HEAVY]
    assert not bad, f"runtime/ must stay torch-free (what a recorder installs): {bad}"


def test_only_cli_faces_print():
    faces = {"vocalprobe.cli", "vocalprobe.demo", "vocalprobe.__main__"}
    bad = []
    for name, path in MODULES.items():
        if name in faces or name.startswith("vocalprobe.commands."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else (
                    f"{getattr(func.value, 'id', '')}.{func.attr}" if isinstance(func, ast.Attribute) else "")
                if called in {"print", "typer.echo", "typer.secho", "sys.stdout.write", "sys.stderr.write"}:
                    bad.append(f"{name}:{node.lineno} {called}")
    assert not bad, f"library modules must not print (return values, raise, or log instead): {bad}"
