"""Train an MLP on MNIST by driving MXNet's executor by hand: bind, initialise, forward, backward, update."""
import argparse
import dataclasses
import functools
import inspect
import io
import itertools
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
import tokenize

import mxnet as mx
import numpy as np

import checkpoint
import data
import loss
import metrics
import network
import plots
from optimizer import OPTIMIZERS, lr_schedule


@dataclasses.dataclass(frozen=True)
class Config:
    """Edit the defaults here; every field is also a flag, e.g. batch_size is --batch-size."""
    gpus: str = ""                 # GPU ids to train on, e.g. 0 or 0,1,2,3; empty trains on the CPU
    cpus: int = 0                  # train on this many CPU contexts, mx.cpu(0) to mx.cpu(N-1); 0 means one
    kv_store: str = "device"       # sums gradients: local or device (several devices), dist_sync (several machines)
    batch_size: int = 100          # samples per SGD step
    num_epochs: int = 15           # passes over the training set
    optimizer: str = "sgd"         # sgd, nag (Nesterov) or adam, all hand-written in optimizer.py
    lr: float = 0.1                # learning rate
    mom: float = 0.0               # momentum, for sgd and nag
    wd: float = 0.0                # L2 weight decay, applied to every parameter
    lr_scheduler: str = "none"     # none; step: times --lr-factor at each of --lr-step-epochs; cosine: down to 0
    lr_step_epochs: tuple = ()     # epochs after which the step schedule multiplies the rate, e.g. 10,13
    lr_factor: float = 0.1         # the step schedule's factor
    loss: str = "builtin"          # builtin: SoftmaxOutput's gradient; manual: softmax cross-entropy in loss.py
    seed: int = 42                 # seeds the weight init and the per-epoch shuffle
    num_hidden: tuple = (128, 64)  # widths of the hidden layers, comma-separated on the command line
    data_dir: str = ""             # folder holding the four MNIST files; empty: $MNIST_DIR, else the download cache
    metrics_file: str = ""         # append one JSON object per epoch to this file
    model_prefix: str = ""         # save PREFIX-symbol.json and PREFIX-%04d.params (+ .state.json) as training goes
    save_period: int = 1           # save a checkpoint every this many epochs, and after the last
    load_epoch: int = 0            # resume from the checkpoint PREFIX-%04d saved after this epoch; 0 starts afresh
    resume: bool = False           # resume from PREFIX-interrupted, saved mid-epoch on Ctrl-C or SIGTERM
    evaluate: bool = False         # with --load-epoch: only score that checkpoint on the test set
    disp_batches: int = 100        # a progress update every this many batches; 0 for none
    plot_dir: str = ""             # write the three pictures here; empty: PREFIX-plots with --model-prefix, else none

    def __post_init__(self):
        problems = [message for failed, message in (
            (not re.fullmatch(r"(\d+(,\d+)*)?", self.gpus),
             f"--gpus must be GPU ids such as 0 or 0,1, got {self.gpus!r}"),
            (self.cpus < 0, f"--cpus must be >= 0, got {self.cpus}"),
            (self.cpus and self.gpus, "--cpus and --gpus exclude each other"),
            (self.kv_store not in ("local", "device", "dist_sync"),
             f"--kv-store must be local, device or dist_sync, got {self.kv_store!r}"),
            (self.batch_size < 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.num_epochs < 1, f"--num-epochs must be >= 1, got {self.num_epochs}"),
            (not self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.optimizer not in OPTIMIZERS,
             f"--optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, got {self.optimizer!r}"),
            (not 0 <= self.mom < 1, f"--mom must be in [0, 1), got {self.mom}"),
            (self.optimizer == "adam" and self.mom > 0, "--mom does not apply to adam, which keeps its own moments"),
            (self.lr_scheduler not in ("none", "step", "cosine"),
             f"--lr-scheduler must be none, step or cosine, got {self.lr_scheduler!r}"),
            (self.lr_scheduler == "step" and not self.lr_step_epochs, "--lr-scheduler step needs --lr-step-epochs"),
            (not 0 < self.lr_factor <= 1, f"--lr-factor must be in (0, 1], got {self.lr_factor}"),
            (self.loss not in ("builtin", "manual"), f"--loss must be builtin or manual, got {self.loss!r}"),
            (self.disp_batches < 0, f"--disp-batches must be >= 0, got {self.disp_batches}"),
            (not self.wd >= 0, f"--wd must be >= 0, got {self.wd}"),
            (not self.num_hidden or min(self.num_hidden) < 1,
             f"--num-hidden must be positive widths such as 128,64, got {self.num_hidden}"),
            (self.save_period < 1, f"--save-period must be >= 1, got {self.save_period}"),
            (self.load_epoch < 0, f"--load-epoch must be >= 0, got {self.load_epoch}"),
            (self.load_epoch > 0 and not self.model_prefix, "--load-epoch needs --model-prefix"),
            (self.resume and not self.model_prefix, "--resume needs --model-prefix"),
            (self.resume and (self.load_epoch or self.evaluate), "--resume goes with neither --load-epoch nor --evaluate"),
            (self.evaluate and not self.load_epoch, "--evaluate needs --load-epoch (and --model-prefix)"),
            (self.load_epoch >= self.num_epochs and not self.evaluate,
             f"--load-epoch {self.load_epoch} leaves nothing to train with --num-epochs {self.num_epochs}"),
        ) if failed]
        if problems:
            raise UsageError(problems[0])


NUM_CLASSES = 10
# Large enough that the test set is scored in one pass; larger sets are scored in chunks of this size.
EVAL_CHUNK = 10_000
_PIXEL_RANGE = ("pixel_min", "pixel_max")  # inputs of a graph that takes its pixels as bytes


class UsageError(Exception):
    """A bad flag, data set or device; main() prints its one-line message and exits 2."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training after saving; main() prints the message and exits 130."""


class Diverged(Exception):
    """Training produced a non-finite loss or parameter; main() prints its one-line message and exits 3."""


def train(config, log=None, progress=None):
    """Train as config says; log(line) once per epoch, progress(figures) every --disp-batches; return the history."""
    log = log or (lambda line: None)
    run, opt = _setup(config, log)
    if run.rank > 0:  # with dist_sync, rank 0 alone reports, saves and draws
        log, progress = (lambda line: None), None
    progress = progress if config.disp_batches else None
    history, skip = _resume(config, run, opt) if config.load_epoch or config.resume else ([], 0)
    _share_weights(run, from_rank0=True)
    head_grads = _head_grads(config.loss)
    first, num_train = run.devices[0], run.num_train
    with _StopOnSignal() as stop:
        for epoch in range(len(history) + 1, config.num_epochs + 1):
            epoch_rng, tic = _encode_rng(run.rng), time.perf_counter()
            batches = enumerate(data.epoch_batches(num_train, config.batch_size, run.contexts, run.rng,
                                                   run.rank, run.num_workers))
            for i, shares in itertools.islice(batches, skip, None):
                batch = min(config.batch_size, num_train - i * config.batch_size)
                for dev, idx in zip(run.devices, shares):                 # each device: its share of the batch
                    exe = dev.executors[batch]
                    mx.nd.take(dev.train_x, idx, out=exe.arg_dict["data"])  # gather on the device
                    mx.nd.take(dev.train_y, idx, out=exe.arg_dict["softmax_label"])
                    exe.forward(is_train=True)                            # forward
                    exe.backward(head_grads(exe))                         # backward: gradients summed over the share
                    exe.outputs[1].copyto(dev.stats[i])                   # measure on the device: no per-batch sync
                _sum_grads(run)                                           # over devices and workers, into the first
                opt.update(first.all_params, first.all_grads, 1.0 / batch, run.prescaled)  # once, every parameter
                _share_weights(run)                                       # the new weights reach every device
                if stop.signum:                                           # Ctrl-C or SIGTERM: keep this step, exit
                    raise _interrupt(config, run, opt, history, (epoch, i + 1, epoch_rng), stop.signum)
                if progress and (i + 1) % config.disp_batches == 0:
                    progress(_progress_figures(run, epoch, i, config.batch_size, tic))
            per_batch = sum(dev.stacked_stats().asnumpy() for dev in run.devices)  # the epoch's one host sync
            seconds = time.perf_counter() - tic
            _check_finite(per_batch, first.flat_params, epoch)
            totals, test = _all_workers(run, per_batch.sum(axis=0)), evaluate(run.test_exes, run.num_test)
            history.append(_record(epoch, totals, num_train, test, seconds, num_train - skip * config.batch_size))
            if run.rank == 0:
                _after_epoch(config, run, opt, history)
                log(_format_epoch(history[-1]))
            skip = 0
    if run.rank == 0:
        _plot(config, run, history, log)
    log(f"final test accuracy {history[-1]['test_acc']:.4f} after {len(history)} epochs")
    return history


def score(config):
    """Score the checkpoint that config names (--model-prefix, --load-epoch) on the test set; return {'loss', 'acc'}."""
    run, _ = _setup(config, lambda line: None)
    checkpoint.load(config.model_prefix, config.load_epoch, run.params)
    return evaluate(run.test_exes, run.num_test)


def evaluate(executors, num_samples):
    """Score every sample once through the scoring executors; return {'loss', 'acc'}."""
    totals = executors[0].forward(is_train=False)[1].copy()
    for exe in executors[1:]:
        totals += exe.forward(is_train=False)[1]
    correct, loss_sum = totals.asnumpy()
    return {"loss": float(loss_sum / num_samples), "acc": float(correct / num_samples)}


@dataclasses.dataclass
class _Device:
    """One context's part of training: its executors, parameter and gradient buffers, and data replica."""
    ctx: mx.Context
    executors: dict            # global batch size -> training executor for this device's share of such a batch
    params: dict               # name -> the executor's parameter array, a view into flat_params
    flat_params: mx.nd.NDArray
    flat_grads: mx.nd.NDArray
    train_x: mx.nd.NDArray     # the training images: uint8 bytes when pixel_range is set, else data.py's floats
    train_y: mx.nd.NDArray
    stats: list                # per batch of the epoch, a (2,) array of this device's share: correct, summed loss
    pixel_range: tuple = None  # (min, max) arrays with which the graph's dequantize makes data.py's floats of bytes
    summed: tuple = (0, 0, 0)  # summed_stats' last (epoch, count, sum)

    def stacked_stats(self, stop=None, start=0):
        """The stats of batches start to stop (to the end if None) as one (stop - start, 2) array."""
        # One array per batch, not rows of one: reading early batches then waits for those alone, since the
        # engine orders work per array, and the batches queued after them keep the engine busy meanwhile.
        return mx.nd.stack(*self.stats[start:stop])

    def summed_stats(self, epoch, count):
        """The sum of epoch's first count stats, as numpy, reading only the batches that the last call did not."""
        if self.summed[0] != epoch:
            self.summed = (epoch, 0, np.zeros(2))
        _, start, total = self.summed
        if count > start:
            total = total + self.stacked_stats(count, start).asnumpy().sum(axis=0)
        self.summed = (epoch, count, total)
        return total

    @property
    def all_params(self):
        return {"all": self.flat_params}

    @property
    def all_grads(self):
        return {"all": self.flat_grads}


@dataclasses.dataclass
class _Run:
    """What training sets up once: devices, graph, scoring executors, the RNG and, with several, the kvstore."""
    devices: list
    net: mx.sym.Symbol         # the network that checkpoints save, whatever the loss mode
    test_exes: list
    num_train: int
    num_test: int
    num_batches: int
    rng: np.random.RandomState
    kv: object = None          # mx.kv.KVStore when gradients are summed over devices or workers
    rank: int = 0
    num_workers: int = 1
    prescaled: bool = False    # backward already multiplies the gradients by the update's constant factor

    @property
    def contexts(self):
        return [dev.ctx for dev in self.devices]

    @property
    def params(self):
        return self.devices[0].params


_GRADS, _WEIGHTS, _TOTALS = 0, 1, 2  # kvstore keys


def _setup(config, log):
    """Check every input, load the data, bind and initialise: everything before the first batch; return run, opt."""
    contexts = _contexts(config.gpus, config.cpus)
    _check_writable(config.metrics_file, "--metrics-file")
    _check_writable(config.model_prefix, "--model-prefix")
    kv = mx.kv.create(config.kv_store) if len(contexts) > 1 or config.kv_store == "dist_sync" else None
    rank, num_workers = (kv.rank, kv.num_workers) if kv else (0, 1)
    if rank == 0:
        log("config: " + json.dumps(dataclasses.asdict(config)))
    train_x, train_y, test_x, test_y = data.load_mnist(config.data_dir or None, progress=_download_logger(log),
                                                       as_bytes=True)
    _check_batch(config.batch_size, len(train_x), num_workers * len(contexts))
    rng = np.random.RandomState(config.seed)
    num_batches = -(-len(train_x) // config.batch_size)
    opt = _optimizer(config, num_batches)
    # Backward can multiply the loss gradient by the update's constant factor (lr / batch for SGD) for free,
    # which saves the update a pass over every parameter; not so the manual loss, made outside the graph.
    fold = opt.fixed_scale() if config.loss == "builtin" else None
    batches = [batch for batch in (config.batch_size, len(train_x) % config.batch_size) if batch]
    scales = {batch: fold / batch if fold is not None else 1.0 for batch in batches}
    graph = functools.partial(_training_graph, config.num_hidden, config.loss)
    devices = []
    for d, ctx in enumerate(contexts):
        # This device's share of each batch size: of a full batch, and of the short last one if any.
        shares = {batch: end - begin for batch in batches
                  for begin, end in [data.shares(batch, rank, num_workers, len(contexts))[d]]}
        devices.append(_device(ctx, graph, scales, shares, train_x, train_y, num_batches))
    _init_params(devices[0].params, rng)
    ctx = contexts[0]
    test_exes = _bind_eval(graph(), ctx, devices[0].params, mx.nd.array(data.to_floats(test_x), ctx),
                           mx.nd.array(test_y, ctx))
    if kv:
        kv.init(_GRADS, devices[0].flat_grads)
        kv.init(_TOTALS, mx.nd.zeros(2, ctx))
    return _Run(devices, network.get_symbol(NUM_CLASSES, config.num_hidden), test_exes, len(train_x), len(test_x),
                num_batches, rng, kv, rank, num_workers, prescaled=fold is not None), opt


def _device(ctx, graph, scales, shares, images, labels, num_batches):
    """Upload the data to ctx and bind an executor per batch size (scales, shares: batch size -> grad_scale, share)."""
    # The whole data set lives on the device, so each batch is a device-side gather, not a host copy. As bytes
    # it is a quarter of the memory to gather from, when dequantize on ctx reproduces data.py's floats.
    pixel_range = _pixel_range(ctx, [(share, images.shape[1]) for share in shares.values()])
    train_x = mx.nd.array(images, ctx, np.uint8) if pixel_range else mx.nd.array(data.to_floats(images), ctx)
    executors, flat = {}, None
    for batch, scale in scales.items():  # all over the same flat parameter and gradient buffers
        symbol = graph(scale, pixel_bytes=pixel_range is not None)
        executors[batch], *flat = _bind(symbol, ctx, shares[batch], images.shape[1], flat, pixel_range)
    # Every executor's parameters are views of the same flat buffer, so the last one bound names them all.
    params = {name: executors[batch].arg_dict[name] for name in _param_names(symbol)}
    stats = [mx.nd.zeros(2, ctx) for _ in range(num_batches)]
    return _Device(ctx, executors, params, *flat, train_x, mx.nd.array(labels, ctx), stats, pixel_range)


def _check_batch(batch_size, num_train, num_parts):
    if batch_size > num_train:
        raise UsageError(f"--batch-size {batch_size} is larger than the {num_train} training samples")
    tail = num_train % batch_size
    if batch_size < num_parts or 0 < tail < num_parts:
        raise UsageError(f"--batch-size {batch_size} leaves a batch of {min(batch_size, tail or batch_size)} "
                         f"samples for {num_parts} devices in all; every device needs at least one")


def _pixel_range(ctx, shapes):
    """(min, max) arrays with which dequantize on ctx turns bytes of these shapes into data.py's floats; or None.

    MXNet's MKLDNN kernel scales the bytes by max / 255.5 and its plain kernel by max / 255: try the max that each
    needs, and keep the first that gives every byte value's float bit for bit, on the very shapes training uses.
    """
    codes = [np.arange(np.prod(shape)).reshape(shape) % 256 for shape in shapes]
    mkldnn_max = np.float32(255.5) / np.float32(255)
    for top in (1, mkldnn_max, np.nextafter(mkldnn_max, np.float32(2)), np.nextafter(mkldnn_max, np.float32(0))):
        low, high = mx.nd.zeros(1, ctx), mx.nd.array([top], ctx)
        if all(np.array_equal(mx.nd.contrib.dequantize(mx.nd.array(c, ctx, np.uint8), low, high).asnumpy(),
                              c.astype(np.float32) * data.PIXEL_SCALE) for c in codes):
            return low, high
    return None


def _sum_grads(run):
    """Sum the devices' gradients, and with dist_sync every worker's, into the first device's buffer."""
    if run.kv:
        run.kv.push(_GRADS, [dev.flat_grads for dev in run.devices])
        run.kv.pull(_GRADS, out=run.devices[0].flat_grads)


def _share_weights(run, from_rank0=False):
    """Copy the first device's weights to the others; from_rank0 first gives every worker rank 0's weights."""
    first = run.devices[0]
    if from_rank0 and run.num_workers > 1:
        run.kv.init(_WEIGHTS, first.flat_params)  # the store keeps rank 0's value, and every worker pulls it
        run.kv.pull(_WEIGHTS, out=first.flat_params)
    for dev in run.devices[1:]:
        first.flat_params.copyto(dev.flat_params)


def _all_workers(run, totals):
    """The epoch's [correct, loss] summed over all workers (one push and pull per epoch)."""
    if run.num_workers == 1:
        return totals
    run.kv.push(_TOTALS, mx.nd.array(totals, run.contexts[0]))
    summed = mx.nd.zeros(2, run.contexts[0])
    run.kv.pull(_TOTALS, out=summed)
    return summed.asnumpy()


def _record(epoch, totals, num_train, test, seconds, trained):
    correct, loss_sum = totals
    return {"epoch": epoch, "train_loss": float(loss_sum / num_train), "train_acc": float(correct / num_train),
            "test_loss": test["loss"], "test_acc": test["acc"], "epoch_seconds": seconds,
            "samples_per_second": trained / seconds}


def _after_epoch(config, run, opt, history):
    """Append to the metrics file and save a checkpoint, as config asks."""
    epoch = history[-1]["epoch"]
    if config.metrics_file:
        _append_json_line(config.metrics_file, history[-1])
    if config.model_prefix and (epoch % config.save_period == 0 or epoch == config.num_epochs):
        checkpoint.save(config.model_prefix, epoch, run.net, run.params, _trainer_state(config, run, opt, history))


def _trainer_state(config, run, opt, history, in_epoch=None):
    state = {"epoch": len(history), "config": dataclasses.asdict(config), "history": history,
             "rng": _encode_rng(run.rng),
             "optimizer": {"num_update": opt.num_update,
                           "state": {name: [checkpoint.encode_array(array) for array in arrays]
                                     for name, arrays in opt.state.items()}}}
    if in_epoch:
        epoch, batches_done, epoch_rng = in_epoch
        # The RNG as the epoch began, so a resume redraws the same shuffle and skips the batches already done.
        state.update(rng=epoch_rng, in_epoch={"epoch": epoch, "batches_done": batches_done,
                                              "stats": [checkpoint.encode_array(dev.stacked_stats(batches_done))
                                                        for dev in run.devices]})
    return state


def _resume(config, run, opt):
    """Load weights, optimizer state and RNG from the checkpoint config names; return (history, batches to skip)."""
    tag = checkpoint.INTERRUPTED if config.resume else config.load_epoch
    state = checkpoint.load(config.model_prefix, tag, run.params)
    saved = state["config"]
    if saved["optimizer"] != config.optimizer or (saved["mom"] > 0) != (config.mom > 0):
        raise checkpoint.CheckpointError(
            f"the checkpoint was trained with --optimizer {saved['optimizer']} --mom {saved['mom']}; resume with "
            f"the same optimizer, and momentum on or off as it was")
    opt.num_update = state["optimizer"]["num_update"]
    opt.state = {name: [checkpoint.decode_array(array, run.contexts[0]) for array in arrays]
                 for name, arrays in state["optimizer"]["state"].items()}
    run.rng.set_state(_decode_rng(state["rng"]))
    in_epoch = state.get("in_epoch")
    if not in_epoch:
        return state["history"], 0
    if len(in_epoch["stats"]) != len(run.devices):
        raise checkpoint.CheckpointError(f"the interrupted run had {len(in_epoch['stats'])} devices, this one "
                                         f"{len(run.devices)}; resume it on as many")
    for dev, stats in zip(run.devices, in_epoch["stats"]):
        for row, saved in zip(dev.stats[:in_epoch["batches_done"]], checkpoint.decode_array(stats, dev.ctx)):
            row[:] = saved
    return state["history"], in_epoch["batches_done"]


def _interrupt(config, run, opt, history, in_epoch, signum):
    """Save the state after the last completed step under its own name; return the Interrupted to raise."""
    epoch, batches_done, _ = in_epoch
    where = f"{signal.Signals(signum).name} in epoch {epoch} after batch {batches_done}"
    if not config.model_prefix:
        return Interrupted(f"stopped by {where}; nothing saved, since --model-prefix is not set")
    mx.nd.waitall()
    checkpoint.save(config.model_prefix, checkpoint.INTERRUPTED, run.net, run.params,
                    _trainer_state(config, run, opt, history, in_epoch))
    params_path = checkpoint.paths(config.model_prefix, checkpoint.INTERRUPTED)[1]
    return Interrupted(f"stopped by {where}; saved {params_path}. Resume with: "
                       f"{_command_line(dataclasses.replace(config, resume=True, load_epoch=0))}")


def _command_line(config):
    """The shortest command that recreates config: every field that differs from its default, as a flag."""
    words = ["python", "train_mnist.py"]
    for field in dataclasses.fields(Config):
        value = getattr(config, field.name)
        if value == field.default:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        else:
            words += [flag, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return " ".join(shlex.quote(word) for word in words)


class _StopOnSignal:
    """Inside the block, SIGINT and SIGTERM are only recorded, so the loop stops between two steps."""

    def __enter__(self):
        self.signum, self._previous = None, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def _record(self, signum, frame):
        self.signum = signum
        self._restore()  # a second signal then acts at once, as usual

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def __exit__(self, *exc_info):
        self._restore()


def _encode_rng(rng):
    name, keys, pos, has_gauss, cached = rng.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]


def _decode_rng(encoded):
    name, keys, pos, has_gauss, cached = encoded
    return name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached


def _check_finite(per_batch, flat_params, epoch):
    """Raise Diverged naming the first batch whose loss is not finite, or if any parameter is not."""
    bad = np.flatnonzero(~np.isfinite(per_batch[:, 1]))
    if len(bad) or not np.isfinite(mx.nd.sum(flat_params).asscalar()):
        where = f"batch {bad[0] + 1}" if len(bad) else "its last batch"
        raise Diverged(f"training diverged: non-finite {'loss' if len(bad) else 'parameters'} in epoch {epoch}, "
                       f"{where}; try a smaller --lr. Checkpoints already saved are untouched")


def _training_graph(num_hidden, loss_mode, grad_scale=1.0, pixel_bytes=False):
    """The bound graph: the network's head, plus the metric as a BlockGrad'ed second output.

    pixel_bytes: data comes in as uint8 bytes, which the graph dequantizes with inputs pixel_min and pixel_max.
    """
    if loss_mode == "builtin":
        head = probs = network.get_symbol(NUM_CLASSES, num_hidden, grad_scale=grad_scale)
        label = head.get_internals()["softmax_label"]
    elif loss_mode == "manual":
        if grad_scale != 1.0:
            raise ValueError("the manual loss's gradient comes from outside the graph: no grad_scale to fold into")
        head = network.get_symbol(NUM_CLASSES, num_hidden, logits=True)
        label, probs = mx.sym.var("softmax_label"), mx.sym.softmax(head, axis=1)
    else:
        raise ValueError(f"unknown loss mode {loss_mode!r}")
    # The metric runs inside the bound graph, so it costs no extra dispatch per batch.
    graph = mx.sym.Group([head, mx.sym.BlockGrad(metrics.batch_metrics(mx.sym, probs, label))])
    if not pixel_bytes:
        return graph
    pixels = mx.sym.contrib.dequantize(mx.sym.var("data", dtype=np.uint8), *map(mx.sym.var, _PIXEL_RANGE))
    return graph(data=pixels)


def _head_grads(loss_mode):
    """exe -> the out_grads for exe.backward(): none for SoftmaxOutput, the hand-written gradient for manual."""
    if loss_mode == "builtin":
        return lambda exe: None
    if loss_mode == "manual":
        return lambda exe: [loss.softmax_cross_entropy_grad(exe.outputs[0], exe.arg_dict["softmax_label"])]
    raise ValueError(f"unknown loss mode {loss_mode!r}")


def _optimizer(config, batches_per_epoch):
    schedule = lr_schedule(config.lr_scheduler, config.lr, config.num_epochs * batches_per_epoch,
                           [epoch * batches_per_epoch for epoch in config.lr_step_epochs], config.lr_factor)
    return OPTIMIZERS[config.optimizer](config.lr, config.mom, config.wd, lr_schedule=schedule)


def _progress_figures(run, epoch, i, batch_size, tic):
    """Running loss and accuracy of the epoch so far, read two batches behind the one just queued.

    Reading the batch just queued would stall Python until the queue drains, and the engine would then idle
    while Python queues the next batch; two batches behind, the engine still has work while Python waits.
    """
    done = max(i - 1, 1)
    correct, loss_sum = sum(dev.summed_stats(epoch, done) for dev in run.devices)
    # This worker's samples (its metrics are of its own shares); the speed is of all workers together.
    mine = done * sum(end - begin for begin, end in data.shares(batch_size, run.rank, run.num_workers,
                                                                  len(run.devices)))
    return {"epoch": epoch, "batch": i + 1, "batches": run.num_batches, "loss": float(loss_sum / mine),
            "acc": float(correct / mine), "samples_per_second": done * batch_size / (time.perf_counter() - tic)}


def _plot(config, run, history, log):
    folder = config.plot_dir or (config.model_prefix + "-plots" if config.model_prefix else "")
    if not folder:
        return
    probs = mx.nd.concat(*[exe.outputs[0] for exe in run.test_exes], dim=0)
    if config.loss == "manual":
        probs = mx.nd.softmax(probs, axis=1)  # that graph's first output is the logits
    images = mx.nd.concat(*[exe.arg_dict["data"] for exe in run.test_exes], dim=0).asnumpy()
    labels = mx.nd.concat(*[exe.arg_dict["softmax_label"] for exe in run.test_exes], dim=0).asnumpy()
    try:
        written = plots.save_plots(folder, history, probs.asnumpy(), labels.astype(np.int64), images)
    except Exception as err:  # pictures are a nicety: no failure of theirs may fail a finished training run
        log(f"warning: no pictures written: {type(err).__name__}: {err}".splitlines()[0])
        return
    log(f"pictures: {', '.join(written)}")


def _param_names(symbol):
    return [name for name in symbol.list_arguments() if name not in ("data", "softmax_label", *_PIXEL_RANGE)]


def _bind(symbol, ctx, batch_size, num_features, flat=None, pixel_range=None):
    """simple_bind a training executor; return it with the flat buffers its parameters and gradients view.

    flat: the (params, grads) buffers of another executor, to share; None makes new ones.
    pixel_range: the (min, max) arrays that a pixel_bytes graph dequantizes its data with.
    """
    ranges = dict(zip(_PIXEL_RANGE, pixel_range or ()))
    inputs = dict(data=(batch_size, num_features), softmax_label=(batch_size,), **{k: (1,) for k in ranges})
    shapes = dict(zip(symbol.list_arguments(), symbol.infer_shape(**inputs)[0]))
    names = _param_names(symbol)
    sizes = [int(np.prod(shapes[name])) for name in names]
    flat_params, flat_grads = flat or (mx.nd.zeros(sum(sizes), ctx), mx.nd.zeros(sum(sizes), ctx))
    # One contiguous buffer each for all weights and all gradients: the hand-written update then costs one or
    # two element-wise ops per step instead of one or two per parameter array.
    views, offset = {}, 0
    for name, size in zip(names, sizes):
        views[name] = flat_params[offset:offset + size].reshape(shapes[name])
        views["grad of " + name] = flat_grads[offset:offset + size].reshape(shapes[name])  # simple_bind's key
        offset += size
    grad_req = {name: "write" if name in names else "null" for name in shapes}  # no input gradient
    exe = symbol.simple_bind(ctx, grad_req=grad_req, shared_buffer=dict(views, **ranges),
                             type_dict={"data": np.uint8} if ranges else None, **inputs)
    return exe, flat_params, flat_grads


def _bind_eval(symbol, ctx, params, images, labels):
    """Bind one scoring executor per chunk, reading the shared weights and the device-resident data in place."""
    grad_req = {name: "write" if name in params else "null" for name in symbol.list_arguments()}
    executors = []
    for start in range(0, len(images), EVAL_CHUNK):
        x, y = images[start:start + EVAL_CHUNK], labels[start:start + EVAL_CHUNK]
        # Parameter gradients stay requested although never computed: a gradient-free graph is rewritten by
        # mxnet 1.9.1's MKLDNN subgraph pass into fused FC ops that keep scoring their first weights.
        executors.append(symbol.simple_bind(ctx, grad_req=grad_req, shared_buffer=dict(params, data=x, softmax_label=y),
                                            data=x.shape, softmax_label=y.shape))
    return executors


def _init_params(params, rng):
    """Glorot-uniform weights, bound sqrt(6 / (fan_in + fan_out)), and zero biases, drawn from rng."""
    for name, array in params.items():
        if name.endswith("_weight"):
            fan_out, fan_in = array.shape[0], int(np.prod(array.shape[1:]))
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            array[:] = rng.uniform(-bound, bound, size=array.shape).astype(np.float32)
        elif name.endswith("_bias"):
            array[:] = 0
        else:
            raise ValueError(f"no initialiser for parameter {name}")


def _contexts(gpus, cpus):
    if cpus:
        return [mx.cpu(i) for i in range(cpus)]
    if not gpus:
        return [mx.cpu()]
    ids = [int(i) for i in gpus.split(",")]
    if not mx.runtime.Features().is_enabled("CUDA"):
        raise UsageError("--gpus needs a CUDA build of MXNet, and this one is CPU-only: "
                         "pip uninstall -y mxnet && pip install mxnet-cu112 (or the mxnet-cu11x matching your CUDA)")
    if max(ids) >= mx.context.num_gpus() or len(set(ids)) < len(ids):
        raise UsageError(f"--gpus {gpus}: MXNet sees {mx.context.num_gpus()} GPU(s), and each id may appear once")
    for i in ids:
        try:
            (mx.nd.ones((1,), ctx=mx.gpu(i)) * 2).asnumpy()  # one real kernel launch: a wheel/GPU mismatch fails here
        except mx.base.MXNetError as err:
            if "no kernel image is available" in str(err):
                raise UsageError(f"GPU {i} is newer than the installed MXNet wheel supports: the mxnet-cu11x "
                                 "wheels carry kernels for compute capability 5.0 to 8.6 only") from None
            raise
    return [mx.gpu(i) for i in ids]


def _check_writable(path, flag):
    folder = os.path.dirname(os.path.abspath(path)) if path else None
    if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        raise UsageError(f"cannot write {flag} {path}: {folder} is not a writable folder")


def _append_json_line(path, record):
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(old + json.dumps(record) + "\n")
    # Rewritten whole and renamed into place: a crash leaves the old file or the new one, never half a line.
    checkpoint.write_atomic(path, write)


def _format_epoch(r):
    return (f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f} acc {r['train_acc']:.4f}  "
            f"test loss {r['test_loss']:.4f} acc {r['test_acc']:.4f}  "
            f"{r['epoch_seconds']:6.2f} s  {r['samples_per_second']:8.0f} samples/s")


def _download_logger(log):
    shown = {}

    def progress(name, done, total):
        # A line per tenth of a file: readable on a terminal and in a log file alike.
        tenth = done * 10 // total if total else 0
        if shown.get(name) != tenth:
            shown[name] = tenth
            log(f"downloading {name}.gz: {done / 1e6:.1f} of {total / 1e6:.1f} MB")
    return progress


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line, not argparse's usage block: the usage is one --help away.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _field_help():
    """Map each Config field to the comment on its line, so the comment is the flag's --help text."""
    tokens = tokenize.generate_tokens(io.StringIO(inspect.getsource(Config)).readline)
    # argparse %-formats help strings, so a literal % is doubled.
    return {tok.line.split(":", 1)[0].strip(): tok.string.lstrip("# ").replace("%", "%%")
            for tok in tokens if tok.type == tokenize.COMMENT}


def _int_tuple(text):
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 128,64, got {text!r}") from None


def parse_config(argv=None):
    """Build a Config from the command line; exit 2 with one line on an unknown flag or a bad value."""
    parser = _Parser(prog="train_mnist.py", description=__doc__, allow_abbrev=False,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = _field_help()
    for field in dataclasses.fields(Config):
        flag, kind = "--" + field.name.replace("_", "-"), type(field.default)
        if kind is bool:
            parser.add_argument(flag, default=field.default, help=helps[field.name], action=argparse.BooleanOptionalAction)
        elif kind in (int, float, str, tuple):
            parser.add_argument(flag, default=field.default, help=helps[field.name], metavar=kind.__name__.upper(),
                                type=_int_tuple if kind is tuple else kind)
        else:
            raise TypeError(f"Config.{field.name}: no command-line form for {kind.__name__}")
    args = parser.parse_args(argv)
    try:
        return Config(**vars(args))
    except UsageError as err:
        parser.error(str(err))


def main(argv=None):
    config = parse_config(argv)
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")  # read at bind time; silences a banner per executor
    tty = sys.stdout.isatty()

    def log(line):
        print(("\r\033[K" if tty else "") + line, flush=True)  # on a terminal, over the progress bar
    try:
        if config.evaluate:
            log("config: " + json.dumps(dataclasses.asdict(config)))
            result = score(config)
            print(f"checkpoint {config.model_prefix}-{config.load_epoch:04d}: test loss {result['loss']:.4f} "
                  f"acc {result['acc']:.4f}")
            return 0
        train(config, log=log, progress=_progress_bar if tty else _progress_line)
    except (UsageError, data.DataError, checkpoint.CheckpointError) as err:
        print(f"train_mnist.py: error: {err}", file=sys.stderr)
        return 2
    except Diverged as err:
        print(f"train_mnist.py: error: {err}", file=sys.stderr)
        return 3
    except Interrupted as err:
        print(f"{chr(13) + chr(27) + '[K' if tty else ''}train_mnist.py: {err}", file=sys.stderr)
        return 130
    return 0


def _progress_line(f):
    print(f"epoch {f['epoch']:3d}  batch {f['batch']:5d}/{f['batches']}  loss {f['loss']:.4f} acc {f['acc']:.4f}  "
          f"{f['samples_per_second']:8.0f} samples/s", flush=True)


def _progress_bar(f, width=30):
    filled = width * f["batch"] // f["batches"]
    sys.stdout.write(f"\repoch {f['epoch']:3d} [{'#' * filled}{'.' * (width - filled)}] {f['batch']}/{f['batches']}  "
                     f"loss {f['loss']:.4f}  {f['samples_per_second']:8.0f} samples/s")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
