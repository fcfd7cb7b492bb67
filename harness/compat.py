"""MXNet 1.9.1 on numpy 1.24 and later: the numpy names `import mxnet` reads that numpy removed.

mxnet 1.9.1 binds numpy names as it loads: `numpy.bool` (mxnet/numpy/utils.py, removed by numpy
1.24), and on numpy 2 twenty more (mxnet/numpy/utils.py, fallback.py, numpy_dispatch_protocol.py,
gluon/contrib/estimator/event_handler.py). Each is given back as numpy 1.26 defined it, in terms of
what numpy still has; the six financial functions, which numpy 1.20 replaced by functions that
raise, get such a function again. In a script of your own, before `import mxnet`:

    from harness import compat
    compat.install()
"""
# The names are set when numpy is first imported, by whoever imports it, and not before: importing
# numpy here would delay the entry script's signal handling. Nothing numpy has is ever replaced,
# and nothing is printed.
import importlib.machinery
import sys

# numpy 2.0 removed these constants; numpy 1.26 defined them as these floats of its own.
_CONSTANTS = {
    "PZERO": lambda numpy: 0.0,
    "NZERO": lambda numpy: -0.0,
    "PINF": lambda numpy: numpy.inf,
    "NINF": lambda numpy: -numpy.inf,
    "Inf": lambda numpy: numpy.inf,
    "NAN": lambda numpy: numpy.nan,
    "NaN": lambda numpy: numpy.nan,
}

# Functions numpy 2 removed (trapz in 2.4) that numpy still has under a new name: in numpy 1.26 the
# first four called it, with a DeprecationWarning; numpy 2.0 renamed trapz to trapezoid.
_RENAMED = {
    "alltrue": "all",
    "sometrue": "any",
    "product": "prod",
    "round_": "round",
    "trapz": "trapezoid",
}

# numpy 1.20 replaced these by functions that raise (NEP 32); numpy 2 has no such names at all.
_FINANCIAL = ("mirr", "npv", "pmt", "ppmt", "pv", "rate")


def install():
    """Make every import of numpy, from now on, come with the names mxnet 1.9.1 reads.

    Where numpy is loaded already, its names are restored at once.
    """
    if "numpy" in sys.modules:
        _restore(sys.modules["numpy"])
    elif not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _restore(numpy):
    """Set on numpy each name of _replacements that it lacks.

    Never hasattr(numpy, name): numpy 1.x answers it through its __getattr__, which warns. Before
    numpy 1.24, nothing is missing (numpy.bool and the financial functions come through that
    __getattr__); up to numpy 2, only numpy.bool is. numpy 2 brought back a numpy.bool of its own,
    never replaced.
    """
    version = tuple(int(part) for part in numpy.__version__.split(".")[:2])
    if version < (1, 24):
        return
    present = vars(numpy)
    for name, value in _replacements(numpy).items():
        if name not in present and (version >= (2, 0) or name == "bool"):
            setattr(numpy, name, value)


def _replacements(numpy):
    """Each name mxnet 1.9.1 reads that numpy may lack, as numpy 1.26 defined it, by this numpy.

    numpy.bool was the Python bool. The renamed functions whose new name this numpy lacks (numpy 1.x
    has no trapezoid) are left out: such a numpy still has the old name.
    """
    names = {"bool": bool}
    names.update((name, make(numpy)) for name, make in _CONSTANTS.items())
    names.update((old, getattr(numpy, new)) for old, new in _RENAMED.items() if new in vars(numpy))
    names.update(msort=_msort(numpy), in1d=_in1d(numpy))
    names.update((name, _financial(name)) for name in _FINANCIAL)
    return names


def _msort(numpy):
    """numpy 1.26's msort: a copy of the array, sorted along its first axis."""

    def msort(a):
        """Return a copy of a sorted along its first axis (numpy.sort(a, axis=0))."""
        return numpy.sort(a, axis=0)

    return msort


def _in1d(numpy):
    """numpy 1.26's in1d: isin on the flattened array."""

    def in1d(ar1, ar2, assume_unique=False, invert=False, *, kind=None):
        """Whether each element of ar1, flattened, is in ar2 (numpy.isin(...).ravel()).

        kind came with numpy 1.24: passed on only when given.
        """
        options = {} if kind is None else {"kind": kind}
        return numpy.isin(ar1, ar2, assume_unique=assume_unique, invert=invert, **options).ravel()

    return in1d


def _financial(name):
    """A function that raises, as numpy 1.20 to 1.26 answered a removed financial function."""

    def removed(*args, **kwargs):
        """Raise RuntimeError: numpy no longer has this function."""
        raise RuntimeError(
            f"numpy.{name} was removed from numpy in version 1.20 (NEP 32): "
            f"use numpy_financial.{name} from the numpy-financial package"
        )

    removed.__name__ = removed.__qualname__ = name
    return removed


class _Finder:
    """Finds numpy as Python would, and restores the names as soon as numpy's own module has run."""

    # A meta path finder and a loader by their methods, not by importlib.abc, whose import alone
    # takes 40 ms: the time a signal at start-up would find no handler.

    def find_spec(self, name, path=None, target=None):
        """numpy's spec from the path finder, its loader wrapped; None for any other module."""
        if name != "numpy":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader:
    """numpy's own loader, which restores the names once numpy's module has run."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        """The module numpy's loader creates."""
        return self.loader.create_module(spec)

    def exec_module(self, module):
        """Run numpy's module, then restore the names it lacks."""
        self.loader.exec_module(module)
        _restore(module)
