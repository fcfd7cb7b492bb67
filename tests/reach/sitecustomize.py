"""Which of the project's functions a Python process runs, when QUICK_TIER_REACH names a folder.

Python imports this module as it starts, in every process whose PYTHONPATH holds this folder (the
coverage test of tests/test_tiers.py sets it for the quick tier, whose children inherit it). It
then notes each function of the lesson's files and of harness/ the first time one runs, in the
process's own file in that folder: one line `path<TAB>name<TAB>first line`. A line is written
as soon as its function runs, so that a process ended by a signal or by os._exit has said what it
ran. Without the variable it does nothing.
"""
import os
import sys
import threading


def _project_files():
    """The absolute paths of the lesson's .py files and of harness/'s."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    names = [os.path.join(root, name) for name in sorted(os.listdir(root)) if name.endswith(".py")]
    harness = os.path.join(root, "harness")
    names += [os.path.join(harness, name) for name in sorted(os.listdir(harness))
              if name.endswith(".py")]
    return {os.path.realpath(name) for name in names}


def _start(folder):
    """Note, in a file of this process's in folder, each project function as it first runs."""
    files, seen, ours = _project_files(), set(), {}
    path = os.path.join(folder, f"{os.getpid()}-{os.urandom(4).hex()}.tsv")

    def note(frame, event, arg):
        code = frame.f_code
        if code in seen:
            return None
        seen.add(code)
        name = code.co_filename
        if name not in ours:
            ours[name] = os.path.realpath(name) in files
        # Module, class and comprehension bodies run as a module loads: they are not functions.
        if ours[name] and not code.co_name.startswith("<"):
            with open(path, "a") as f:
                f.write(f"{os.path.realpath(name)}\t{code.co_name}\t{code.co_firstlineno}\n")
        return None
    sys.settrace(note)
    threading.settrace(note)


if os.environ.get("QUICK_TIER_REACH"):
    _start(os.environ["QUICK_TIER_REACH"])
