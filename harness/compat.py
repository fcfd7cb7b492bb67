"""MXNet 1.9.1 on numpy 1.24 to 1.26: the alias numpy.bool, which `import mxnet` still uses."""
# numpy 1.24 removed numpy.bool (the Python bool); numpy 1.26 is the first with wheels for Python
# 3.12. The alias is set when numpy is first imported, by whoever imports it, and not before:
# importing numpy here would delay the entry script's signal handling. It prints nothing, and where
# numpy has the alias (before 1.24), it does nothing. In a script of your own, before `import
# mxnet`:
#
#     from harness import compat
#     compat.install()
import importlib.machinery
import sys


def install():
    """Make every import of numpy, from now on, come with numpy.bool."""
    # A no-op if numpy is loaded already.
    if "numpy" in sys.modules:
        _alias(sys.modules["numpy"])
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _alias(numpy):
    # Not hasattr(numpy, "bool"): on numpy 1.26 that asks numpy's __getattr__, which warns.
    if "bool" not in vars(numpy):
        numpy.bool = bool


class _Finder:
    """Finds numpy as Python would, and sets the alias as soon as numpy's own module has run."""
    # A meta path finder and a loader by their methods, not by importlib.abc, whose import alone
    # takes 40 ms: the time a signal at start-up would find no handler.

    def find_spec(self, name, path=None, target=None):
        if name != "numpy":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _alias(module)
