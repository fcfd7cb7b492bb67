"""The flags of MXNet's and PyTorch's MNIST examples, as this trainer takes them or answers them.

A user who comes from MXNet's example/image-classification/train_mnist.py (with its common/fit.py)
or from PyTorch's examples/mnist/main.py types their flags. Where a flag means what one of this
trainer's means, it is accepted as another name for it (ALIASES). Where it does not, the command
line is refused with one line that says this trainer's way to the same thing (ANSWERS).
"""

MXNET = "MXNet's example/image-classification/train_mnist.py"
PYTORCH = "PyTorch's examples/mnist"

# Another name -> the config field it sets. A field of type bool takes the alias with a value, 0 or
# 1, as MXNet's --test-io takes it.
ALIASES = {
    # PyTorch's "number of epochs to train".
    "--epochs": "num_epochs",
    # PyTorch's "how many batches to wait before logging training status".
    "--log-interval": "disp_batches",
    # PyTorch's SGD momentum, in the examples' releases up to 2019.
    "--momentum": "mom",
    # PyTorch's examples name the L2 penalty so (imagenet/main.py, as another name of its --wd).
    "--weight-decay": "wd",
    # MXNet's "1 means test reading speed without training"; a dry run reads the data and takes
    # one step, saving nothing.
    "--test-io": "dry_run",
}

_NO_GPU = "the CPU is the default here, and --gpus selects GPUs, such as --gpus 0"
_NO_WARMUP = "there is no large-batch warm-up here; --lr-scheduler is none, step or cosine"
_NO_COMPRESSION = "gradients are summed uncompressed here; there is no gradient compression"
_NO_PROFILER = ("there is no profiler flag here; benchmarks/step_profile.py profiles a step with "
                "MXNet's profiler")

# A flag -> (whose it is, what to do here instead).
ANSWERS = {
    "--num-classes": (MXNET, "the ten classes come with --dataset; no flag changes their number"),
    "--num-examples": (MXNET, "the training set's size is read from the data files; no flag "
                             "sets it"),
    "--add_stn": (MXNET, "there is no spatial transformer here; --network is mlp or lenet"),
    "--image_shape": (MXNET, "the input's shape follows --network: 784 pixels for mlp, 1x28x28 "
                             "for lenet"),
    "--num-layers": (MXNET, "the MLP has a hidden layer per width of --num-hidden, such as "
                            "--num-hidden 128,64; LeNet's layers are fixed"),
    "--initializer": (MXNET, "the weights start Glorot-uniform, set by hand in "
                             "train_mnist.initialize(); no flag picks another"),
    "--monitor": (MXNET, "there is no monitor of the weights here; --disp-batches shows "
                         "progress and --metrics-file records each epoch"),
    "--top-k": (MXNET, "only top-1 accuracy is measured here; there is no top-k"),
    "--loss": (MXNET, "every epoch line reports the cross-entropy loss, train and test; "
                      "--gradient picks how its gradient is computed"),
    "--dtype": (MXNET, "training is in float32 only here; there is no --dtype"),
    "--gc-type": (MXNET, _NO_COMPRESSION),
    "--gc-threshold": (MXNET, _NO_COMPRESSION),
    "--macrobatch-size": (MXNET, _NO_WARMUP),
    "--warmup-epochs": (MXNET, _NO_WARMUP),
    "--warmup-strategy": (MXNET, _NO_WARMUP),
    "--profile-worker-suffix": (MXNET, _NO_PROFILER),
    "--profile-server-suffix": (MXNET, _NO_PROFILER),
    "--use-imagenet-data-augmentation": (MXNET, "there is no data augmentation here"),
    "--test-batch-size": (PYTORCH, "the test set is scored in batches of up to 10,000 samples "
                                   "(all of MNIST's at once); no flag sets them"),
    "--gamma": (PYTORCH, "here the step schedule multiplies the rate by --lr-factor after each "
                         "epoch of --lr-step-epochs: --gamma 0.7 is --lr-factor 0.7 "
                         "--lr-step-epochs 1,2,...,N-1 for N epochs"),
    "--no-cuda": (PYTORCH, _NO_GPU),
    "--no-mps": (PYTORCH, _NO_GPU),
    "--no-accel": (PYTORCH, _NO_GPU),
    "--save-model": (PYTORCH, "here --model-prefix PREFIX saves a checkpoint every --save-period "
                              "epochs and after the last"),
}


def answer(word):
    """The line that answers a flag of the examples (word, with any =value), or None."""
    name = word.split("=", 1)[0]
    if name not in ANSWERS:
        return None
    whose, instead = ANSWERS[name]
    return f"{name} is a flag of {whose}; {instead}"
