"""Test helpers: synthetic IDX files, and where the real MNIST is."""
import gzip
import os
import struct

import numpy as np

import mnist_files
import train_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def idx_bytes(array, magic=None):
    """Serialise a uint8 array as an IDX file (0x0803 for 3-D images, 0x0801 for 1-D labels)."""
    magic = magic if magic is not None else 0x800 + array.ndim
    return struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_idx(folder, name, payload, compress=True):
    path = os.path.join(folder, name + (".gz" if compress else ""))
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)
    return path


def synthetic_arrays(num_train=1050, num_test=230, seed=0):
    """Ten noisy prototype digits: learnable in an epoch or two, far from trivial at initialisation."""
    rng = np.random.RandomState(seed)
    prototypes = rng.rand(10, 28, 28) > 0.7
    arrays = []
    for n in (num_train, num_test):
        labels = rng.randint(0, 10, size=n)
        images = 0.6 * prototypes[labels] + 0.4 * rng.rand(n, 28, 28)
        arrays += [(images * 255).astype(np.uint8), labels.astype(np.uint8)]
    return arrays


def write_mnist(folder, arrays=None, compress=True):
    """Write the four IDX files into folder and return the arrays written."""
    arrays = arrays if arrays is not None else synthetic_arrays()
    for name, array in zip(mnist_files.FILES, arrays):
        write_idx(folder, name, idx_bytes(array), compress)
    return arrays


def corrupt(folder, kind):
    """Damage a freshly written synthetic set in one way; return the text the error must contain."""
    train_x, train_y, test_x, test_y = synthetic_arrays()
    images = os.path.join(folder, mnist_files.FILES[0] + ".gz")
    if kind == "missing":
        os.remove(os.path.join(folder, mnist_files.FILES[3] + ".gz"))
        return "MNIST files missing"
    if kind == "truncated":
        write_idx(folder, mnist_files.FILES[0], idx_bytes(train_x)[:-100])
        return "is truncated"
    if kind == "empty":
        write_idx(folder, mnist_files.FILES[0], b"")
        return "is truncated"
    if kind == "wrong magic":
        write_idx(folder, mnist_files.FILES[0], idx_bytes(train_x, magic=0x0801))
        return "magic number 0x00000801"
    if kind == "mismatched counts":
        write_idx(folder, mnist_files.FILES[3], idx_bytes(test_y[:-1]))
        return "different splits"
    if kind == "label out of range":
        bad = train_y.copy()
        bad[7] = 10
        write_idx(folder, mnist_files.FILES[1], idx_bytes(bad))
        return "label 10 at index 7 is outside 0..9"
    if kind == "wrong image size":
        write_idx(folder, mnist_files.FILES[0], idx_bytes(np.zeros((5, 32, 32), np.uint8)))
        return "expected 28"
    if kind == "html instead of gzip":
        with open(images, "wb") as f:
            f.write(b"<html><body>404 Not Found</body></html>")
        return "cannot be read as gzip"
    if kind == "trailing bytes":
        write_idx(folder, mnist_files.FILES[0], idx_bytes(train_x) + b"\0")
        return "longer than its header says"
    raise ValueError(kind)


BAD_DATA = ["missing", "truncated", "empty", "wrong magic", "mismatched counts", "label out of range",
            "wrong image size", "html instead of gzip", "trailing bytes"]


def real_mnist_dir():
    """The real MNIST for tests: $MNIST_DIR, else ../shared/mnist beside the project; None if neither exists."""
    for folder in (os.environ.get("MNIST_DIR"), os.path.join(ROOT, "..", "shared", "mnist")):
        if folder and os.path.isdir(folder) and os.path.exists(os.path.join(folder, mnist_files.FILES[0] + '.gz')):
            return os.path.abspath(folder)
    return None


# Read once at import, before any fixture clears MNIST_DIR.
REAL_MNIST = real_mnist_dir()


def numpy_probs(params, images):
    """Forward pass of network.get_symbol's MLP in float64 numpy, from a name -> array dict."""
    x = images.astype(np.float64)
    layer = 1
    while f"fc{layer + 1}_weight" in params:
        x = np.maximum(x @ params[f"fc{layer}_weight"].T + params[f"fc{layer}_bias"], 0)
        layer += 1
    logits = x @ params[f"fc{layer}_weight"].T + params[f"fc{layer}_bias"]
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def tree_bytes(folder):
    """Every file under folder, by path, with its bytes (or its kind, if not a regular file): to show that a
    run wrote or changed nothing."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                found[os.path.relpath(path, folder)] = ("link to " + os.readlink(path) if os.path.islink(path)
                                                        else "not a regular file")
                continue
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def run_cli(capsys, *argv):
    """Run train_mnist.main() in-process; return its exit code, stdout and stderr."""
    try:
        code = train_mnist.main(list(argv))
    except SystemExit as exit_:  # argparse's way out
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def bound_group(hidden=(16,), contexts=None, loss_mode="builtin", seed=0, network_name="mlp"):
    """A devices.Group of network_name on contexts (one CPU by default), initialised from seed: the plain path."""
    import mxnet as mx
    import devices
    import initializer
    import loss
    import network
    import sync
    contexts = contexts or [mx.cpu()]
    symbol = network.get_symbol(network_name, 10, hidden)
    graph = loss.training_graph(symbol, loss_mode)
    group = devices.Group(contexts, devices.Layout(symbol, network.sample_shape(network_name)),
                          sync.create("device", len(contexts)), lambda ctx: {}, lambda samples, train: graph)
    initializer.glorot_uniform(group.params, np.random.RandomState(seed))
    group.share_weights()
    return group


def batch_of(images, labels):
    """One DataBatch of float32 images and labels, as an MXNet iterator yields it."""
    import mxnet as mx
    return mx.io.DataBatch([mx.nd.array(images)], [mx.nd.array(labels)], pad=0)


def saved_params(prefix, epoch):
    """The parameters of checkpoint PREFIX-%04d.params, as numpy arrays by their file key."""
    import mxnet as mx
    return {name: array.asnumpy() for name, array in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()}


def assert_params_close(a, b, tol=1e-5):
    """Two parameter sets with the same names, equal within tol (relative and absolute)."""
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)
