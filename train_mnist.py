"""Train a network on MNIST by driving MXNet's executor by hand: bind, initialise, forward, backward, update."""
import interrupts

if __name__ == "__main__":
    interrupts.install()  # first of all: from this line on, a signal ends the run with one line, not a traceback

import dataclasses  # noqa: E402 (after the signal handling, on purpose)
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Literal, Tuple  # noqa: E402

import checks  # noqa: E402
import cli  # noqa: E402
import cpu  # noqa: E402
import errors  # noqa: E402
import network  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Edit the defaults here; every field is also a flag: batch_size is --batch-size."""
    network: str = "mlp"              # mlp (the tutorial's) or lenet (MXNet's LeNet), from network.py
    num_hidden: Tuple[int, ...] = (128, 64)  # the MLP's hidden widths, comma-separated
    gpus: str = ""                    # GPU ids to train on, such as 0 or 0,1; empty: the CPU
    cpus: int = 0                     # train on this many CPU contexts, mx.cpu(0) to mx.cpu(N-1); 0: one
    kv_store: Literal["local", "device", "dist_sync", "horovod"] = "device"  # sums gradients over devices, machines
    threads: str = "auto"             # CPU threads per context for MXNet's operators; auto: from the work
    fast: bool = True                 # the speed tricks of fast.py; --no-fast trains the plain way
    batch_size: int = 100             # samples per step, over all devices and workers
    num_epochs: int = 15              # passes over the training set
    optimizer: str = "sgd"            # sgd, nag (Nesterov) or adam, all hand-written in optimizer.py
    lr: float = None                  # learning rate; empty: the optimizer's own
    mom: float = 0.0                  # momentum, for sgd and nag
    wd: float = 0.0                   # L2 weight decay, applied to every parameter
    clip_gradient: float = 0.0        # clip each gradient entry to +-this, as mx.optimizer does; 0: no clipping
    lr_scheduler: Literal["none", "step", "cosine"] = "none"  # step: times --lr-factor at --lr-step-epochs
    lr_step_epochs: Tuple[int, ...] = ()  # epochs after which the step schedule multiplies the rate, e.g. 10,13
    lr_factor: float = 0.1            # the step schedule's factor
    loss: Literal["builtin", "manual"] = "builtin"  # builtin: SoftmaxOutput's gradient; manual: loss.py's
    seed: int = 42                    # seeds the weight init and the per-epoch shuffle
    data_dir: str = ""                # folder with the four MNIST files; empty: $MNIST_DIR, else the cache
    data_iter: Literal["mnist", "mxnet"] = "mnist"  # mnist: data.py's, on the device; mxnet: mx.io.MNISTIter
    metrics_file: str = ""            # append one JSON object per epoch to this file
    model_prefix: str = ""            # save checkpoints as PREFIX-0001.params and so on
    save_period: int = 1              # save a checkpoint every this many epochs, and after the last
    load_epoch: int = 0               # resume from the checkpoint of this epoch; 0: start afresh
    resume: bool = False              # resume from the checkpoint a signal saved mid-epoch
    start_over: bool = False          # delete the checkpoints under --model-prefix and train from epoch 1
    evaluate: bool = False            # with --load-epoch: only score that checkpoint on the test set
    disp_batches: int = 100           # report progress every this many batches; 0: never
    plot_dir: str = ""                # write three pictures here; empty: PREFIX-plots with a prefix; none: none

    def __post_init__(self):
        checks.check_config(self)


NUM_CLASSES = 10


def train(config, train_iter=None, test_iter=None, log=None, progress=None):
    """Train as config says, on MXNet data iterators (None: MNIST); return a record per epoch.

    log(line) is called with each line to show; progress(figures) every --disp-batches batches.
    """
    # Here, not at the top: main() sets the threads MXNet reads as it loads, before it loads.
    import numpy as np
    import data, devices, fast, initializer, loss, memory, metrics, network, optimizer, report, runstate, sync  # noqa
    log, config = log or (lambda line: None), checks.resolved(config)
    interrupts.set_stage("before training began; nothing saved")
    command = lambda c: cli.command_line(c, os.path.relpath(__file__))  # noqa: E731 (for resume hints)
    runstate.check_outputs(config)                  # every output path, before anything is built
    contexts = devices.contexts(config.gpus, config.cpus)
    comm = sync.create(config.kv_store, len(contexts))
    if comm.rank > 0:                               # with dist_sync, rank 0 alone reports, saves and draws
        log, progress = (lambda line: None), None
    for line in cli.summary(config):                # the flags that differ from the defaults, resolved
        log(line)
    start = runstate.plan(config, command)          # afresh, or from which checkpoint: never over saved work
    if comm.rank == 0 and report.pictures_folder(config) and report.pictures_warning():
        log(report.pictures_warning())              # now, not after training: in time to fix it
    rng = np.random.RandomState(config.seed)        # the weights' init, then each epoch's shuffle

    # 1. The data iterators: the project's MNIST, on every device (data.py), unless given.
    shape, speed = network.sample_shape(config.network), fast.tricks(config, contexts) if config.fast else fast.plain()
    if train_iter is None and config.data_iter == "mnist":
        arrays = data.load_mnist(config.data_dir or None, progress=report.download_progress(log), as_bytes=True)
        checks.check_batch(config.batch_size, len(arrays[0]), comm.num_workers * len(contexts))
        shapes = data.bound_shapes(len(arrays[0]), config.batch_size, comm.rank, comm.num_workers, len(contexts), shape)
        train_iter, test_iter = data.mnist_iters(arrays, config.batch_size, contexts, shape, rng, comm.rank,
                                                 comm.num_workers, pixel_bytes=speed.pixels_as_bytes(shapes))
    elif train_iter is None:
        train_iter, test_iter = data.mxnet_iters(config.data_dir, config.batch_size, shape, config.seed, comm.rank,
                                                 comm.num_workers)
    # 2. The symbol: the network, its loss, and the batch's metrics as a second output.
    symbol = network.get_symbol(config.network, NUM_CLASSES, config.num_hidden)
    graph = loss.training_graph(symbol, config.loss)
    # 3. The optimizer, hand-written (optimizer.py); and a check that the run fits in memory.
    batches, layout = data.batches_per_epoch(train_iter), devices.Layout(symbol, shape)
    schedule = optimizer.lr_schedule(config.lr_scheduler, config.lr, config.num_epochs * batches,
                                     [epoch * batches for epoch in config.lr_step_epochs], config.lr_factor)
    opt = optimizer.OPTIMIZERS[config.optimizer](config.lr, config.mom, config.wd, schedule, config.clip_gradient or None)
    memory.check(memory.estimate(symbol, shape, data.device_bytes(train_iter, test_iter), contexts, opt,
                                 train_iter.provide_data[0].shape[0], test_iter.provide_data[0].shape[0]))
    # 4. Bind: simple_bind an executor per context and batch share (devices.py); parameters in one buffer.
    group = devices.Group(contexts, layout, comm, speed.inputs,
                          graph=lambda samples, train: speed.graph(graph, samples) if train else graph)
    opt = speed.update_rule(opt, layout)
    # 5. Initialise the weights by hand; or load them, to score a checkpoint or to resume.
    initializer.glorot_uniform(group.params, rng)
    if config.evaluate:                             # --evaluate: score the checkpoint, train nothing
        runstate.load_weights(config, group.params, symbol)
        group.share_weights()
        scored = evaluate(group, test_iter)
        log(report.scored_line(config.model_prefix, config.load_epoch, scored))
        return [{"epoch": config.load_epoch, "test_loss": scored["loss"], "test_acc": scored["acc"]}]
    meter, head_gradients = metrics.Meter(), loss.head_gradients(config.loss)
    history, skip = runstate.restore(start, config, symbol, group, opt, rng, meter)
    group.share_weights(from_rank0=True)
    comm.init(group.grads.flat)
    runstate.begin(start, config, log)              # --start-over deletes the old checkpoints only now

    # 6. The loop.
    with interrupts.deferred() as signals:
        for epoch in range(len(history) + 1, config.num_epochs + 1):
            epoch_rng, tic = rng.get_state(), time.perf_counter()
            train_iter.reset()
            for i, batch in enumerate(train_iter):
                if i < skip:                        # a resumed epoch goes on after the batches it had done
                    continue
                executors, samples = group.load(batch)  # each device's share, in its executor's inputs
                for exe in executors:
                    exe.forward(is_train=True)      # forward
                    exe.backward(head_gradients(exe))  # backward: gradients summed over the share
                group.sum_grads()                   # over devices and workers, into the first device's
                opt.update(group.params, group.grads, rescale_grad=1.0 / samples)  # update, parameter by name
                group.share_weights()               # the new weights reach every device
                meter.add(executors, samples)       # measure, on the device: no host sync per batch
                if signals.pending:                 # Ctrl-C, SIGTERM or SIGHUP: this step is done; save, stop
                    raise runstate.interrupt(config, command, symbol, group.params, opt, history, signals.pending,
                                             epoch_rng, meter, (epoch, i + 1))
                if progress and config.disp_batches and (i + 1) % config.disp_batches == 0:
                    progress(report.progress_figures(meter, epoch, i + 1, batches, tic))
            per_batch = meter.per_batch()           # the epoch's one host sync: all its work is done after it
            seconds = time.perf_counter() - tic
            runstate.check_finite(per_batch, group.params.flat, epoch, config)
            totals = comm.all_workers(per_batch.sum(axis=0))
            history.append(report.record(epoch, totals, *meter.total_samples(), evaluate(group, test_iter), seconds))
            if comm.rank == 0:
                report.write_metrics(config.metrics_file, history[-1])
                runstate.save_epoch(config, symbol, group.params, opt, rng, history)
                log(report.epoch_line(history[-1]))
            meter.reset()
            skip = 0
            if signals.pending:
                raise runstate.interrupt(config, command, symbol, group.params, opt, history, signals.pending,
                                         rng.get_state())
    interrupts.set_stage("after the last epoch; its checkpoint is saved" if config.model_prefix else
                         "after the last epoch")
    if comm.rank == 0 and report.pictures_folder(config):
        log(report.save_pictures(report.pictures_folder(config), history, group, test_iter, config.loss))
    log(f"final test accuracy {history[-1]['test_acc']:.4f} after {len(history)} epochs")
    return history


def evaluate(group, test_iter):
    """Score every sample of test_iter once with the current weights; return {'loss', 'acc'}."""
    test_iter.reset()
    totals, count = None, 0
    for batch in test_iter:
        executors, _ = group.load(batch, train=False)
        for exe in executors:
            scored = exe.forward(is_train=False)[1].as_in_context(group.replicas[0].ctx)  # [correct, summed loss]
            totals = scored.copy() if totals is None else totals + scored
            count += exe.outputs[0].shape[0]
    correct, loss_sum = totals.asnumpy()
    return {"loss": float(loss_sum / count), "acc": float(correct / count)}


def main(argv=None):
    """Parse and check the flags, then train; every way the run can end early is one line and an exit code."""
    program = os.path.basename(__file__)
    interrupts.guard()
    try:
        import optimizer
        rates = ", ".join(f"{name} {cls.default_learning_rate:g}" for name, cls in sorted(optimizer.OPTIMIZERS.items()))
        config = cli.parse(Config, argv, prog=program, description=__doc__, notes={"lr": rates})
        contexts = config.cpus or (len(config.gpus.split(",")) if config.gpus else 1)
        threads, why = cpu.choose_threads(config.threads, network.multiply_adds(config.network, config.num_hidden),
                                          -(-config.batch_size // contexts), contexts)
        applied = cpu.use_threads(threads)  # before MXNet loads, which reads them once: see cpu.py
        print(f"threads: {threads} ({why})" if applied else "threads: those MXNet loaded with, before main() ran")
        cpu.flush_denormals()  # before MXNet starts its threads, which inherit it
        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # read at bind time; silences a banner per executor
        import report
        console = report.Console(sys.stdout)
        train(config, log=console.line, progress=console.progress)
    except errors.Interrupted as err:
        print(f"{program}: {err}", file=sys.stderr)
        return err.exit_code
    except errors.RunError as err:
        print(f"{program}: error: {err}", file=sys.stderr)
        return err.exit_code
    except interrupts.Stop as stop:
        print(f"{program}: {stop}", file=sys.stderr)
        return interrupts.EXIT_CODE
    except (MemoryError, OSError, RuntimeError) as err:  # what no check foresaw, still in one line
        if isinstance(err, RuntimeError) and type(err).__name__ != "MXNetError":
            raise  # a bug of ours: its traceback is what helps
        print(f"{program}: error: {type(err).__name__}: {err}".splitlines()[0][:300], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
