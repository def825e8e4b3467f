"""Conventions of the code base that a reader can check from the source alone (no JAX, no imports of the code):
function length, flags registered only by programs, integration tests marked as such."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("dipod_jax", "experiments", "launch", "benchmarks", "tests")
MAX_FUNCTION_LINES = 80
# A function may be longer when its docstring says why, with the words "on purpose" (make_train: "Long as a
# whole, on purpose: ..."). Functions whose owners have not done so yet, each with its reason:
LONG_FUNCTIONS: dict[str, str] = {}
FLAG_PROGRAMS = ("experiments", "benchmarks")


def _python_files(*packages):
    for package in packages:
        for directory, subdirectories, names in os.walk(os.path.join(REPO, package)):
            subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path, encoding="utf-8") as handle:
                        yield os.path.relpath(path, REPO), ast.parse(handle.read(), path)


def _functions(tree, prefix=""):
    """(qualified name, node) of every function, methods and nested functions included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def long_functions():
    """{"path::qualified name": (lines from def to end, docstring)} of the functions over MAX_FUNCTION_LINES."""
    found = {}
    for path, tree in _python_files(*PACKAGES):
        for name, node in _functions(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found[f"{path}::{name}"] = (lines, ast.get_docstring(node) or "")
    return found


def test_long_functions_state_why():
    """No function is over 80 lines (def to last line, docstring included) unless its docstring says why ("on
    purpose: ...") or it is listed in LONG_FUNCTIONS with its reason; a listed function that is no longer long
    must leave the list."""
    found = long_functions()
    unexplained = {name: lines for name, (lines, doc) in found.items()
                   if "on purpose" not in doc and name not in LONG_FUNCTIONS}
    assert not unexplained, (f"functions over {MAX_FUNCTION_LINES} lines: {unexplained}; split them, or say why "
                             f"in the docstring ('on purpose: ...')")
    stale = sorted(set(LONG_FUNCTIONS) - {name for name, (_, doc) in found.items() if "on purpose" not in doc})
    assert not stale, f"remove from LONG_FUNCTIONS (no longer over {MAX_FUNCTION_LINES} lines, or explained): {stale}"


def _flag_definitions_at_import(tree):
    """Line numbers of calls `<...>.DEFINE_*(...)` that run when the module is imported (outside functions)."""
    lines = []
    pending = [node for node in tree.body]
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            continue
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE")):
            lines.append(node.lineno)
        pending.extend(ast.iter_child_nodes(node))
    return sorted(lines)


def _is_main_guard(test):
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


@pytest.mark.parametrize("package", FLAG_PROGRAMS)
def test_programs_register_flags_only_when_run(package):
    """Experiments and benchmarks define their absl flags in a function called under `__main__`, never at
    import, so a test (or another program) can import several of them in one process."""
    at_import = {path: lines for path, tree in _python_files(package)
                 if (lines := _flag_definitions_at_import(tree))}
    assert not at_import, f"flags defined at import (move them into define_flags()): {at_import}"


def _module_imports(tree):
    """Top-level module names imported by the module's own top-level statements."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def _marked_integration(tree):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark"
                                                for t in node.targets):
            return "integration" in ast.unparse(node.value)
    return False


def test_test_files_that_run_programs_or_processes_are_integration():
    """A test file importing an experiment or tests/processes.py (several processes) at the top runs programs:
    it carries `pytestmark = pytest.mark.integration`, so the unit suite (-m "not integration and not slow")
    stays fast."""
    unmarked = [path for path, tree in _python_files("tests")
                if os.path.basename(path).startswith("test_")
                and _module_imports(tree) & {"experiments", "processes"} and not _marked_integration(tree)]
    assert not unmarked, f"add `pytestmark = pytest.mark.integration` to {unmarked}"


MAX_MODULE_DOCSTRING_LINES = 12


def test_module_docstrings_are_short_and_the_manual_lives_in_the_docs():
    """A module docstring says what the module is in at most MAX_MODULE_DOCSTRING_LINES lines; a module whose
    details moved to docs/modules.md has a section there under its dotted name."""
    with open(os.path.join(REPO, "docs", "modules.md")) as handle:
        guide = handle.read()
    too_long, unlisted = {}, []
    for path, tree in _python_files("dipod_jax", "experiments", "launch", "benchmarks"):
        doc = ast.get_docstring(tree) or ""
        if len(doc.splitlines()) > MAX_MODULE_DOCSTRING_LINES:
            too_long[path] = len(doc.splitlines())
        module = path[:-3].replace(os.sep, ".").removesuffix(".__init__")
        if "docs/modules.md" in doc and f"\n## {module}\n" not in guide:
            unlisted.append(module)
    assert not too_long, f"module docstrings over {MAX_MODULE_DOCSTRING_LINES} lines: {too_long}"
    assert not unlisted, f"modules pointing to docs/modules.md without a section there: {unlisted}"


# The rooms of dipod_jax by floor: a room imports only rooms on lower floors (data flows one way: configs and
# harness, losses and models -> diagnostics -> trainers), so the import graph has neither cycles nor back edges.
FLOORS = {"run": 0, "losses": 0, "models": 0, "diagnostics": 1, "toys": 2, "control": 2, "lm": 2}


def _imported_rooms(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "dipod_jax":
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dipod_jax."):
            yield node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            yield from (alias.name.split(".")[1] for alias in node.names if alias.name.startswith("dipod_jax."))


def test_library_imports_point_only_down_the_floors():
    """Every dipod_jax module imports only its own room or rooms on lower FLOORS; every room has a floor."""
    wrong = []
    for path, tree in _python_files("dipod_jax"):
        parts = path.split(os.sep)
        if len(parts) < 3:
            continue
        room = parts[1]
        assert room in FLOORS, f"{room}: a new room of dipod_jax needs its floor in FLOORS"
        for imported in _imported_rooms(tree):
            if imported != room and FLOORS.get(imported, 99) >= FLOORS[room]:
                wrong.append(f"{path} imports dipod_jax.{imported}")
    assert not wrong, wrong
