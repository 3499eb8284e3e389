"""The layering of the packages (ARCHITECTURE.md): what may import what, and no import cycle between
modules. Read from the source (every import statement, lazy ones inside functions included)."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGES = ("configs", "shards", "manifests", "pipeline", "student")
# package -> the project packages it may import (besides itself)
ALLOWED = {
    "configs": set(),
    "shards": set(),
    "manifests": {"shards"},
    "pipeline": {"configs", "shards", "manifests"},
    "student": {"configs", "shards", "manifests"},
}


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package `level - 1` above this module's
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_each_package_imports_only_the_layers_below_it():
    for module, targets in project_imports().items():
        package = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            assert other == package or other in ALLOWED[package], f"{module} imports {target}"


def test_the_import_graph_has_no_cycle():
    graph = project_imports()
    state: dict[str, str] = {}  # module -> "open" while on the path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_student_never_imports_pipeline_at_run_time():
    """Not even through another package: the trainer's process never holds a pipeline module."""
    code = ("import sys, student.train, student.loader, student.model, student.teacher_heads, student.inspect_cache; "
            "student.train.main.__code__; "
            "bad = [m for m in sys.modules if m == 'pipeline' or m.startswith('pipeline.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
