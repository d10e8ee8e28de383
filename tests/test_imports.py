"""The package's import graph, read from the source with ast: no circles, no import of a cnnlab
module inside a function, and every package's ``__init__`` lists its public API."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
ROOT = "cnnlab"


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package (packages as their __init__)."""
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = [ROOT, *f.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str) -> tuple[list[str], list[tuple[int, str]]]:
    """(cnnlab modules imported at module level, [(line, module)] imported inside a function or class).
    Imports under ``if TYPE_CHECKING:`` are annotations only and are left out."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top: list[str] = []
    inner: list[tuple[int, str]] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names if a.name == ROOT or a.name.startswith(ROOT + ".")]
        base = _resolve(name, node.level, node.module)
        if not (base == ROOT or base.startswith(ROOT + ".")):
            return []
        # `from pkg import sub` imports the submodule pkg.sub; `from pkg import obj` the package.
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = targets(child)
                if in_function:
                    inner.extend((child.lineno, t) for t in found)
                else:
                    top.extend(found)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                             ast.Lambda)))

    visit(tree, False)
    return top, inner


def _graph() -> dict[str, set[str]]:
    """Module -> the modules whose code runs when it is imported: what it imports, plus the packages
    above those that it is not itself inside (importing ``cnnlab.train.stats`` from ``cnnlab.report``
    runs ``cnnlab/train/__init__.py`` first)."""
    graph: dict[str, set[str]] = {}
    for name in MODULES:
        edges: set[str] = set()
        for target in _imports(name)[0]:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                anc = ".".join(parts[:i])
                inside = name == anc or name.startswith(anc + ".")
                if anc in MODULES and (anc == target or not inside):
                    edges.add(anc)
        edges.discard(name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
            strong(v)
    return out


def test_the_graph_reader_sees_circles_and_parent_packages():
    """The checks below would pass on an empty graph: this one shows the reader finds real edges."""
    g = _graph()
    assert "cnnlab.train" in g["cnnlab.report.loggers"]  # through the package: its __init__ runs
    assert "cnnlab.train.callbacks" in g["cnnlab.train.trainer"] and "cnnlab.train" not in g["cnnlab.train.trainer"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_cnnlab_import_inside_a_function():
    found = [f"{MODULES[name].relative_to(SRC.parent)}:{line} imports {target}"
             for name in MODULES for line, target in _imports(name)[1]]
    assert not found, "imports of cnnlab modules inside functions:\n" + "\n".join(found)


def test_only_the_two_lazy_tables_import_by_name():
    """Two places load cnnlab modules by name on purpose, so that `import cnnlab` and the listing
    commands stay light: the notebook API table in cnnlab/__init__.py and the command table of the
    CLI. (The loggers import their optional third-party packages by name: mlflow, tensorboard.)"""
    users = sorted(str(f.relative_to(SRC)) for f in MODULES.values() if "import_module(" in f.read_text())
    assert users == ["__init__.py", "cli/__init__.py", "report/loggers.py"]


@pytest.mark.parametrize("package", sorted(n for n in MODULES if _is_package(n)))
def test_every_package_lists_its_public_api(package):
    mod = importlib.import_module(package)
    assert mod.__doc__ and mod.__doc__.strip(), f"{package} has no docstring saying what it holds"
    if package == "cnnlab.cli":
        assert set(mod.COMMANDS) >= {"run", "resume", "evaluate", "predict", "sweep", "runs"}
        return
    assert mod.__all__, f"{package}.__all__ is empty"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"


@pytest.mark.skipif(not (SRC.parents[1] / ".git").exists() or shutil.which("git") is None,
                    reason="not a git checkout (or no git): nothing can be ignored by mistake")
def test_no_source_or_test_file_is_ignored_by_git():
    """A .gitignore pattern once hid the whole data package (``data/`` matched src/cnnlab/data/):
    the tests passed here and CI failed at import. Every source and test file must be committable."""
    out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "src", "tests"],
                         cwd=SRC.parents[1], capture_output=True, text=True, check=True).stdout.split("\n")
    hidden = [f for f in out if f.endswith((".py", ".toml", ".md", ".json")) and "egg-info" not in f]
    assert not hidden, f"files git ignores: {hidden}"
