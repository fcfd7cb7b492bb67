"""The two tiers: the quick one runs a function of every module of the lesson and of harness/.

And what every test's processes start with: the signals' defaults, whatever pytest inherited.
"""
import ast
import os
import signal
import subprocess
import sys

import pytest

from helpers import LESSON, REAL_MNIST, ROOT

TESTS = os.path.dirname(os.path.abspath(__file__))
REACH_SITE = os.path.join(TESTS, "reach")


def _modules():
    """The path of every module of the lesson and of harness/ that defines a function."""
    paths = [os.path.join(ROOT, name) for name in LESSON]
    folder = os.path.join(ROOT, "harness")
    paths += [os.path.join(folder, name) for name in sorted(os.listdir(folder))
              if name.endswith(".py")]
    return [path for path in paths if _functions(path)]


def _functions(path):
    """(name, line) of each function of a module, at its def line and at its first decorator's."""
    with open(path) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.add((node.name, node.lineno))
            # A decorated function's code starts at its first decorator (Python 3.8 on).
            if node.decorator_list:
                found.add((node.name, node.decorator_list[0].lineno))
    return found


def _reached(folder):
    """path -> the (name, first line) of each project function that a traced process ran."""
    reached = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            for line in f:
                path, function, first = line.rstrip("\n").split("\t")
                reached.setdefault(path, set()).add((function, int(first)))
    return reached


def test_the_module_list_holds_the_lesson_and_every_harness_module():
    names = [os.path.relpath(path, ROOT) for path in _modules()]
    assert [name for name in names if "/" not in name] == LESSON
    assert "harness/launch.py" in names and "harness/launched.py" in names and len(names) > 25


@pytest.mark.slow
def test_the_quick_tier_runs_a_function_of_every_module_of_the_lesson_and_of_harness(tmp_path):
    # The quick tier as the README runs it, each of its processes noting the project's functions
    # it runs (tests/reach/sitecustomize.py): children of the tests, and their children, included.
    reach = tmp_path / "reach"
    reach.mkdir()
    env = dict(os.environ, QUICK_TIER_REACH=str(reach),
               PYTHONPATH=os.pathsep.join(filter(None, [REACH_SITE, os.environ.get("PYTHONPATH")])))
    if REAL_MNIST:
        env["MNIST_DIR"] = REAL_MNIST
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
         str(tmp_path / "quick")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    # Whether the quick tier passes is its own tests' business; here, only that it ran.
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-3000:] + done.stderr[-3000:]
    reached = _reached(reach)
    unreached = [os.path.relpath(path, ROOT) for path in _modules()
                 if not _functions(path) & reached.get(os.path.realpath(path), set())]
    assert unreached == []


def test_a_signal_pytest_ignores_is_not_passed_on_to_the_processes_tests_start():
    # As under nohup: SIGHUP ignored. The child must get the default; pytest must stay immune.
    child = "import signal; print(signal.getsignal(signal.SIGHUP) is signal.SIG_DFL)"
    script = (f"import os, signal, subprocess, sys; sys.path.insert(0, {TESTS!r}); "
              "from helpers import pass_no_ignored_signals; pass_no_ignored_signals(); "
              f"said = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, "
              "text=True).stdout; os.kill(os.getpid(), signal.SIGHUP); "
              "print(said.strip(), 'alive')")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert ran.stdout.split() == ["True", "alive"], ran.stderr
