"""Train on MNIST by driving MXNet's executor by hand: bind, initialise, forward, backward."""
from harness import signals

if __name__ == "__main__":
    # First of all: from this line on, a signal ends the run with one line, not a traceback.
    signals.install()

from harness import compat

# numpy, as it loads, gets the alias mxnet 1.9.1 needs on numpy 1.24 to 1.26 (harness/compat.py).
compat.install()

import dataclasses
import os
import sys
from typing import Literal, Tuple

import network
import optimizer
from harness import checks, cli, cpu, errors, plan, report
from optimizer import OPTIMIZERS


@dataclasses.dataclass(frozen=True)
class Config:
    """Edit the defaults here; every field is also a flag: batch_size is --batch-size."""

    # mlp (the tutorial's) or lenet (MXNet's LeNet), from network.py
    network: str = "mlp"
    # the MLP's hidden widths, comma-separated
    num_hidden: Tuple[int, ...] = (128, 64)
    # mnist, fashion-mnist or kmnist: each downloads into its own cache folder
    dataset: str = "mnist"
    # folder with the four IDX files; empty: $MNIST_DIR (for mnist), else the cache
    data_dir: str = ""
    # mnist: data.py's own iterator, on the device; mxnet: MXNet's mx.io.MNISTIter
    data_iter: Literal["mnist", "mxnet"] = "mnist"
    # GPU ids to train on, such as 0 or 0,1; empty: the CPU
    gpus: str = ""
    # train on this many CPU contexts, mx.cpu(0) to mx.cpu(N-1); 0: one
    cpus: int = 0
    # how gradients are summed over devices and machines (see docs/distributed.md)
    kv_store: Literal["local", "device", "dist_sync", "horovod"] = "device"
    # CPU threads per context for MXNet's operators; auto: from the work and the cores
    threads: str = "auto"
    # on a CPU, the update in numpy over the executor's memory; --no-fast: in MXNet's operators
    fast: bool = True
    # samples per step, over all devices and workers
    batch_size: int = 100
    # passes over the training set
    num_epochs: int = 15
    # sgd, nag (Nesterov) or adam, all hand-written in optimizer.py
    optimizer: str = "sgd"
    # learning rate; empty: the optimizer's own
    lr: float = None
    # momentum, for sgd and nag
    mom: float = 0.0
    # L2 weight decay, of the weights and not the biases, as MXNet's optimizers apply it
    wd: float = 0.0
    # apply --wd to the biases too
    decay_biases: bool = False
    # clip each gradient entry to +-this, as mx.optimizer does; 0: no clipping
    clip_gradient: float = 0.0
    # step: times --lr-factor after each of --lr-step-epochs; cosine: down to 0 at the last update
    lr_scheduler: Literal["none", "step", "cosine"] = "none"
    # epochs after which the step schedule multiplies the rate, such as 10,13 (its default schedule)
    lr_step_epochs: Tuple[int, ...] = ()
    # the step schedule's factor
    lr_factor: float = 0.1
    # the loss's gradient: builtin (SoftmaxOutput's own) or manual (network.py's, by hand)
    gradient: Literal["builtin", "manual"] = "builtin"
    # seeds the weight init and the per-epoch shuffle
    seed: int = 42
    # append one JSON object per epoch to this file
    metrics_file: str = ""
    # save checkpoints as PREFIX-0001.params and so on
    model_prefix: str = ""
    # save a checkpoint every this many epochs, and after the last
    save_period: int = 1
    # resume from the checkpoint of this epoch; 0: start afresh
    load_epoch: int = 0
    # resume from the checkpoint a signal saved mid-epoch
    resume: bool = False
    # delete the checkpoints under --model-prefix and train from epoch 1
    start_over: bool = False
    # with --load-epoch: train on from that checkpoint's weights alone (MXNet's own checkpoints too)
    warm_start: bool = False
    # with --load-epoch: only score that checkpoint on the test set
    evaluate: bool = False
    # with --load-epoch: write that checkpoint as an ONNX model here, checked by ONNX Runtime
    export_onnx: str = ""
    # with --load-epoch: classify these image files (PNG, JPEG, anything Pillow opens)
    predict: Tuple[str, ...] = ()
    # read the data and take one step on each device, then stop; nothing is saved
    dry_run: bool = False
    # report progress every this many batches; 0: never
    disp_batches: int = 100
    # write three pictures here; empty: PREFIX-plots with a prefix; none: none
    plot_dir: str = ""

    def __post_init__(self):
        checks.check_config(self, network.NETWORKS, OPTIMIZERS)

    def resolved(self):
        """This config with what its defaults imply: the optimizer's own rate, the step schedule."""
        return checks.resolved(self, OPTIMIZERS)


def train(config, train_iter=None, test_iter=None, log=None, progress=None):
    """Train as config says on MXNet iterators (None: the dataset's); return a record per epoch.

    log(line) shows a line; progress(figures) is called every --disp-batches batches. The imports
    are here, not at the top: main() first sets the threads, which MXNet reads once, as it loads.
    """
    import data
    import metrics
    from harness import devices
    from harness.run import Run
    with Run(config.resolved(), log, progress, os.path.relpath(__file__)) as run:
        config = run.config
        # 1. The data iterators: the dataset on every device, reshuffled each epoch (data.py).
        if train_iter is None:
            train_iter, test_iter = data.iterators(config, run.contexts, run.rng, run.shard, log)
        # 2. The symbol: the network, its loss head, and the batch's accuracy and loss as an output.
        symbol = network.get_symbol(config.network, config.num_hidden)
        graph = network.training_graph(symbol, config.gradient)
        # 3. The optimizer, hand-written, its schedule counted in the batches the iterator yields.
        batches = data.batches_per_epoch(train_iter, run.epoch_range)
        opt = optimizer.create(config, batches)
        # 4. Bind: simple_bind the graph on each device, over buffers that hold its parameters and
        #    their gradients (devices.Model); other batch sizes reshape the executor.
        model = devices.Model(graph, run, (train_iter, test_iter), opt)
        model.bind([graph.simple_bind(ctx, **model.binding(ctx)) for ctx in run.contexts])
        # 5. Initialise the weights by hand; a checkpoint's state replaces them when resuming.
        initialize(model.arg_params, run.rng)
        meter = metrics.Meter()
        run.restore((symbol, network.inference_graph(symbol)), model, opt, meter)
        # 6. The loop: forward, backward, update, measure.
        for _ in run.epochs(batches):
            for batch in run.batches(train_iter):
                # Forward and backward on each device's share of the batch: its gradients, summed.
                executors, samples = model.load(batch)
                for exe in executors:
                    exe.forward(is_train=True)
                    exe.backward(network.head_gradients(exe, config.gradient))
                # Update: sum over devices and workers; the optimizer steps each parameter by name.
                model.sum_grads()
                opt.update(model.params, model.grads, rescale_grad=1.0 / samples)
                model.share_weights()
                # Measure: the batch's accuracy and loss, kept on the device until the epoch ends.
                meter.add(executors, samples)
            run.end_epoch(meter, evaluate(model, test_iter))
        run.finish(predictions(model, test_iter, config.gradient) if run.wants_pictures() else None)
    return run.history


def initialize(params, rng):
    """Fill params (name -> NDArray) by hand: Glorot-uniform weights, zero biases.

    Uniform in +-sqrt(6 / (fan_in + fan_out)). For a weight shaped (out, in, *kernel), fan_in
    is in * prod(kernel) and fan_out out * prod(kernel), as mx.init.Xavier('uniform', 'avg', 3)
    does.
    """
    import numpy as np
    for name, array in params.items():
        if name.endswith("_weight"):
            receptive = int(np.prod(array.shape[2:]))
            fan_in, fan_out = array.shape[1] * receptive, array.shape[0] * receptive
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            array[:] = rng.uniform(-bound, bound, size=array.shape).astype(np.float32)
        elif name.endswith("_bias"):
            array[:] = 0
        else:
            raise ValueError(f"no initialiser for parameter {name}")


def evaluate(model, test_iter):
    """Score every sample of test_iter once with the current weights; return {'loss', 'acc'}."""
    test_iter.reset()
    totals, count = None, 0
    for batch in test_iter:
        executors, _ = model.load(batch, train=False)
        for exe in executors:
            # The graph's second output: [number correct, summed loss], on the first device.
            scored = exe.forward(is_train=False)[1].as_in_context(model.replicas[0].ctx)
            totals = scored.copy() if totals is None else totals + scored
            count += exe.outputs[0].shape[0]
    correct, loss_sum = totals.asnumpy()
    return {"loss": float(loss_sum) / count, "acc": float(correct) / count}


def predictions(model, test_iter, gradient):
    """(probabilities, labels, images) of every test sample, in numpy: what the pictures show."""
    import numpy as np

    from harness.datasets import DATA, LABEL
    probs, labels, images = [], [], []
    test_iter.reset()
    for batch in test_iter:
        executors, _ = model.load(batch, train=False)
        for exe in executors:
            exe.forward(is_train=False)
            probs.append(network.probabilities(exe.outputs[0], gradient).asnumpy())
            labels.append(exe.arg_dict[LABEL].asnumpy())
            images.append(exe.arg_dict[DATA].asnumpy())
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64), np.concatenate(images)


def score(config, log=None, given=None):
    """--evaluate: score --load-epoch's checkpoint on the test set; return {'loss', 'acc'}.

    The checkpoint says which network it holds; given: the config fields that the command line gave
    (None: those that differ from the defaults), which must agree with it.
    """
    import data
    from harness import reading
    from harness.run import Run
    with Run(config.resolved(), log, script=os.path.relpath(__file__)) as run:
        symbol = reading.resolve(run, network, given)
        _, test_iter = data.iterators(run.config, run.contexts, run.rng, log=log)
        model = reading.bind(run, test_iter, network, symbol)
        scored = evaluate(model, test_iter)
        run.log(report.scored_line(run.plan.tag.stem(run.config.model_prefix), scored))
    return scored


def main(argv=None):
    """Parse and check the flags, set the CPU up before MXNet loads, then do what the flags ask."""
    program = os.path.basename(__file__)
    rates = ", ".join(f"{name} {kind.default_learning_rate:g}" for name, kind in OPTIMIZERS.items())
    argv = sys.argv[1:] if argv is None else list(argv)
    with signals.guard(), errors.reported(program) as outcome:
        config = cli.parse(Config, argv, program, __doc__, notes={"lr": rates})
        console = report.Console(sys.stdout)
        console.line(cpu.prepare(config, network.multiply_adds(config.network, config.num_hidden)))
        mode, given = plan.mode_of(config), _given(argv)
        if mode == "evaluate":
            score(config, console.line, given)
        elif mode in ("export", "predict"):
            import data
            from harness import export
            export.run(config, console.line, data, network, given)
        elif mode in ("train", "dry_run"):
            train(config, log=console.line, progress=console.progress)
        else:
            raise ValueError(f"main() does not {mode}")
    return outcome.code


def _given(argv):
    """The names of the config fields whose flags argv types (--no-fast counts for fast)."""
    typed = {word.split("=", 1)[0] for word in argv if word.startswith("--")}
    return {field.name for field in dataclasses.fields(Config)
            if {checks.flag(field.name), "--no-" + checks.flag(field.name)[2:]} & typed}


if __name__ == "__main__":
    # main()'s exit code ends the process, by signals.run: never by Python's own shutdown, where a
    # signal would find no handler.
    signals.run(main)
