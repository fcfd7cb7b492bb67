"""Devices and binding: the contexts, and simple_bind of the training graph on each of them."""
# A Model holds one Replica per context. Each replica's parameters, and separately its gradients,
# are views of one flat buffer, so that summing over devices and workers is one array, and copying
# the weights is one. Binding is where the speed tricks of fast.py are chosen: the loop that drives
# a Model is the same text on the fast path and on the plain one.
import collections.abc

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
    """(begin, end) offsets into a batch for each context of one worker."""
    # Split evenly, workers then contexts.
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


def simple_bind(graph, opt, iterators, run):
    """The Model of graph on run's devices."""
    # Ready to bind its executors with simple_bind as batches come.
    # graph: the training graph (network.training_graph); opt: the optimizer, None to score only;
    # iterators: (train_iter, test_iter), the first None to score only. The run's memory is checked
    # first.
    train_iter, test_iter = iterators
    sample_shape = test_iter.provide_data[_position(test_iter, "test")[0]].shape[1:]
    layout = Layout(graph, sample_shape, opt)
    speed = fast.tricks(run.config, opt) if run.config.fast and opt is not None else fast.plain()
    speed.prepare(opt, train_iter, run.contexts, _bound_shapes(train_iter, len(run.contexts)))
    rows = [it.provide_data[0].shape[0] if it is not None else 0 for it in iterators]
    data_bytes = sum(getattr(it, "device_bytes", 0) for it in iterators if it is not None)
    state_count = len(opt.new_state(mx.nd.zeros(1))) if opt is not None else 0
    memory.check(dict(memory.model_needs(graph, sample_shape, rows, len(run.contexts), state_count),
                      data=data_bytes * len(run.contexts)))
    return Model(graph, layout, run.contexts, run.sync, speed, iterators)


def _bound_shapes(train_iter, num_contexts):
    """The data shapes training binds for the project's MNISTIter."""
    # Each device's share of its batch sizes.
    if not hasattr(train_iter, "global_batch"):
        return []
    batch, total, (worker, workers) = (
        train_iter.global_batch,
        train_iter.num_samples,
        train_iter.shard,
    )
    shapes = set()
    for size in {batch, total % batch} - {0}:
        (begin, end), = shares(size, worker, workers, 1)
        shapes |= {(last - first, *train_iter.host[0].shape[1:]) for first, last in
                   shares(end - begin, 0, 1, num_contexts)}
    return sorted(shapes)


class Layout:
    """Where each parameter lives in a flat buffer."""
    # Names in the network's argument order, shapes, offsets.
    # The parameters that opt decays come first in the buffer, the others after them, so that the
    # fast path can hand the optimizer each kind as one flat array.

    def __init__(self, graph, sample_shape, opt=None):
        shapes = graph.infer_shape(**{DATA: (1, *sample_shape), LABEL: (1,)})[0]
        self.shapes = {name: tuple(shape) for name, shape in zip(graph.list_arguments(), shapes)
                       if name not in (DATA, LABEL)}
        self.names = list(self.shapes)
        decays = opt.decays if opt is not None else (lambda name: True)
        self.order = sorted(self.names, key=lambda name: not decays(name))
        self.decaying = sum(1 for name in self.names if decays(name))
        self.sizes = {name: int(np.prod(self.shapes[name])) for name in self.names}
        self.size = sum(self.sizes.values())

    def offsets(self):
        """name -> (begin, end) in the flat buffer."""
        spans, offset = {}, 0
        for name in self.order:
            spans[name] = (offset, offset + self.sizes[name])
            offset += self.sizes[name]
        return spans

    def views(self, flat):
        """name -> a view of flat shaped as that parameter, in the network's argument order."""
        spans = self.offsets()
        return {
            name: flat[spans[name][0] : spans[name][1]].reshape(self.shapes[name])
            for name in self.names
        }

    def join(self, arrays, ctx):
        """One flat array on ctx of name -> array, in this layout's order."""
        return mx.nd.concat(
            *[arrays[name].as_in_context(ctx).reshape((-1,)) for name in self.order], dim=0
        )


class FlatArrays(collections.abc.Mapping):
    """name -> NDArray, every array a view of one flat buffer, .flat."""

    def __init__(self, flat, views):
        self.flat, self._views = flat, views

    def __getitem__(self, name):
        return self._views[name]

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)


class Replica:
    """One context's part of training: its executors by batch share, its parameters, gradients."""

    def __init__(self, ctx, layout, flags=0):
        # flags: floats after the gradients in their buffer, summed with them: a worker's stop flag.
        self.ctx, self.layout = ctx, layout
        params, grads = mx.nd.zeros(layout.size, ctx), mx.nd.zeros(layout.size + flags, ctx)
        self.params = FlatArrays(params, layout.views(params))
        self.grads = FlatArrays(grads, layout.views(grads))
        self.executors = {}

    def executor(self, graph, data_desc, train, inputs):
        """The executor of graph for a share of data_desc's shape and dtype."""
        # Bound by simple_bind once.
        # A training executor reads and writes the flat buffers in place; a scoring one reads the
        # weights only. inputs: more arrays the graph reads, shared as they are (the pixel range of
        # a byte-input graph).
        key = (id(graph), data_desc, train)
        if key not in self.executors:
            self.executors[key] = self._bind(graph, data_desc, train, inputs)
        return self.executors[key]

    def _bind(self, graph, data_desc, train, inputs):
        shape, dtype = data_desc
        shared = dict(self.params, **inputs)
        if train:
            # simple_bind looks a gradient array up in shared_buffer as "grad of <name>".
            shared.update({"grad of " + name: grad for name, grad in self.grads.items()})
        # Gradients for the parameters only: an input gradient would be a wasted GEMM per batch. A
        # scoring executor requests them too, though it never runs backward: a gradient-free graph
        # is rewritten by mxnet 1.9.1's MKLDNN subgraph pass into fused FC ops that keep scoring the
        # weights they first saw.
        grad_req = {
            name: "write" if name in self.params else "null" for name in graph.list_arguments()
        }
        extra = {name: array.shape for name, array in inputs.items()}
        return graph.simple_bind(
            self.ctx,
            grad_req=grad_req,
            shared_buffer=shared,
            type_dict={DATA: dtype},
            **{DATA: shape, LABEL: shape[:1]},
            **extra,
        )


class Model:
    """The network bound on every device."""
    # Its executors made by simple_bind as each batch size first comes.
    # params and grads are what the optimizer steps: each parameter by name on the plain path; on
    # the fast path all of them as one or two flat arrays (those that decay and those that do not).
    # arg_params is the first device's parameters by name, always: what initialisation, checkpoints
    # and scoring use.

    def __init__(self, graph, layout, ctxs, sync, speed, iterators):
        # With several workers, one float after the gradients is each worker's stop flag (Run).
        flags = 1 if sync.num_workers > 1 else 0
        self.replicas = [Replica(ctx, layout, flags) for ctx in ctxs]
        self.graph, self.layout, self.sync, self.speed = graph, layout, sync, speed
        self.arg_params, first = self.replicas[0].params, self.replicas[0]
        self.params, self.grads = (speed.grouped(layout, first.params.flat, first.grads.flat)
                                   or (first.params, first.grads))
        # Per iterator (training, scoring): where its data and label are, and whether a pad is real
        # rows.
        self.reading = {train: _reading(it, "training" if train else "test")
                        for train, it in zip((True, False), iterators) if it is not None}
        # (samples, train) -> graph: binding looks executors up by the graph's identity.
        self._graphs = {}

    def load(self, batch, train=True):
        """Put each replica's share of batch into its executor."""
        # Return the executors and the batch's samples.
        # A batch that can gather its rows straight into a device's arrays (data.MNISTBatch) does;
        # any other is sliced and copied, as Module does. Padding rows go nowhere. samples counts
        # the whole batch over all workers: what the update divides the summed gradients by.
        gather = getattr(batch, "gather_into", None)
        if gather:
            rows, samples, desc = batch.rows, batch.samples, batch.provide_data[0]
            shape, dtype = desc.shape[1:], desc.dtype
        else:
            (data_at, label_at), pad_is_real = self.reading[train]
            images, labels = batch.data[data_at], batch.label[label_at]
            rows = images.shape[0] - (0 if pad_is_real else batch.pad or 0)
            shape, dtype, samples = images.shape[1:], images.dtype, rows * self.sync.num_workers
        key = (samples, train)
        if key not in self._graphs:
            self._graphs[key] = self.speed.graph(self.graph, samples) if train else self.graph
        graph = self._graphs[key]
        executors = []
        for device, (replica, (begin, end)) in enumerate(
            zip(self.replicas, shares(rows, 0, 1, len(self.replicas)))
        ):
            inputs = self.speed.inputs(replica.ctx) if train else {}
            exe = replica.executor(graph, ((end - begin, *shape), dtype), train, inputs)
            if gather:
                gather(device, begin, end, exe.arg_dict[DATA], exe.arg_dict[LABEL])
            else:
                images[begin:end].copyto(exe.arg_dict[DATA])
                labels[begin:end].reshape((-1,)).copyto(exe.arg_dict[LABEL])
            executors.append(exe)
        return executors, samples

    @property
    def stop_flag(self):
        """The float after the first replica's gradients, summed over workers with them."""
        return self.replicas[0].grads.flat[self.layout.size:]

    def sum_grads(self):
        """Sum the gradients of every replica and worker into the first replica's."""
        self.sync.sum_grads([replica.grads.flat for replica in self.replicas])

    def share_weights(self, from_rank0=False):
        """Copy the first replica's weights to the others."""
        # From_rank0 first gives every worker rank 0's.
        self.sync.share_weights([replica.params.flat for replica in self.replicas], from_rank0)

    def state_by_name(self, state):
        """The optimizer's state (its names -> arrays) as parameter name -> arrays."""
        # Views where grouped.
        if self.params is self.replicas[0].params:
            return state
        spans, by_name = self.layout.offsets(), {}
        for group, (begin, end) in self.speed.spans(self.layout).items():
            for name in self.layout.names:
                first, last = spans[name]
                if group in state and begin <= first < end:
                    by_name[name] = [
                        array[first - begin : last - begin].reshape(self.layout.shapes[name])
                        for array in state[group]
                    ]
        return by_name

    def state_from_names(self, by_name):
        """The optimizer's state for its own names."""
        # From parameter name -> arrays (state_by_name's form).
        if self.params is self.replicas[0].params or not by_name:
            return by_name
        ctx, count = self.replicas[0].ctx, len(next(iter(by_name.values())))
        flat = [
            self.layout.join({name: arrays[i] for name, arrays in by_name.items()}, ctx)
            for i in range(count)
        ]
        views = [self.speed.group(self.layout, array) for array in flat]
        return {group: [by_group[group] for by_group in views]
                for group in self.speed.spans(self.layout)}


def _reading(iterator, which):
    """((data position, label position), whether padding is real rows) for a DataIter's batches."""
    return _position(iterator, which), getattr(iterator, "last_batch_handle", None) == "roll_over"


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
