"""Devices and binding: the contexts, an executor per context by simple_bind, parameters in one flat buffer.

A Group holds one Replica per context. Each replica's parameters, and separately its gradients, are views
of one flat buffer, so that summing over devices and workers is one array, and copying the weights is one.
"""
import collections.abc

import mxnet as mx
import numpy as np

import data
from errors import RunError

INPUTS = ("data", "softmax_label")  # the input names the networks use, as MXNet's iterators name them
_CUDA_WHEEL = 'pip uninstall -y mxnet && pip install mxnet-cu112==1.9.1 "numpy<1.24"'


class DeviceError(RunError):
    """A device that cannot be used as asked; one line."""


def contexts(gpus="", cpus=0):
    """The training contexts: cpus CPU contexts, else the GPUs listed in gpus, else mx.cpu()."""
    if cpus:
        return [mx.cpu(i) for i in range(cpus)]
    if not gpus:
        return [mx.cpu()]
    ids = [int(i) for i in gpus.split(",")]
    if not mx.runtime.Features().is_enabled("CUDA"):
        raise DeviceError(f"--gpus needs a CUDA build of MXNet, and this one is CPU-only: {_CUDA_WHEEL} "
                          "(or the mxnet-cu11x that matches your CUDA 11; see docs/gpu.md)")
    if max(ids) >= mx.context.num_gpus() or len(set(ids)) < len(ids):
        raise DeviceError(f"--gpus {gpus}: MXNet sees {mx.context.num_gpus()} GPU(s), and each id may appear once")
    for i in ids:
        try:
            (mx.nd.ones((1,), ctx=mx.gpu(i)) * 2).asnumpy()  # one real kernel launch: a wheel/GPU mismatch fails here
        except mx.base.MXNetError as err:
            if "no kernel image is available" in str(err):
                raise DeviceError(f"GPU {i} is newer than the installed MXNet wheel supports: the mxnet-cu11x "
                                  "wheels carry kernels for compute capability 5.0 to 8.6 only") from None
            raise
    return [mx.gpu(i) for i in ids]


class Layout:
    """Where each parameter lives in a flat buffer: names in the network's argument order, shapes, offsets."""

    def __init__(self, symbol, sample_shape, extra_inputs=()):
        shapes = symbol.infer_shape(data=(1, *sample_shape), softmax_label=(1,), **{k: (1,) for k in extra_inputs})[0]
        self.shapes = {name: shape for name, shape in zip(symbol.list_arguments(), shapes)
                       if name not in INPUTS and name not in extra_inputs}
        self.names = list(self.shapes)
        self.sizes = [int(np.prod(self.shapes[name])) for name in self.names]
        self.size = sum(self.sizes)

    def views(self, flat):
        """name -> a view of flat shaped as that parameter."""
        views, offset = {}, 0
        for name, size in zip(self.names, self.sizes):
            views[name] = flat[offset:offset + size].reshape(self.shapes[name])
            offset += size
        return views

    def join(self, arrays, ctx):
        """One flat array on ctx of name -> array, in this layout's order."""
        return mx.nd.concat(*[arrays[name].as_in_context(ctx).reshape((-1,)) for name in self.names], dim=0)


class FlatArrays(collections.abc.Mapping):
    """name -> NDArray, every array a view of one flat buffer, .flat."""

    def __init__(self, flat, layout):
        self.flat, self._views = flat, layout.views(flat)

    def __getitem__(self, name):
        return self._views[name]

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)


class Replica:
    """One context's part of training: its executors by batch share, its parameters and gradients."""

    def __init__(self, ctx, layout):
        self.ctx, self.layout = ctx, layout
        self.params = FlatArrays(mx.nd.zeros(layout.size, ctx), layout)
        self.grads = FlatArrays(mx.nd.zeros(layout.size, ctx), layout)
        self.executors = {}

    def executor(self, symbol, rows, sample_shape, dtype, train=True, inputs=None):
        """The executor of symbol for a share of rows samples, bound by simple_bind on first use.

        A training executor reads and writes the flat buffers in place; a scoring one reads the weights only.
        inputs: more arrays the graph reads, shared as they are (the pixel range of a byte-input graph).
        """
        key = (id(symbol), rows, train)
        if key not in self.executors:
            self.executors[key] = self._bind(symbol, rows, sample_shape, dtype, train, inputs or {})
        return self.executors[key]

    def _bind(self, symbol, rows, sample_shape, dtype, train, inputs):
        shared = dict(self.params, **inputs)
        if train:  # simple_bind looks up a gradient array in shared_buffer as "grad of <name>"
            shared.update({"grad of " + name: grad for name, grad in self.grads.items()})
        # Gradients for the parameters only: an input gradient would be a wasted GEMM per batch. A scoring
        # executor requests them too, though it never runs backward: a gradient-free graph is rewritten by
        # mxnet 1.9.1's MKLDNN subgraph pass into fused FC ops that keep scoring the weights they first saw.
        grad_req = {name: "write" if name in self.params else "null" for name in symbol.list_arguments()}
        shapes = {name: array.shape for name, array in inputs.items()}
        return symbol.simple_bind(self.ctx, grad_req=grad_req, shared_buffer=shared, type_dict={"data": dtype},
                                  data=(rows, *sample_shape), softmax_label=(rows,), **shapes)


class Group:
    """The replicas of all contexts, and the loading of each batch's shares into their executors.

    graph(samples, train) gives the symbol to bind for a batch of that many samples over all workers, the same
    object for the same arguments; sync sums gradients and shares weights over the replicas and the workers;
    inputs(ctx) gives the extra arrays a training graph reads on ctx.
    """

    def __init__(self, ctxs, layout, sync, inputs, graph):
        self.replicas = [Replica(ctx, layout) for ctx in ctxs]
        self.layout, self.graph, self.sync = layout, graph, sync
        self.inputs = inputs
        self._graphs = {}  # (samples, train) -> symbol: binding looks executors up by the symbol's identity

    @property
    def params(self):
        """The first replica's parameters: the ones the optimizer updates."""
        return self.replicas[0].params

    @property
    def grads(self):
        return self.replicas[0].grads

    def load(self, batch, train=True):
        """Put each replica's share of batch into its executor; return the executors and the batch's samples.

        A batch that can gather its rows straight into a device's arrays (data.MNISTBatch) does; any other is
        sliced and copied, as Module does. Padding rows (DataBatch.pad) go nowhere. The samples are those of
        the whole batch over all workers, which the update divides the summed gradients by.
        """
        gather = getattr(batch, "gather_into", None)
        if gather:
            rows, samples, desc = batch.count, batch.global_size, batch.provide_data[0]
            sample_shape, dtype = desc.shape[1:], desc.dtype
        else:
            images = batch.data[0]
            rows, sample_shape, dtype = images.shape[0] - (batch.pad or 0), images.shape[1:], images.dtype
            samples = rows * self.sync.num_workers
        key = (samples, train)
        if key not in self._graphs:
            self._graphs[key] = self.graph(samples, train)
        symbol = self._graphs[key]
        executors = []
        for device, (replica, (begin, end)) in enumerate(zip(self.replicas, data.shares(rows, 0, 1, len(self.replicas)))):
            inputs = self.inputs(replica.ctx) if train else {}
            exe = replica.executor(symbol, end - begin, sample_shape, dtype, train, inputs)
            if gather:
                gather(device, begin, end, exe.arg_dict["data"], exe.arg_dict["softmax_label"])
            else:
                batch.data[0][begin:end].copyto(exe.arg_dict["data"])
                batch.label[0][begin:end].reshape((-1,)).copyto(exe.arg_dict["softmax_label"])
            executors.append(exe)
        return executors, samples

    def sum_grads(self):
        """Sum the gradients of every replica and worker into the first replica's."""
        self.sync.sum_grads([replica.grads.flat for replica in self.replicas])

    def share_weights(self, from_rank0=False):
        """Copy the first replica's weights to the others; from_rank0 first gives every worker rank 0's."""
        self.sync.share_weights([replica.params.flat for replica in self.replicas], from_rank0)
