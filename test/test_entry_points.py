"""The entry points import only the stages' public names (issue 23).

An entry module defines a command or hands one over: it defines or imports a ``main`` at its top
level (``process.py``, ``train/``, ``drac_algo/<command>.py``, every ``__main__.py``, the ``cli``
modules and the stage modules that hold a command's ``main``). Every import of project code in
it, at any depth (the lazy ones inside ``main`` too), names public things only: no component of
the module's path and no imported name starts with ``_`` (dunder names such as ``__main__`` are
not private), and no ``_name`` is reached as an attribute of what it imported.

import-linter sees modules, not names: the ``private_modules`` contract in pyproject.toml refuses
a private module imported from outside its package (everywhere, not only here); the names are
checked here, with :mod:`ast`, without importing anything."""

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = {"drac_algo", "train", "process"}


def is_private(name: str) -> bool:
    """``_name`` is private; ``__name__`` (``__main__``, ``__init__``) is not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return [
        REPO / "process.py",
        *sorted((REPO / "drac_algo").rglob("*.py")),
        *sorted((REPO / "train").rglob("*.py")),
    ]


def defines_a_command(tree: ast.Module) -> bool:
    """A ``main`` defined, or imported to be run, at the module's top level."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.ImportFrom) and any(
            (alias.asname or alias.name) == "main" for alias in node.names
        ):
            return True
    return False


def entry_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for path in source_files()
        if defines_a_command(ast.parse(path.read_text(encoding="utf-8")))
    }


def _imported_module(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute name of the module a ``from ... import`` reads (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not is_package:
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_imports(source: str, importer: str, *, is_package: bool = False) -> list[str]:
    """Every place where ``source`` (the module ``importer``) imports or reaches a private name
    of project code, as ``"line N: <code>"``; empty when it uses public names only."""
    tree = ast.parse(source)
    found = []
    bound = set()  # names this module binds to project code by importing it

    def refuse(node: ast.AST) -> None:
        found.append(f"line {node.lineno}: {ast.unparse(node)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in PROJECT:
                    bound.add(alias.asname or parts[0])
                    if any(map(is_private, parts)):
                        refuse(node)
        elif isinstance(node, ast.ImportFrom):
            parts = _imported_module(node, importer, is_package).split(".")
            if parts[0] not in PROJECT:
                continue
            bound.update(alias.asname or alias.name for alias in node.names)
            if any(map(is_private, parts)) or any(is_private(a.name) for a in node.names):
                refuse(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                refuse(node)
    return found


ENTRY_MODULES = entry_modules()


def test_every_command_is_an_entry_module():
    """The check below covers every console command, every ``python -m`` module and process.py
    (so it cannot pass by finding no entry points)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    targets = {target.split(":")[0] for target in scripts.values()}
    python_m = {module_name(p) for p in source_files() if p.name == "__main__.py"}
    commands = {module_name(p) for p in (REPO / "drac_algo").glob("*.py")} - {"drac_algo"}
    assert targets | python_m | commands | {"process"} <= set(ENTRY_MODULES)
    assert len(commands) == 9, sorted(commands)


@pytest.mark.parametrize("module", sorted(ENTRY_MODULES))
def test_entry_points_import_only_public_names(module):
    path = ENTRY_MODULES[module]
    found = private_imports(
        path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
    )
    assert not found, (
        f"{path.relative_to(REPO)} imports private names of project code (an entry point uses "
        f"a stage's public functions only; make the name public in its stage or move the "
        f"work there): {found}"
    )


@pytest.mark.parametrize(
    "source",
    [
        "from drac_algo.serve.pipeline import _run_checked",
        "from drac_algo.serve.pipeline import run, _run_checked as go",
        "from drac_algo.engine._views import main",
        "import drac_algo.engine._views",
        "import drac_algo.serve.pipeline as p\np._run_checked()",
        "from drac_algo.serve import pipeline\n\ndef main():\n    pipeline._run_checked()",
        "def main():\n    from drac_algo.serve.pipeline import _run_checked",
        "from ._views import main",
        "from . import _views",
    ],
)
def test_a_private_import_is_caught(source):
    assert private_imports(source, "drac_algo.serve.cli")


@pytest.mark.parametrize(
    "source",
    [
        "from drac_algo.tools.ablate.__main__ import main",
        "from drac_algo.serve.pipeline import BatchOptions, RunConfig, run",
        "import drac_algo.serve.pipeline as p\np.run()",
        "from . import pipeline",
        "from os import _exit\nimport sys\nsys._getframe()",  # not project code
        "class A:\n    def f(self):\n        return self._x",
    ],
)
def test_public_imports_pass(source):
    assert private_imports(source, "drac_algo.serve.cli") == []
