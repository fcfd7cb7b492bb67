"""Test helpers: synthetic IDX files, and where the real MNIST is."""
import gzip
import os
import struct

import numpy as np

import data

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
    for name, array in zip(data.FILES, arrays):
        write_idx(folder, name, idx_bytes(array), compress)
    return arrays


def real_mnist_dir():
    """The real MNIST for tests: $MNIST_DIR, else ../shared/mnist beside the project; None if neither exists."""
    for folder in (os.environ.get("MNIST_DIR"), os.path.join(ROOT, "..", "shared", "mnist")):
        if folder and os.path.isdir(folder) and data._existing(folder, data.FILES[0]):
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
