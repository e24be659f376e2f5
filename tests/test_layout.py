"""The package's import graph: no cycles (imports inside functions count too), the library
never imports the command-line layer, and a library module's own imports of the package sit at
its top (inside a function only where marked ``# deferred: <why>``).

Read from the source with ``ast`` (nothing is imported), so the test knows no module names: it
holds for whatever modules the package has. Imports under ``if TYPE_CHECKING:`` are left out
(they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "caphuman"
PACKAGE = PACKAGE_ROOT.name
COMMANDS = f"{PACKAGE}.commands"
# The command-line layer: these may import commands; nothing else may.
COMMAND_LAYER = (COMMANDS, f"{PACKAGE}.cli")


def in_command_layer(name: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in COMMAND_LAYER)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every Import/ImportFrom under ``node``, at any depth, except under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking_block(child):
            yield from (grandchild for branch in child.orelse for grandchild in _import_nodes_of(branch))
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _import_nodes(child)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    yield from _import_nodes(node)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports (``from a import b`` counts a.b when b is a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # `import caphuman.a.b` also runs caphuman.a; count the deepest module that exists.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith(PACKAGE):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. A package's own __init__ importing its
    submodules is not an edge that makes a cycle back through the submodule (Python imports
    the parent package first either way), so parent-package edges are left out."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):
                continue  # a submodule importing its own package (__init__) is always safe
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_command_line_layer_imports_commands():
    offenders = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        if not in_command_layer(name)
        for target in targets
        if target == COMMANDS or target.startswith(COMMANDS + ".")
    )
    assert not offenders, "; ".join(offenders)


def test_the_graph_reader_sees_imports_inside_functions(tmp_path):
    # The checks above are only as good as the reader: a function-level import is an edge.
    source = "def f():\n    from caphuman.errors import CapHumanError\n    import caphuman.config\n"
    path = tmp_path / "probe.py"
    path.write_text(source)
    modules = all_modules()
    assert imported_modules(f"{PACKAGE}.probe", path, modules) >= {f"{PACKAGE}.errors", f"{PACKAGE}.config"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Marks an import of the package inside a function that defers a heavy or optional dependency.
DEFERRED_MARK = "# deferred:"


def _imports_package(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] == PACKAGE
    return any(alias.name.split(".")[0] == PACKAGE for alias in node.names)


def unmarked_imports_inside_functions(path: Path) -> list[int]:
    """Line numbers of the package's imports inside functions (at any depth) that carry no
    ``# deferred:`` comment on their line or on the line just above."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()

    def marked(node: ast.stmt) -> bool:
        return any(DEFERRED_MARK in lines[number - 1] for number in (node.lineno, node.lineno - 1) if number >= 1)

    def visit(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)) and _imports_package(child) and not marked(child):
                yield child.lineno
            yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    return sorted(visit(ast.parse(source, str(path)), False))


def test_library_modules_import_the_package_at_their_top():
    """A reader sees a library module's dependencies at its top. Inside a function only an import
    that keeps a heavy or optional third-party dependency off a light path (`caphuman --help`, a
    backend the config did not choose) may stay, marked ``# deferred: <why>``. The command-line
    layer defers its imports so building the parser stays light, and is left out here."""
    offenders = [
        f"{path.relative_to(PACKAGE_ROOT.parent).as_posix()}:{line}"
        for name, path in all_modules().items()
        if not in_command_layer(name)
        for line in unmarked_imports_inside_functions(path)
    ]
    assert not offenders, f"move these imports to the module's top (or mark them '{DEFERRED_MARK} <why>'): " + ", ".join(offenders)


def test_the_deferred_import_reader_sees_unmarked_imports_at_any_depth(tmp_path):
    source = (
        "from caphuman.errors import CapHumanError\n"
        "def f():\n"
        "    from caphuman.config import load_config\n"
        "    import numpy\n"
        "    from caphuman.sweep import MAX_FRAMES  # deferred: a reason\n"
        "    # deferred: a reason\n"
        "    from caphuman.outputs import claim_folder\n"
        "class C:\n"
        "    def g(self):\n"
        "        def h():\n"
        "            from . import session\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert unmarked_imports_inside_functions(path) == [3, 11]


def package_folders() -> list[Path]:
    return sorted(path.parent for path in PACKAGE_ROOT.rglob("__init__.py"))


def test_every_package_folder_has_a_test_folder_and_a_line_in_the_readme():
    """README's layout table lists each package folder once, and tests/ mirrors the package."""
    readme = (PACKAGE_ROOT.parent / "README.md").read_text(encoding="utf-8")
    table_rows = [line for line in readme.splitlines() if line.startswith("| `")]
    tests_root = Path(__file__).resolve().parent
    for folder in package_folders():
        relative = folder.relative_to(PACKAGE_ROOT.parent).as_posix()
        rows = [row for row in table_rows if row.startswith(f"| `{relative}/` |")]
        assert len(rows) == 1, f"README's layout table needs exactly one line for {relative}/"
        if folder != PACKAGE_ROOT and folder.parent == PACKAGE_ROOT:
            assert (tests_root / folder.name).is_dir(), f"tests/{folder.name}/ should hold the tests of {relative}/"
