"""The lesson on top: five files at the root, the machinery below them, imports one way."""
import ast
import inspect
import os

import train_mnist
from helpers import LESSON, ROOT


def _python_files(folder):
    for base, dirs, names in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        yield from (os.path.join(base, name) for name in names if name.endswith(".py"))


def _imported(path):
    """The top-level module names a file imports, anywhere in it."""
    with open(path) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_the_root_holds_the_five_lesson_files_and_the_package_none_of_them():
    assert {name for name in os.listdir(ROOT) if name.endswith(".py")} == set(LESSON)
    lesson_modules = {name[:-3] for name in LESSON}
    for path in _python_files("harness"):
        assert not _imported(path) & lesson_modules, path
    with open(os.path.join(ROOT, "harness", "__init__.py")) as f:
        init = ast.parse(f.read())
    # A docstring at most: importing the package runs nothing.
    assert all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
               for node in init.body)


def test_train_is_short_names_simple_bind_and_uses_few_outside_names():
    source = inspect.getsource(train_mnist.train)
    assert len(source.splitlines()) <= 50
    tree = ast.parse(source)
    # Names taken from other modules: module.name, counted once each.
    modules = {"data", "metrics", "devices", "network", "optimizer", "os"}
    # MXNet's own binding call, on the symbol: not a function of a module of ours.
    assert any(isinstance(node, ast.Attribute) and node.attr == "simple_bind"
               and isinstance(node.value, ast.Name) and node.value.id not in modules
               for node in ast.walk(tree))
    outside = {(node.value.id, node.attr) for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
               and node.value.id in modules}
    assert 0 < len(outside) <= 20, sorted(outside)


def _own_code():
    """The project's own Python files, tests aside: the lesson, the package, benchmarks, CI."""
    yield from (os.path.join(ROOT, name) for name in LESSON)
    for folder in ("harness", "benchmarks", ".ci"):
        yield from _python_files(folder)


def test_no_class_is_over_250_lines_and_no_function_over_60():
    for path in _own_code():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                assert lines <= 250, f"{path}: class {node.name} is {lines} lines"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert lines <= 60, f"{path}: {node.name} is {lines} lines"


def test_no_function_takes_more_than_six_parameters_besides_self():
    for path in _own_code():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                names += [a.arg for a in (args.vararg, args.kwarg) if a]
                names = [n for n in names if n not in ("self", "cls")]
                assert len(names) <= 6, f"{path}: {node.name} takes {names}"


def test_every_docstring_holds_its_whole_text():
    # A '#' comment right under a docstring is text that help() does not show.
    continued = []
    for path in ([os.path.join(ROOT, name) for name in LESSON] + list(_python_files("harness"))
                 + list(_python_files("benchmarks"))):
        with open(path) as f:
            lines = f.read().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and ast.get_docstring(node) is not None
                    and lines[node.body[0].end_lineno].strip().startswith("#")):
                continued.append(f"{os.path.relpath(path, ROOT)}:{node.name}")
    assert continued == []
