"""The README works as written: its commands name flags and files that exist, its output prints."""
import json
import os
import re
import shlex

import pytest

import train_mnist
from harness import cli
from helpers import ROOT

with open(os.path.join(ROOT, "README.md")) as _f:
    README = _f.read()


def _blocks(kind, text=README):
    """The text of each fenced block of a Markdown text whose language is kind ('' for none)."""
    blocks, current = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language == kind:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _commands(text=README):
    """Each command of a text's bash blocks, split into words: `&&` chains and `\\` lines joined."""
    commands = []
    for block in _blocks("bash", text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            # Comments and lines that only set shell variables for the next ones.
            if line.startswith(("#", "export ")) or "=$(" in line.split(" ")[0]:
                continue
            for part in line.split("&&"):
                if part.strip():
                    commands.append(shlex.split(part.strip()))
    return commands


def _check(words):
    """Fail unless a command is one of those known, naming only flags and files that exist."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]) or words[:1] == ["env"]:
        words = words[1:]
    if "train_mnist.py" in words:
        at = words.index("train_mnist.py")
        assert os.path.basename(words[at - 1]).startswith("python"), words
        # The trainer's own flags; exits 2 on an unknown flag or a bad value.
        cli.parse(train_mnist.Config, [word for word in words[at + 1:] if word != "&"])
        launcher = words[:at - 1]
        assert launcher == [] or launcher[:3] == ["python", "-m", "harness.launch"] and (
            launcher[-1] == "--" and os.path.exists(os.path.join(ROOT, "harness", "launch.py"))
        ) or launcher[0] in ("horovodrun", "srun"), words
    elif words[0] == "python" and words[1].endswith(".py"):
        assert os.path.exists(os.path.join(ROOT, words[1])), words
    elif words[:2] == ["pip", "install"] and "-r" in words:
        assert os.path.exists(os.path.join(ROOT, words[words.index("-r") + 1])), words
    elif words[:2] == ["pip", "install"]:
        # A package of its own, pinned, with nothing else of the lock moved.
        assert words[2] == "--no-deps" and re.fullmatch(r"mxnet-cu\d+==1\.9\.1", words[3]), words
    elif words[0] in ("python3", ".", "mkdir", "python3.11") or words[:2] == ["pip", "uninstall"]:
        return
    elif words[:3] == ["python", "-m", "pytest"] or words[:2] == ["python", "-c"]:
        return
    else:
        pytest.fail(f"a command this check does not know: {' '.join(words)}")


def test_the_readme_is_short_and_for_a_user():
    assert len(README.splitlines()) <= 250
    assert not re.search(r"\bissue\b|the README promised", README, re.I)


def test_every_command_names_only_flags_and_files_that_exist():
    commands = _commands()
    assert any(words[:2] == ["python", "train_mnist.py"] for words in commands)
    for words in commands:
        _check(words)


def test_the_quick_start_installs_with_the_same_two_commands_as_docs_python_md():
    with open(os.path.join(ROOT, "docs", "python.md")) as f:
        documented = _blocks("bash", f.read())[0].splitlines()
    quick_start = _blocks("bash")[0].splitlines()
    assert [line.rsplit(" && ", 1)[0] for line in quick_start] == documented
    assert len(documented) == 2 and all("pip install --no-deps -r" in line for line in documented)


@pytest.mark.parametrize(
    "page", sorted(name for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
)
def test_every_command_of_the_docs_names_only_flags_and_files_that_exist(page):
    with open(os.path.join(ROOT, "docs", page)) as f:
        for words in _commands(f.read()):
            _check(words)


def test_the_readme_shows_the_loop_as_it_is_in_the_code():
    loop = next(block for block in _blocks("python") if "exe.forward(is_train=True)" in block)
    with open(os.path.join(ROOT, "train_mnist.py")) as f:
        assert loop in f.read()


def test_every_linked_page_exists():
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        assert os.path.exists(os.path.join(ROOT, link)), link


def _masked(line):
    """A printed line without what changes from run to run: the speed and the time."""
    # The speed's width varies too (89191 or 101234 samples/s), and with it the spaces before it.
    return re.sub(
        r"\s+\d+ samples/s$", " N samples/s", re.sub(r"\s+\d+\.\d+ s$", " T s", line.rstrip())
    )


@pytest.mark.slow
def test_the_expected_output_is_what_the_command_prints(default_run_avx2):
    shown = next(block for block in _blocks("") if "final test accuracy" in block).splitlines()
    printed = [_masked(line) for line in default_run_avx2[0].splitlines()]
    # The first line depends on the machine's cores; the config line on the data folder given here.
    assert shown[0].startswith("threads: 1 (auto: 66 MFLOP a step per context, 1 context(s), ")
    assert printed[0].startswith("threads: 1 (auto: 66 MFLOP a step per context, 1 context(s), ")
    config = [line for line in printed if line.startswith(("config: ", "        "))]
    words = " ".join(line[8:] for line in config).split()
    for flag in ("--data-dir", "--metrics-file"):
        del words[words.index(flag):words.index(flag) + 2]
    assert shown[1] == "config: --lr 0.1" and words == ["--lr", "0.1"]
    for line in shown[2:]:
        if line != "...":
            assert _masked(line) in printed, line
    assert _masked(shown[-1]) == printed[-1]


def test_the_readmes_accuracies_are_the_recorded_default_runs():
    with open(os.path.join(ROOT, "tests", "fixtures", "default_run.json")) as f:
        recorded = json.load(f)["epochs"]
    avx2, avx512 = (recorded[isa][-1]["test_acc"] for isa in ("avx2", "avx512"))
    assert f"final test accuracy {avx2:.4f} after 15 epochs" in README
    assert f"ends at\n{100 * avx512:.2f}%" in README or f"ends at {100 * avx512:.2f}%" in README
