"""The layout of the package: one subject per module, imports that read bottom-up, and no module too long to read.

The project's own modules are the .py files at the top of the repository. Each may import the ones below it and
none above it, so the import graph has no cycle, and every import of a project module is at the top of its file
(an import inside a function would hide a dependency, or dodge a cycle).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = {path.stem: path for path in sorted(ROOT.glob("*.py"))}


def project_imports(path):
    """(module imported, line, whether at the top level of the file) for each import of a project module in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module.split(".")[0]]
        else:
            continue
        for name in names:
            if name in MODULES:
                yield name, node.lineno, id(node) in top_level


def import_graph():
    return {name: {imported for imported, _, _ in project_imports(path)} for name, path in MODULES.items()}


def find_cycle(graph):
    """A list of modules that import each other in a circle, or None (depth-first search)."""
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for imported in sorted(graph[name]):
            if state.get(imported) == "open":
                return stack[stack.index(imported):] + [imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        state[name] = "done"
        stack.pop()
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def test_the_project_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_find_cycle_finds_one():
    """The check above can fail: a graph with a cycle is reported, one without is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_project_modules_are_imported_at_the_top_of_the_file(name):
    inside = [f"{imported} (line {line})" for imported, line, top in project_imports(MODULES[name]) if not top]
    assert not inside, f"{name}.py imports project modules inside a function or block: {', '.join(inside)}"


def test_the_lower_rooms_do_not_import_the_higher_ones():
    """The order of the rooms, from the bottom, as README.md's layout table lists them: images (utils) -> checkpoints
    -> fast_paths (the hardware speed paths the networks call) -> models -> porting -> ncnn_format -> inference ->
    degradations -> augmentations (the batch augmentations, which need utils only) -> metrics (which runs generators on
    test sets, and degrades their LR images) -> the data -> training."""
    order = ["utils", "checkpoints", "fast_paths", "models", "porting", "ncnn_format", "inference", "degradations",
             "augmentations", "metrics", "datasets", "cli", "training", "training_log"]
    graph = import_graph()
    for position, name in enumerate(order):
        higher = graph[name] & set(order[position + 1:])
        assert not higher, f"{name}.py imports {sorted(higher)}, which come after it"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_too_long_to_read(name):
    limit = 500 if name == "utils" else 1000
    n_lines = len(MODULES[name].read_text().splitlines())
    assert n_lines <= limit, f"{name}.py has {n_lines} lines (at most {limit}): split it by subject"
