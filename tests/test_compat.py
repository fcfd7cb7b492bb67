"""harness/compat.py: mxnet 1.9.1 imports and runs on every numpy that requirements.txt installs.

CI runs these on numpy 1.23.5, 1.26.4 and 2.2.6: the replacements are checked against numpy's own
definitions wherever that numpy still has them (all but trapz on numpy 1.x; in1d and trapz on 2.2).
"""
import ast
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from harness import compat
from helpers import ROOT

VERSION = tuple(int(part) for part in np.__version__.split(".")[:2])

# The names mxnet 1.9.1 reads from numpy as it loads that some numpy removed: numpy.bool (1.24),
# the rest (numpy 2.0; in1d and trapz 2.4).
CONSTANTS = ["PZERO", "NZERO", "PINF", "NINF", "Inf", "NAN", "NaN"]
FUNCTIONS = ["alltrue", "sometrue", "product", "round_", "trapz", "msort", "in1d"]
FINANCIAL = ["mirr", "npv", "pmt", "ppmt", "pv", "rate"]
REMOVED = ["bool"] + CONSTANTS + FUNCTIONS + FINANCIAL

# Inputs on which each function must give what numpy 1.26's own gave.
CALLS = {
    "alltrue": ([[True, False], [True, True]],),
    "sometrue": ([[False, False], [True, False]],),
    "product": ([[1.5, 2.0], [3.0, -4.0]],),
    "round_": ([1.26, -2.5, 3.14159], 2),
    "trapz": ([1.0, 2.0, 4.0, 7.5], None, 0.5),
    "msort": ([[3, 1], [2, 5], [1, 4]],),
    "in1d": ([[1, 2], [3, 4]], [2, 3, 9]),
}


def _python(code):
    """Run code in a fresh interpreter from the project's root; return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _own(name):
    """numpy's own value of name, as mxnet's `onp.NAME` reads it (numpy 1.x may warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(np, name)


def test_install_imports_no_numpy_and_numpy_then_has_every_name():
    done = _python(
        "import sys\n"
        "from harness import compat\n"
        "compat.install()\n"
        "print('numpy' in sys.modules)\n"
        "import numpy, warnings\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        f"print([name for name in {REMOVED!r} if not hasattr(numpy, name)])\n"
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == ["False", "[]"]


def test_install_adds_only_the_names_numpy_lacks_and_replaces_none():
    done = _python(
        "import json, numpy\n"
        "before = dict(vars(numpy))\n"
        "from harness import compat\n"
        "compat.install()\n"
        "after = vars(numpy)\n"
        "print(json.dumps([sorted(set(after) - set(before)),\n"
        "                  [name for name in before if after[name] is not before[name]],\n"
        "                  sorted(before)]))\n"
    )
    assert done.returncode == 0, done.stderr
    added, replaced, before = json.loads(done.stdout)
    assert replaced == []
    if VERSION < (1, 24):
        assert added == []
    elif VERSION < (2, 0):
        assert added == ["bool"]
    else:
        assert added == sorted(name for name in REMOVED if name not in before)
        assert "bool" not in added and "PZERO" in added and "mirr" in added


@pytest.mark.parametrize("name", CONSTANTS)
def test_each_constant_is_the_float_numpy_1_26_defined(name):
    ours, own = compat._replacements(np)[name], _own(name)
    assert type(ours) is float and type(own) is float
    assert math.isnan(ours) == math.isnan(own)
    assert math.isnan(ours) or (ours == own and math.copysign(1, ours) == math.copysign(1, own))
    expected = {"PZERO": "0.0", "NZERO": "-0.0", "PINF": "inf", "NINF": "-inf", "Inf": "inf"}
    assert repr(ours) == expected.get(name, "nan")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_gives_what_numpy_s_own_gave(name):
    if name not in compat._replacements(np):
        # numpy 1.x has no trapezoid, and has trapz itself: nothing to restore.
        assert VERSION < (2, 0) and name == "trapz" and "trapz" in vars(np)
        return
    ours = compat._replacements(np)[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = _own(name)(*CALLS[name])
    np.testing.assert_array_equal(ours(*CALLS[name]), expected)
    assert np.asarray(ours(*CALLS[name])).dtype == np.asarray(expected).dtype


@pytest.mark.parametrize("name", FINANCIAL)
def test_each_financial_function_raises_runtime_error_naming_numpy_financial(name):
    # numpy 1.20 to 1.26 answered with a function that raised this way; numpy 2 has none.
    for function in (compat._replacements(np)[name], _own(name)):
        with pytest.raises(RuntimeError, match="numpy.financial|numpy_financial"):
            function(0.1, [-100, 60, 60])


def test_numpy_bool_is_the_python_bool_before_numpy_2_and_numpy_s_own_after():
    if VERSION < (2, 0):
        assert _own("bool") is bool
    else:
        assert np.bool is np.bool_


def _numpy_reads_at_import(path):
    """The attributes a module reads from numpy as it runs: outside any function body."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    aliases = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "numpy"
    }
    reads, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            # Only the decorators and defaults run as the module loads.
            defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
            todo += defaults + list(getattr(node, "decorator_list", []))
            continue
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            reads.add(node.attr)
        todo += list(ast.iter_child_nodes(node))
    return reads


def test_every_numpy_name_mxnet_reads_as_it_loads_is_there():
    import mxnet
    from mxnet import numpy_dispatch_protocol

    modules = [m for name, m in sys.modules.items() if name.split(".")[0] == "mxnet"]
    reads = set()
    for module in modules:
        if getattr(module, "__file__", None) and module.__file__.endswith(".py"):
            reads |= _numpy_reads_at_import(module.__file__)
    # numpy_dispatch_protocol looks these up by name as it loads.
    reads |= set(numpy_dispatch_protocol._NUMPY_ARRAY_FUNCTION_LIST)
    reads |= set(numpy_dispatch_protocol._NUMPY_ARRAY_UFUNC_LIST)
    assert len(modules) > 50 and {"PZERO", "mirr", "alltrue", "product"} <= reads, mxnet.__file__
    missing = []
    for read in sorted(reads):
        try:
            value = np
            for part in read.split("."):
                value = _own(part) if value is np else getattr(value, part)
        except AttributeError:
            missing.append(read)
    assert missing == []


def test_mxnet_binds_and_runs_backward_after_install_printing_nothing():
    done = _python(
        "from harness import compat\n"
        "compat.install()\n"
        "import json, mxnet as mx, numpy as np\n"
        "fc = mx.sym.FullyConnected(mx.sym.Variable('data'), num_hidden=3, name='fc')\n"
        "exe = mx.sym.SoftmaxOutput(fc, name='softmax').simple_bind(mx.cpu(), data=(4, 5))\n"
        "exe.arg_dict['data'][:] = np.arange(20).reshape(4, 5) / 20\n"
        "exe.arg_dict['fc_weight'][:] = np.arange(15).reshape(3, 5) / 10\n"
        "exe.arg_dict['softmax_label'][:] = np.array([0, 1, 2, 1])\n"
        "exe.forward(is_train=True)\n"
        "exe.backward()\n"
        "print(json.dumps(exe.grad_dict['fc_weight'].asnumpy().tolist()))\n"
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    x, w = np.arange(20).reshape(4, 5) / 20, np.arange(15).reshape(3, 5) / 10
    logits = x @ w.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    probs[np.arange(4), [0, 1, 2, 1]] -= 1
    np.testing.assert_allclose(json.loads(done.stdout), probs.T @ x, rtol=1e-5, atol=1e-6)
