"""The package's import graph, read from the source with ast: no circles, no import of a cnnlab
module inside a function, every package's ``__init__`` lists its public API, and the listing
commands stay within their budget of modules (no torch for ``cnnlab runs`` and ``cnnlab datasets``,
no matplotlib or optuna for any listing)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import COMMANDS

from .test_catalog import make_run

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


def _lazy_table(package: str) -> dict[str, str]:
    """A package's ``_API`` table (name -> its submodule, loaded on first use by the package's
    ``__getattr__``), read from its ``__init__``; {} when it has none."""
    if package not in MODULES or not _is_package(package):
        return {}
    for node in ast.parse(MODULES[package].read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_API" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


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
        # `from pkg import sub` imports the submodule pkg.sub; `from pkg import obj` the package, or
        # the submodule that defines obj when the package loads it through its lazy table.
        lazy = _lazy_table(base)
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else
                f"{base}.{lazy[a.name]}" if a.name in lazy else base for a in node.names]

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
    assert {"cnnlab.report", "cnnlab.report.run"} <= g["cnnlab.runner"]  # through report's lazy table
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_cnnlab_import_inside_a_function():
    found = [f"{MODULES[name].relative_to(SRC.parent)}:{line} imports {target}"
             for name in MODULES for line, target in _imports(name)[1]]
    assert not found, "imports of cnnlab modules inside functions:\n" + "\n".join(found)


def test_only_the_lazy_tables_import_by_name():
    """Three places load cnnlab modules by name on purpose, so that `import cnnlab` and the listing
    commands stay light: the notebook API table in cnnlab/__init__.py, the command table of the CLI,
    and report/__init__.py's table (`cnnlab runs --html` needs the runs index, not the run report's
    torch and matplotlib). The graph above follows the package tables (_lazy_table). (The loggers
    import their optional third-party packages by name: mlflow, tensorboard.)"""
    users = sorted(str(f.relative_to(SRC)) for f in MODULES.values() if "import_module(" in f.read_text())
    assert users == ["__init__.py", "cli/__init__.py", "report/__init__.py", "report/loggers.py"]


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


# ------------------------------------------------------------------ the commands' budget of modules
# What each command must not import. The listings read JSON files and registries; torch and
# torchvision take 1-2 s to import, matplotlib and optuna about 0.5 s each. `cnnlab models` may load
# torch (the model registry is filled by the builders' modules), nothing that draws or searches.
# `cnnlab run` needs torch and matplotlib, but not torchvision for env.json's version (read from the
# package metadata) nor optuna.
# The listings and --help need no numpy (0.1 s) nor pydantic (the config's models: 0.15 s) either:
# run directories are read as JSON and TOML.
HEAVY = frozenset({"torch", "torchvision", "matplotlib", "optuna"})
LISTING = HEAVY | {"numpy", "pydantic"}
BUDGETS: dict[str, frozenset[str]] = {
    "runs": LISTING, "runs --group": LISTING, "runs --html": LISTING, "datasets": LISTING,
    "models": frozenset({"matplotlib", "optuna"}), "--version": LISTING, "--help": LISTING,
    "run": frozenset({"torchvision", "optuna"}),
}
QUICKSTART = SRC.parents[1] / "examples" / "quickstart.toml"


def _third_party(name: str) -> set[str]:
    """The top-level names of the packages other than cnnlab that module ``name`` imports when it is
    imported (module level; not inside functions, not under TYPE_CHECKING)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking(child) or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name.split(".")[0] for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.add(child.module.split(".")[0])
            visit(child)

    visit(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    return found - {ROOT}


def _path_to_heavy(starts: list[str], banned: frozenset[str]) -> list[str] | None:
    """The import chain from one of ``starts`` to a cnnlab module that imports a ``banned`` package
    at module level (its last element names the package), or None when there is none."""
    graph = _graph()
    seen = {s: [s] for s in starts}
    todo = list(starts)
    while todo:
        name = todo.pop(0)
        if bad := _third_party(name) & banned:
            return [*seen[name], f"imports {', '.join(sorted(bad))}"]
        for nxt in sorted(graph[name] - set(seen)):
            seen[nxt] = [*seen[name], nxt]
            todo.append(nxt)
    return None


@pytest.mark.parametrize("argv", list(BUDGETS))
def test_command_modules_import_nothing_over_budget(argv):
    """Read from the source: the modules a command loads (the CLI package, and the module its command
    lives in) reach no cnnlab module that imports, at module level, a package its budget bans."""
    command = argv.split()[0]
    starts = ["cnnlab.cli"] + ([f"cnnlab.cli.{COMMANDS[command][0]}"] if command in COMMANDS else [])
    chain = _path_to_heavy(starts, BUDGETS[argv])
    assert chain is None, f"`cnnlab {argv}` imports too much: " + " -> ".join(chain)


# Runs each command in a child forked from one process that has imported cnnlab.cli (as the console
# script has when it calls main): each child starts from the same modules a fresh `cnnlab` has, and
# reports what it loaded. One interpreter start for all the commands.
_FORKED = """
import json, os, sys
from cnnlab.cli import main
out = {}
for name, argv in json.loads(sys.argv[1]).items():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        sys.stdout = open(os.devnull, "w")  # the tables themselves are checked in test_catalog / test_cli
        try:
            code = main(argv)
        except SystemExit as e:  # --version and --help exit through argparse
            code = e.code
        except BaseException as e:  # reported as the exit code, so the parent says which command broke
            code = f"{type(e).__name__}: {e}"
        with os.fdopen(w, "w") as f:
            json.dump({"code": code, "modules": sorted(sys.modules)}, f)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out[name] = json.load(f)
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="runs each command in a forked child")
def test_commands_stay_within_their_budget_of_modules(tmp_path):
    """What each command has loaded when it is done, the listings on a runs folder with a completed
    run and a sweep's trial: no torch for `runs` (also --group, --html), `datasets`, --version and
    --help; no matplotlib or optuna for any listing, `models` included; no torchvision for a run."""
    runs = tmp_path / "runs"
    make_run(runs / "exp" / "s0")
    make_run(runs / "sweep" / "t" / "trials" / "0000" / "ts", name="sweep_0000")
    argvs = {a: a.split() + (["--runs-dir", str(runs)] if a.startswith("runs") else []) for a in BUDGETS}
    argvs["run"] += [str(QUICKSTART), "--set", "train.epochs=1", "--runs-dir", str(tmp_path / "new"), "-q"]
    r = subprocess.run([sys.executable, "-c", _FORKED, json.dumps(argvs)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    for argv, banned in BUDGETS.items():
        assert done[argv]["code"] == 0, f"`cnnlab {argv}` exited {done[argv]['code']}"
        loaded = {m.split(".")[0] for m in done[argv]["modules"]}
        assert not loaded & banned, f"`cnnlab {argv}` imported {sorted(loaded & banned)}"
    # the commands did their work: the runs were read, the page written, the registries listed
    assert "cnnlab.catalog" in done["runs"]["modules"] and "cnnlab.models" in done["models"]["modules"]
    assert (runs / "index.html").is_file() and "cnnlab.report.index" in done["runs --html"]["modules"]
    assert "cnnlab.dataset_names" in done["datasets"]["modules"]
    assert "cnnlab.runner" in done["run"]["modules"] and list((tmp_path / "new").glob("*/*/env.json"))
