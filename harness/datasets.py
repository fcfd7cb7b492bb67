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
    """One data set: its cache folder, mirrors, the SHA-256 of each file, its classes."""

    name: str
    # Under $MXNET_HOME/datasets.
    folder: str
    # Tried in order; each serves FILES[i] + ".gz".
    mirrors: tuple
    # File name -> the SHA-256 of its decompressed bytes, so that a re-gzipped copy still verifies;
    # where only the published .gz files' sums are known, of those (gz=True).
    sha256: dict
    classes: tuple
    # What one sample is, for the pictures and the prediction lines.
    noun: str = "digit"
    gz: bool = False


MNIST = Dataset(
    name="mnist",
    folder="mnist",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/dataset/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
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

# Zalando's Fashion-MNIST, the release after its fix of 2017-08-31 (gluon's mirror serves the one
# before it). The sums are of the decompressed files, as published beside several loaders.
FASHION_MNIST = Dataset(
    name="fashion-mnist",
    folder="fashion-mnist",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    ),
    sha256={
        "train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"),
    noun="item",
)

# Kuzushiji-MNIST (ROIS-CODH): ten cursive hiragana. Only the .gz files' sums are published, as
# torchvision and TensorFlow Datasets check them.
KMNIST = Dataset(
    name="kmnist",
    folder="kmnist",
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    sha256={
        "train-images-idx3-ubyte":
            "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "train-labels-idx1-ubyte":
            "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        "t10k-images-idx3-ubyte":
            "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "t10k-labels-idx1-ubyte":
            "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    },
    classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    noun="character",
    gz=True,
)

DATASETS = {dataset.name: dataset for dataset in (MNIST, FASHION_MNIST, KMNIST)}


def known_file(digest):
    """(data set, file name) of the published file whose SHA-256 is digest, or None.

    A digest of either kind: of the decompressed content, or of the .gz file where only those are
    published (gz=True).
    """
    for dataset in DATASETS.values():
        for name, published in dataset.sha256.items():
            if published == digest:
                return dataset, name
    return None
