"""The requirements files: a lock per Python, whole, and what this environment has installed."""
import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import ROOT

FILES = ["requirements.txt", "requirements-test.txt", "requirements-onnx.txt"]
# Every Python the lock names, and the next, which takes the last range.
PYTHONS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13", "3.14"]
NUMPY = {"3.8": "1.23.5", "3.9": "1.23.5", "3.10": "1.23.5", "3.11": "1.23.5",
         "3.12": "1.26.4", "3.13": "2.2.6"}


def _lines(name):
    """The requirement lines of a file with those of the files it includes (-r), in order."""
    lines = []
    with open(os.path.join(ROOT, name)) as f:
        for line in f:
            line = line.strip()
            if line.startswith("-r "):
                lines += _lines(line[3:].strip())
            elif line and not line.startswith("#"):
                lines.append(line)
    return lines


def _pins(name, python):
    """name -> the version the file pins on this Python (X.Y), each package at most once."""
    environment = dict(default_environment(), python_version=python, python_full_version=python)
    pins = {}
    for line in _lines(name):
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            key = canonicalize_name(requirement.name)
            assert key not in pins, f"{name}: two pins of {key} on Python {python}"
            pins[key] = str(requirement.specifier)[2:]
    return pins


@pytest.mark.parametrize("name", FILES)
def test_every_line_pins_one_version_for_a_range_of_pythons(name):
    for line in _lines(name):
        requirement = Requirement(line)
        assert len(requirement.specifier) == 1, line
        assert str(requirement.specifier).startswith("==") and "*" not in line, line
        assert not requirement.extras and requirement.url is None, line
        if requirement.marker is not None:
            marker = str(requirement.marker)
            assert re.fullmatch(r'(python_version [<>=]=? "3\.\d+"( and )?)+', marker), line


@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("name", FILES)
def test_each_python_gets_one_version_of_each_package_and_mxnet_with_its_numpy(name, python):
    pins = _pins(name, python)
    assert pins["mxnet"] == "1.9.1"
    assert pins["numpy"] == NUMPY.get(python, NUMPY["3.13"])
    if name != "requirements.txt":
        assert set(_pins("requirements.txt", python)) < set(pins)


def test_docs_python_md_names_the_numpy_of_each_python():
    with open(os.path.join(ROOT, "docs", "python.md")) as f:
        text = f.read()
    assert "| 3.8 to 3.11 | 1.23.5 |" in text
    assert "| 3.12 | 1.26.4," in text and "| 3.13 | 2.2.6 " in text


def test_this_environment_lacks_no_requirement_of_an_installed_package_but_mxnet_s_numpy():
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    unmet = [line for line in done.stdout.splitlines() if "Location" not in line]
    if metadata.version("numpy").split(".")[0] == "2":
        assert unmet == ["mxnet 1.9.1 has requirement numpy<2.0.0,>1.16.0, but you have numpy "
                         + metadata.version("numpy") + "."]
    else:
        assert unmet == ["No broken requirements found."] and done.returncode == 0


def test_this_environment_runs_with_the_versions_the_lock_pins_for_its_python():
    # The packages the trainer runs with; the test and ONNX tools may differ in a developer's
    # environment without changing a figure (pip check above still holds them to each other).
    python = "{}.{}".format(*sys.version_info[:2])
    differ = {}
    for package, version in _pins("requirements.txt", python).items():
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            differ[package] = (installed, version)
    assert differ == {}, "(installed, locked): pip install --no-deps -r requirements.txt"
