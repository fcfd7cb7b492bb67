"""Every ```python block of README.md and docs/*.md runs as written, pasted into Python.

Each runs in a fresh interpreter started in a copy of the project's folder, as a user who pastes
it there would run it, after the files it reads exist: a checkpoint `runs/mlp` of 15 epochs, its
ONNX export and the test images, made by the trainer and by the docs' own commands on synthetic
MNIST. A block that is a verbatim excerpt of the project's code (the README's loop) is not run:
tests/test_readme.py checks that it is the code.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT, importable, need_onnx, write_mnist

PAGES = ["README.md"] + sorted(
    os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)


def fenced(page, language):
    """(page:line, text) of each block of a Markdown page fenced as ```language."""
    blocks, current = [], None
    with open(os.path.join(ROOT, page)) as f:
        for number, line in enumerate(f, 1):
            if line.startswith("```"):
                if current is None:
                    current, kind, start = [], line[3:].strip(), number
                else:
                    if kind == language:
                        blocks.append((f"{page}:{start}", "".join(current)))
                    current = None
            elif current is not None:
                current.append(line)
    return blocks


def _code():
    """The text of every .py file of the project but its tests."""
    texts = []
    for path in glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "*", "*.py")):
        if os.path.relpath(path, ROOT).split(os.sep)[0] != "tests":
            with open(path) as f:
                texts.append(f.read())
    return "\n".join(texts)


SNIPPETS = [block for page in PAGES for block in fenced(page, "python")]
CODE = _code()
# An excerpt of a function body: indented, and verbatim in the code.
EXCERPTS = [where for where, text in SNIPPETS if text.startswith(" ") and text in CODE]
RUN = [(where, text) for where, text in SNIPPETS if where not in EXCERPTS]
# The one-line Python programs of the bash blocks.
ONE_LINERS = [
    (where, line)
    for page in PAGES
    for where, block in fenced(page, "bash")
    for line in block.splitlines()
    if line.startswith("python -c ")
]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(folder, environment): a copy of the project, a checkpoint in it, synthetic MNIST beside."""
    base = tmp_path_factory.mktemp("snippets")
    folder, mnist = str(base / "project"), str(base / "mnist")
    os.makedirs(mnist)
    write_mnist(mnist)
    shutil.copytree(
        ROOT, folder, ignore=shutil.ignore_patterns(".*", "__pycache__", "tests", "runs", "docs")
    )
    # The user's environment, without the tests' own quieting of MXNet; the data in MNIST_DIR.
    env = dict(os.environ, MNIST_DIR=mnist, MXNET_HOME=str(base / "mxnet_home"))
    env.pop("MXNET_SUBGRAPH_VERBOSE", None)
    os.makedirs(os.path.join(folder, "runs"))
    _shell(folder, env, "python train_mnist.py --model-prefix runs/mlp --num-epochs 15 "
                        "--num-hidden 16 --batch-size 525 --disp-batches 0 --plot-dir none")
    # The docs' own command for the test images.
    images = next(line for _, block in fenced("docs/export.md", "bash")
                  for line in block.splitlines() if "test-images.npy" in line)
    _shell(folder, env, images)
    if importable("onnx", "onnxruntime"):
        _shell(folder, env, "python train_mnist.py --model-prefix runs/mlp --load-epoch 15 "
                            "--num-hidden 16 --export-onnx runs/mlp.onnx")
    return folder, env


def _shell(folder, env, command):
    """Run a shell command in folder with this Python first on the PATH; fail on any error."""
    env = dict(env, PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    done = subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", (command, done.stderr)
    return done.stdout


def test_only_the_readme_s_loop_is_an_excerpt_and_every_other_block_is_run():
    assert len(EXCERPTS) == 1 and EXCERPTS[0].startswith("README.md:")
    assert {where.split(":")[0] for where, _ in RUN} >= {"README.md", "docs/networks.md",
                                                         "docs/python.md", "docs/export.md"}


@pytest.mark.parametrize("where, text", RUN, ids=[where for where, _ in RUN])
def test_the_snippet_runs_as_written_and_prints_nothing_on_stderr(project, where, text):
    folder, env = project
    if "onnxruntime" in text:
        need_onnx()
    done = subprocess.run([sys.executable, "-"], input=text, cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    if "print(probs.argmax(axis=1))" in text:
        # Five digits' classes: [7 2 1 0 4] on real MNIST, others on the synthetic digits.
        assert re.fullmatch(r"\[\d \d \d \d \d\]\n", done.stdout), done.stdout
    if "SymbolBlock" in text:
        # One sample's ten probabilities.
        assert done.stdout == "(1, 10)\n"


@pytest.mark.parametrize("where, line", ONE_LINERS, ids=[where for where, _ in ONE_LINERS])
def test_the_one_line_program_runs_as_written_and_prints_nothing_on_stderr(project, where, line):
    folder, env = project
    _shell(folder, env, line)
    written = re.findall(r"save\('(runs/[^']+)'", line)
    assert written and all(os.path.getsize(os.path.join(folder, path)) > 0 for path in written)
