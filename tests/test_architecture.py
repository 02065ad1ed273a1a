"""The import contract of ``src/modelcycle``: layers point one way and no module imports itself
back through others, lazy (function-level) imports included, since a lazy import only hides a
cycle until the day someone moves it to the top.

The source is read with ``ast``, nothing is imported. The two allowlists hold what the
architecture issue (15) has not untangled yet; they may only shrink: an entry that no longer
happens fails too, so whoever removes a cycle or an upward arrow also removes its entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "modelcycle"

# Lower layers never import higher ones. A module's layer is that of its longest prefix here.
LAYERS = {
    1: (
        *("config", "config_sections", "config_keys", "runs", "runfiles", "runlogs", "runlock"),
        *("errors", "progress", "_version", "cli_common"),
    ),
    2: ("engine", "models", "data", "lm", "track", "packages"),
    3: ("tasks",),
    4: ("training", "evaluation", "export", "compress", "tuning", "serve", "monitor", "ui"),
    5: ("api", ""),  # "": the package's __init__ (the public names)
    6: ("cli", "cli_lm", "cli_runs", "cli_deploy", "cli_config", "cli_help", "cli_ui", "__main__"),
}

# (importer, imported) arrows that point up today; to be removed by issue 15's steps.
KNOWN_UP: set[tuple[str, str]] = set()

# Modules that sit on an import cycle today (strongly connected components of the graph).
KNOWN_CYCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = path.relative_to(SRC / PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body, ``if TYPE_CHECKING:`` left out."""
    found: set[str] = set()

    def resolve(dotted: str) -> str | None:
        if dotted != PACKAGE and not dotted.startswith(PACKAGE + "."):
            return None
        name = dotted[len(PACKAGE) + 1 :]
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(filter(None, (resolve(alias.name) for alias in child.names)))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                base = resolve(child.module)
                for alias in child.names:  # `from modelcycle import runs` imports the module runs
                    sub = resolve(f"{child.module}.{alias.name}")
                    found.add(sub if sub and sub != base else base)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name is not None}


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it names ("" is the package's __init__: ``import modelcycle``,
    ``from modelcycle import __version__``)."""
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _layer(module: str) -> int:
    best, layer = -1, None
    for number, prefixes in LAYERS.items():
        for prefix in prefixes:
            matches = module == prefix or (prefix != "" and module.startswith(prefix + "."))
            if matches and len(prefix) > best:
                best, layer = len(prefix), number
    assert layer is not None, f"modelcycle.{module or '__init__'} has no layer in tests/test_architecture.py's LAYERS"
    return layer


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.add(frozenset(component))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)


def test_no_new_import_cycles():
    cycles = _cycles(_graph())
    new = cycles - KNOWN_CYCLES
    assert not new, f"new import cycles (lazy imports count): {[sorted(c) for c in new]}"
    gone = KNOWN_CYCLES - cycles
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


def test_layers_point_one_way():
    up = {(a, b) for a, targets in _graph().items() for b in targets if _layer(b) > _layer(a)}
    new = up - KNOWN_UP
    assert not new, f"imports that point up a layer: {sorted(new)}"
    gone = KNOWN_UP - up
    assert not gone, f"these upward imports are gone: remove them from KNOWN_UP: {sorted(gone)}"


def test_the_walker_sees_lazy_imports_and_cycles():
    """The checks above are only as good as the graph: a lazy import is an arrow, a loop a cycle."""
    modules = _modules()
    assert "tuning.search" in _imports(modules["tuning"], modules)  # a function-level import
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


# task names as the built-in plugins spell them; a test of its own keeps this file free of imports
TASK_NAMES = {"classify", "text_classify", "distill", "lm", "sft", "reward", "dpo", "ppo"}


def _task_name_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Comparisons with a task name (``task == "reward"``, ``x in ("lm", "sft")``) and task-name
    defaults of a lookup (``manifest.get("task", "sft")``): the ways code asks "which task is this"."""
    found = []

    def names_in(node: ast.AST) -> set[str]:
        values = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
        return {v.value for v in values if isinstance(v, ast.Constant) and v.value in TASK_NAMES}

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                found += [(node.lineno, name) for name in names_in(side)]
        elif _is_task_lookup(node):
            found += [(node.lineno, name) for name in names_in(node.args[1])]
    return found


def _is_task_lookup(node: ast.AST) -> bool:
    """``anything.get("task", default)``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"):
        return False
    return len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value == "task"


def test_no_task_names_are_compared_outside_tasks():
    """Which task a run or package is gets asked of its plugin (tasks/registry.py), never
    answered by comparing names: a new task then needs no edit outside its plugin."""
    offenders = [
        f"src/modelcycle/{path.relative_to(SRC / PACKAGE)}:{line} ({name!r})"
        for module, path in _modules().items()
        if not module.startswith("tasks")
        for line, name in _task_name_uses(ast.parse(path.read_text()))
    ]
    assert not offenders, f"task names compared outside tasks/ (ask the plugin instead): {offenders}"


def test_the_task_name_check_sees_comparisons_and_defaults():
    code = 'a = task == "lm"\nb = t in ("sft", "x")\nc = m.get("task", "classify")\nd = view == "pairs"'
    assert sorted(name for _, name in _task_name_uses(ast.parse(code))) == ["classify", "lm", "sft"]


MAX_MODULE_LINES = 420  # "no module over about 400 lines" (issue 15): past that, split by what it holds


def test_no_module_is_over_about_400_lines():
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by what they hold): {long}"
