"""Devices and binding: the contexts, and the training graph bound on each of them.

A Model holds one Replica per context. Each replica's parameters, and separately its gradients,
are views of one flat buffer, so that summing over devices and workers is one array, and copying
the weights is one. train() binds each replica's executor with simple_bind; other batch sizes
reshape it, over the same parameters.
"""
import os

import mxnet as mx
import numpy as np

from harness import fast, memory
from harness.datasets import DATA, LABEL
from harness.errors import ConfigError, DeviceError

_CUDA_WHEEL = 'pip uninstall -y mxnet && pip install mxnet-cu112==1.9.1 "numpy<1.24"'


def contexts(gpus="", cpus=0):
    """The training contexts: cpus CPU contexts, else the GPUs listed in gpus, else mx.cpu()."""
    if cpus:
        return [mx.cpu(i) for i in range(cpus)]
    if not gpus:
        return [mx.cpu()]
    ids = [int(i) for i in gpus.split(",")]
    if not mx.runtime.Features().is_enabled("CUDA"):
        raise DeviceError(
            f"--gpus needs a CUDA build of MXNet, and this one is CPU-only: {_CUDA_WHEEL} "
            "(or the mxnet-cu11x that matches your CUDA 11; see docs/gpu.md)"
        )
    if max(ids) >= mx.context.num_gpus() or len(set(ids)) < len(ids):
        raise DeviceError(
            f"--gpus {gpus}: MXNet sees {mx.context.num_gpus()} GPU(s), and each id may appear once"
        )
    for i in ids:
        try:
            # One real kernel launch: a wheel that lacks kernels for this GPU fails here, not
            # mid-run.
            (mx.nd.ones((1,), ctx=mx.gpu(i)) * 2).asnumpy()
        except mx.base.MXNetError as err:
            if "no kernel image is available" in str(err):
                raise DeviceError(
                    f"GPU {i} is newer than the installed MXNet wheel supports: the mxnet-cu11x "
                    "wheels carry kernels for compute capability 5.0 to 8.6 only"
                ) from None
            raise
    return [mx.gpu(i) for i in ids]


def shares(batch, worker, num_workers, num_contexts):
    """(begin, end) offsets into a batch for each context of one worker.

    Split evenly, workers then contexts.
    """
    sizes = _even(batch, num_workers)
    begin = sum(sizes[:worker])
    offsets = []
    for size in _even(sizes[worker], num_contexts):
        offsets.append((begin, begin + size))
        begin += size
    return offsets


def _even(total, parts):
    # The first total % parts parts take one more.
    return [total // parts + (i < total % parts) for i in range(parts)]


class Layout:
    """Where each parameter of a graph lives in a flat buffer: names, shapes and offsets.

    The names are the graph's arguments but its data and label, in the graph's order.
    """

    def __init__(self, graph, sample_shape):
        shapes = graph.infer_shape(**{DATA: (1, *sample_shape), LABEL: (1,)})[0]
        self.shapes = {name: tuple(shape) for name, shape in zip(graph.list_arguments(), shapes)
                       if name not in (DATA, LABEL)}
        self.names = list(self.shapes)
        self.sizes = {name: int(np.prod(shape)) for name, shape in self.shapes.items()}
        self.size = sum(self.sizes.values())

    def views(self, flat):
        """name -> the part of flat (an NDArray) that holds that parameter, in its shape."""
        views, offset = {}, 0
        for name in self.names:
            views[name] = flat[offset:offset + self.sizes[name]].reshape(self.shapes[name])
            offset += self.sizes[name]
        return views


class Replica:
    """One context's part of training: its parameters and gradients, and its executors.

    Its parameters are views of one flat buffer, and its gradients of another, so that summing
    gradients over devices and workers is one array, and so is copying the weights. flags: floats
    after the gradients in their buffer, summed with them (a worker's stop flag).
    """

    def __init__(self, ctx, layout, flags=0):
        self.ctx = ctx
        self.flat_params = mx.nd.zeros(layout.size, ctx)
        self.flat_grads = mx.nd.zeros(layout.size + flags, ctx)
        self.params, self.grads = layout.views(self.flat_params), layout.views(self.flat_grads)
        # The executor simple_bind made, and those reshaped from it: batch rows -> executor.
        self.executors = {}

    def executor(self, rows):
        """The executor for a share of rows samples: simple_bind's, or one reshaped from it.

        A reshaped executor shares the parameters and gradients of the one it came from.
        """
        if rows not in self.executors:
            bound = next(iter(self.executors.values()))
            shape = bound.arg_dict[DATA].shape
            self.executors[rows] = bound.reshape(
                allow_up_sizing=True, **{DATA: (rows, *shape[1:]), LABEL: (rows,)})
        return self.executors[rows]


class Model:
    """The training graph on every device of a run, bound by simple_bind, and its parameters.

    arg_params: the first device's parameters by name, as NDArrays: what initialisation,
    checkpoints and scoring use. params and grads: the same memory by name, as the optimizer steps
    it (harness/fast.py: NDArrays, or numpy views of them on the CPU).
    """

    def __init__(self, graph, run, iterators, opt=None):
        # iterators: (train_iter, test_iter), the first None to score only; opt: None to score.
        train_iter, test_iter = iterators
        # MXNet reads it as it binds: without it, each executor bound prints a banner on stderr,
        # also when train() is called from Python rather than through main().
        os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
        self.reading = {train: _reading(it, "training" if train else "test")
                        for train, it in zip((True, False), iterators) if it is not None}
        bound_iter = train_iter or test_iter
        data_desc = bound_iter.provide_data[self.reading[train_iter is not None][0][0]]
        self.layout = Layout(graph, data_desc.shape[1:])
        self.data_desc, self.graph, self.sync = data_desc, graph, run.sync
        _check_memory(graph, iterators, run.contexts, opt, data_desc.shape[1:])
        # With several workers, one float after the gradients is each worker's stop flag (Run).
        flags = 1 if self.sync.num_workers > 1 else 0
        self.replicas = [Replica(ctx, self.layout, flags) for ctx in run.contexts]
        self.placement = fast.placement(run.config, run.contexts)
        first = self.replicas[0]
        self.arg_params = first.params
        self.params = {name: self.placement.view(array) for name, array in first.params.items()}
        self.grads = {name: self.placement.view(array) for name, array in first.grads.items()}
        self._shares = {}

    def binding(self, ctx):
        """The keyword arguments of graph.simple_bind for the device ctx: a full batch's share.

        Its parameters and their gradients are given as the device's flat buffers' views (MXNet
        looks a gradient up in shared_buffer as "grad of NAME"); simple_bind allocates the rest.
        Gradients are requested for the parameters only: an input gradient would be a wasted GEMM
        per batch. A scoring executor requests them too, though it never runs backward: a
        gradient-free graph is rewritten by mxnet 1.9.1's MKLDNN subgraph pass into fused ops that
        keep scoring the weights they first saw.
        """
        device = [replica.ctx for replica in self.replicas].index(ctx)
        replica = self.replicas[device]
        begin, end = self._share(self.data_desc.shape[0])[device]
        rows = end - begin
        shared = dict(replica.params, **{"grad of " + name: grad
                                         for name, grad in replica.grads.items()})
        grad_req = {name: "write" if name in replica.params else "null"
                    for name in self.graph.list_arguments()}
        return dict(grad_req=grad_req, shared_buffer=shared,
                    type_dict={DATA: self.data_desc.dtype},
                    **{DATA: (rows, *self.data_desc.shape[1:]), LABEL: (rows,)})

    def bind(self, executors):
        """Take the executors simple_bind made, one per device in the run's order."""
        for replica, exe in zip(self.replicas, executors):
            replica.executors = {exe.arg_dict[DATA].shape[0]: exe}

    def load(self, batch, train=True):
        """Put each device's share of batch into its executor: (the executors, the samples).

        A batch that can gather its rows straight into a device's arrays (data.MNISTBatch) does;
        any other is sliced and copied, as Module does. Padding rows go nowhere. samples counts
        the whole batch over all workers: what the update divides the summed gradients by.
        """
        gather = getattr(batch, "gather_into", None)
        if gather:
            rows, samples = batch.rows, batch.samples
        else:
            (data_at, label_at), pad_is_real = self.reading[train]
            images, labels = batch.data[data_at], batch.label[label_at]
            rows = images.shape[0] - (0 if pad_is_real else batch.pad or 0)
            samples = rows * self.sync.num_workers
        executors = []
        for device, (begin, end) in enumerate(self._share(rows)):
            exe = self.replicas[device].executor(end - begin)
            if gather:
                gather(device, begin, end, exe.arg_dict[DATA], exe.arg_dict[LABEL])
            else:
                images[begin:end].copyto(exe.arg_dict[DATA])
                labels[begin:end].reshape((-1,)).copyto(exe.arg_dict[LABEL])
            executors.append(exe)
        return executors, samples

    def _share(self, rows):
        """[(begin, end)] of a batch of rows for each device."""
        if rows not in self._shares:
            self._shares[rows] = shares(rows, 0, 1, len(self.replicas))
        return self._shares[rows]

    @property
    def stop_flag(self):
        """The float after the first replica's gradients, summed over workers with them."""
        return self.replicas[0].flat_grads[self.layout.size:]

    def sum_grads(self):
        """Sum every replica's and worker's gradients into the first replica's, for the update."""
        self.sync.sum_grads([replica.flat_grads for replica in self.replicas])
        self.placement.ready()

    def share_weights(self, from_rank0=False):
        """Copy the first replica's weights to the others; from_rank0 first gives all rank 0's."""
        self.sync.share_weights([replica.flat_params for replica in self.replicas], from_rank0)

    def saved_state(self, state):
        """The optimizer's state (name -> arrays) as NDArrays, for a checkpoint."""
        return {name: [self.placement.ndarray(array) for array in arrays]
                for name, arrays in state.items()}

    def optimizer_state(self, by_name):
        """Optimizer state restored from a checkpoint (name -> NDArrays), as the update steps it."""
        return {name: [self.placement.state(array) for array in arrays]
                for name, arrays in by_name.items()}


def bound(graph, run, iterators, opt=None):
    """A Model of graph with an executor bound on every device of run: what scoring uses."""
    model = Model(graph, run, iterators, opt)
    model.bind([graph.simple_bind(ctx, **model.binding(ctx)) for ctx in run.contexts])
    return model


def _check_memory(graph, iterators, contexts, opt, sample_shape):
    """Refuse, before any allocation, a model and data that cannot fit in memory."""
    rows = [it.provide_data[0].shape[0] if it is not None else 0 for it in iterators]
    data_bytes = sum(getattr(it, "device_bytes", 0) for it in iterators if it is not None)
    state_count = len(opt.new_state(mx.nd.zeros(1))) if opt is not None else 0
    needs = memory.model_needs(graph, sample_shape, rows, len(contexts), state_count)
    memory.check(dict(needs, data=data_bytes * len(contexts)))


def _reading(iterator, which):
    """((data position, label position), whether padding is real rows) for a DataIter's batches.

    NDArrayIter(last_batch_handle='roll_over') reports the rows an epoch left over as the next
    epoch's first batch's pad: they are real, and trained. A wrapper passes that pad on as it is.
    """
    inner = chain(iterator)[-1]
    return _position(iterator, which), getattr(inner, "last_batch_handle", None) == "roll_over"


def chain(iterator):
    """iterator, then each iterator whose batches it passes on as they are, outermost first:
    through a ResizeIter, and through a PrefetchingIter to its first iterator, whose pad it
    passes on."""
    found = [iterator]
    while True:
        if isinstance(found[-1], mx.io.PrefetchingIter):
            found.append(found[-1].iters[0])
        elif isinstance(found[-1], mx.io.ResizeIter):
            found.append(found[-1].data_iter)
        else:
            return found


def _position(iterator, which):
    """Where the data and the label are in a DataIter's batches, by the names the network takes."""
    data = [desc.name for desc in iterator.provide_data]
    labels = [desc.name for desc in iterator.provide_label or []]
    if LABEL not in labels:
        raise ConfigError(
            f"the {which} iterator provides labels {', '.join(labels) or 'none'}, but not "
            f"{LABEL!r}, the label the network takes"
        )
    if DATA in data:
        return data.index(DATA), labels.index(LABEL)
    if len(data) == 1:
        return 0, labels.index(LABEL)
    raise ConfigError(
        f"the {which} iterator provides data {', '.join(data)}: name the images {DATA!r}"
    )
