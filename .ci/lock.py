"""Write the requirements files: every package pinned, for each Python from 3.8 to 3.13.

They are installed with `pip install --no-deps -r FILE` (docs/python.md), because mxnet 1.9.1's
metadata asks for numpy<2 and Python 3.13 has wheels of numpy 2 only: so each file must hold the
whole closure of what it asks for. This script asks pip's own resolver, on each Python, for the
newest versions with wheels that fit the wants below (mxnet's own requirements, but its numpy,
spelled out), walks each file's closure through the packages' metadata, and writes one line per
package and range of Pythons. It needs each Python of PYTHONS (pyenv's, or python3.X on PATH) and
`packaging`:

    python .ci/lock.py
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")

RUN = [
    # mxnet 1.9.1's own requirements but numpy: it asks for numpy<2, a bound lifted on 3.13.
    "requests>=2.20.0,<3",
    "graphviz>=0.8.1,<0.9",
    # numpy 1.24 removed numpy.bool, which mxnet binds: up to 3.11, an older numpy imports it as is.
    'numpy==1.23.5; python_version < "3.12"',
    # The first numpy with wheels for 3.12, and for 3.13: harness/compat.py restores what mxnet
    # binds. setuptools gives the distutils that mxnet imports, gone from Python 3.12.
    'numpy==1.26.4; python_version == "3.12"',
    'numpy==2.2.6; python_version >= "3.13"',
    'setuptools; python_version >= "3.12"',
    # The three pictures of a finished run, and --predict's images: Pillow 10.4.0 is the last with
    # wheels for 3.8, 11.0.0 the first for 3.13.
    "matplotlib>=3.7",
    'Pillow==10.4.0; python_version < "3.13"',
    'Pillow>=11; python_version >= "3.13"',
]
TEST = ["pytest>=7", "hypothesis>=6", "ruff==0.17.6"]
ONNX = [
    # mxnet's converter imports onnx.mapping, which onnx 1.19 removed; 1.16.2 has wheels for 3.8 to
    # 3.12, 1.18.0 is the first with wheels for 3.13.
    'onnx==1.16.2; python_version < "3.13"',
    'onnx==1.18.0; python_version >= "3.13"',
    # 1.18.1: wheels for 3.8 to 3.12, and numpy<1.24 accepted (1.17 needs numpy>=1.24.2); 1.20.1 is
    # the first with wheels for 3.13.
    'onnxruntime==1.18.1; python_version < "3.13"',
    'onnxruntime==1.20.1; python_version >= "3.13"',
]
FILES = {
    "requirements.txt": (RUN, None, "pip install --no-deps -r requirements.txt"),
    "requirements-test.txt": (
        RUN + TEST, "requirements.txt", "pip install --no-deps -r requirements-test.txt"
    ),
    "requirements-onnx.txt": (
        RUN + ONNX, "requirements.txt", "pip install --no-deps -r requirements-onnx.txt"
    ),
}


def python(version):
    """The interpreter of a Python version: pyenv's newest, else python3.X on PATH."""
    versions = os.path.expanduser("~/.pyenv/versions")
    found = sorted(
        (name for name in os.listdir(versions) if name.startswith(version + "."))
        if os.path.isdir(versions)
        else [],
        key=lambda name: [int(part) for part in name.split(".") if part.isdigit()],
    )
    if found:
        return os.path.join(versions, found[-1], "bin", "python")
    on_path = shutil.which("python" + version)
    if on_path is None:
        sys.exit(f"lock: no Python {version} (pyenv's or python{version} on PATH)")
    return on_path


def resolve(version, wants):
    """pip's report of the newest set that fits wants on this Python: (packages, environment)."""
    with tempfile.TemporaryDirectory() as folder:
        wants_file = os.path.join(folder, "wants.txt")
        with open(wants_file, "w") as f:
            f.write("\n".join(wants) + "\n")
        report = os.path.join(folder, "report.json")
        subprocess.run(
            [python(version), "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--only-binary", ":all:", "--report", report, "-r", wants_file],
            check=True,
        )
        with open(report) as f:
            done = json.load(f)
    packages = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in done["install"]
    }
    return packages, done["environment"]


def closure(wants, packages, environment):
    """The canonical names of the packages that wants need, on this Python, with their extras."""
    needed, todo = set(), [(Requirement(line), "") for line in wants]
    while todo:
        requirement, extra = todo.pop()
        marker_env = dict(environment, extra=extra)
        if requirement.marker is not None and not requirement.marker.evaluate(marker_env):
            continue
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if (name, frozenset(extras)) in needed:
            continue
        needed.add((name, frozenset(extras)))
        for line in packages[name].get("requires_dist", []):
            todo += [(Requirement(line), each) for each in extras | {""}]
    return {name for name, _ in needed}


def marker(first, last):
    """The environment marker of the Pythons PYTHONS[first..last]; the last stays open above."""
    low, high = PYTHONS[first], PYTHONS[last + 1] if last + 1 < len(PYTHONS) else None
    if first == 0:
        return "" if high is None else f'; python_version < "{high}"'
    if high is None:
        return f'; python_version >= "{low}"'
    if first == last:
        return f'; python_version == "{low}"'
    return f'; python_version >= "{low}" and python_version < "{high}"'


def lines(pins):
    """Requirement lines for pins (name -> version per Python, None where not needed)."""
    out = []
    for name in sorted(pins):
        versions, start = pins[name], 0
        for index in range(1, len(PYTHONS) + 1):
            if index == len(PYTHONS) or versions[index] != versions[start]:
                if versions[start] is not None:
                    out.append(f"{name}=={versions[start]}{marker(start, index - 1)}")
                start = index
    return out


def main():
    """Resolve on every Python, then write each file of FILES."""
    resolved = {version: resolve(version, RUN + TEST + ONNX) for version in PYTHONS}
    for path, (wants, base, command) in FILES.items():
        pins = {}
        for index, version in enumerate(PYTHONS):
            packages, environment = resolved[version]
            names = closure(wants, packages, environment)
            if base is not None:
                names -= closure(FILES[base][0], packages, environment)
            else:
                names.add("mxnet")
            for name in names:
                version_of = "1.9.1" if name == "mxnet" else packages[name]["version"]
                pins.setdefault(name, [None] * len(PYTHONS))[index] = version_of
        header = [
            f"# Every package pinned, for Python {PYTHONS[0]} to {PYTHONS[-1]}: {command}",
            "# --no-deps, since mxnet 1.9.1 asks for numpy<2, and Python 3.13 has numpy 2 only",
            "# (docs/python.md). Written by `python .ci/lock.py`: change its WANTS, not this file.",
        ]
        body = ([f"-r {base}"] if base else []) + lines(pins)
        with open(os.path.join(ROOT, path), "w") as f:
            f.write("\n".join(header + body) + "\n")
        print(f"{path}: {len(pins)} packages")


if __name__ == "__main__":
    main()
