"""The data sets in MNIST's IDX format, and the names that the lesson and the machinery share."""
# Imports nothing heavy: the command line checks --dataset before MXNet loads.
import dataclasses

# The network's two inputs, as MXNet's iterators name them.
DATA, LABEL = "data", "softmax_label"
NUM_CLASSES = 10
ROWS = COLS = 28
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One data set."""
    # Its cache folder, its mirrors, the SHA-256 of each file's content, its classes.

    name: str
    folder: str
    mirrors: tuple
    sha256: dict
    classes: tuple
    # What one sample is, for the pictures and the prediction lines.
    noun: str = "digit"


MNIST = Dataset(
    name="mnist",
    folder="mnist",
    # Tried in order; each serves FILES[i] + ".gz".
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/dataset/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    # Of each file's decompressed bytes, so that a re-gzipped copy still verifies.
    sha256={
        "train-images-idx3-ubyte":
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte":
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte":
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte":
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    classes=tuple(str(digit) for digit in range(NUM_CLASSES)),
)

DATASETS = {dataset.name: dataset for dataset in (MNIST,)}
