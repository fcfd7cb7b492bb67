"""The speed tricks, all of them, behind one switch (Config.fast), chosen as the model is bound."""
# Off, training takes the plain path. Each trick is tested equal to the plain path
# (tests/harness/test_fast.py), and what each saves is measured in docs/speed.md:
# - the optimizer steps all parameters as one or two flat arrays instead of one array each;
# - the factor that every step first multiplies the gradient by (-lr / batch for SGD and NAG at a
#   fixed rate, 1 / batch otherwise) is folded into backward, as SoftmaxOutput's grad_scale;
# - the training pixels stay uint8 bytes on the devices, dequantized inside the bound graph;
# - max pooling after a rising activation (LeNet's tanh) runs before it instead: the same outputs,
#   with the activation over a quarter of the values;
# - the optimizer's in-place arithmetic on those flat arrays (w += v, v *= m) runs MXNet's
#   element-wise kernels, not the broadcasting ones that NDArray's operators call: the same
#   float32 sums and products, in fewer passes' time.
import collections
import json
import re

import mxnet as mx
import numpy as np

from harness.datasets import DATA

# Activations that never fall: max pooling commutes with them.
_RISING = ("relu", "sigmoid", "tanh", "softrelu")
# Inputs of a graph that takes its pixels as bytes.
_PIXEL_RANGE = ("pixel_min", "pixel_max")


def plain():
    """The tutorial's path."""
    # Float32 pixels, nothing folded into backward, each parameter stepped alone.
    return Tricks(flat=False, fold=None, pixel_bytes=False, pool_first=False)


def tricks(config, opt):
    """The fast path for config and its optimizer opt."""
    # The manual gradient is made outside the graph: there is no grad_scale to fold into.
    fold = opt.foldable() if config.gradient == "builtin" else None
    return Tricks(flat=True, fold=fold, pixel_bytes=True, pool_first=True)


class Tricks:
    """What the fast path changes."""
    # The graph each batch binds, the resident pixels, the optimizer's arrays.

    def __init__(self, flat, fold, pixel_bytes, pool_first):
        self.flat, self.fold, self.pixel_bytes = flat, fold, pixel_bytes
        self.pool_first = pool_first
        # ctx -> the (min, max) arrays that dequantize the bytes, once chosen.
        self.byte_ranges = None
        self.single_group = True

    def prepare(self, opt, train_iter, contexts, shapes):
        """Fold into opt, and keep train_iter's pixels as bytes where that is bit for bit."""
        # shapes: the data shapes that training binds, each device's share of a full and of a last
        # batch.
        if opt is None:
            return
        if self.fold is not None:
            opt.fold(self.fold)
        # With no weight decay, or decay for all, one flat array; else those that decay and the
        # others.
        self.single_group = not opt.wd or opt.decay_biases
        scale = getattr(train_iter, "pixel_scale", None)
        if self.pixel_bytes and scale is not None and shapes:
            ranges = [_pixel_range(ctx, shapes, scale) for ctx in contexts]
            if all(ranges):
                train_iter.keep_pixel_bytes()
                self.byte_ranges = dict(zip(contexts, ranges)) if train_iter.pixel_bytes else None

    def spans(self, layout):
        """The optimizer's arrays on the flat path: name -> (begin, end) in the flat buffer."""
        sizes = [layout.sizes[name] for name in layout.order]
        decaying = sum(sizes[:layout.decaying])
        if self.single_group or decaying in (0, layout.size):
            return {"flat_weight": (0, layout.size)}
        return {"flat_weight": (0, decaying), "flat_bias": (decaying, layout.size)}

    def grouped(self, layout, params, grads):
        """(params, grads) as the optimizer steps them on the flat path."""
        # Views of the flat buffers; or None.
        if not self.flat:
            return None
        return self.group(layout, params), self.group(layout, grads)

    def group(self, layout, flat):
        """The optimizer's arrays on the flat path as views of flat: name -> view."""
        return {name: _elementwise(flat[begin:end])
                for name, (begin, end) in self.spans(layout).items()}

    def graph(self, training_graph, samples):
        """The training graph to bind for a batch of samples."""
        # Its head's gradient scaled, its input bytes.
        graph = training_graph
        if self.fold is not None or self.pool_first:
            scale = None if self.fold is None else self.fold / samples
            graph = _rewritten(graph, scale, self.pool_first)
        if self.byte_ranges:
            pixels = mx.sym.contrib.dequantize(
                mx.sym.var(DATA, dtype=np.uint8), *map(mx.sym.var, _PIXEL_RANGE)
            )
            graph = graph(**{DATA: pixels})
        return graph

    def inputs(self, ctx):
        """The extra arrays a byte-input graph reads on ctx: the dequantize range."""
        return dict(zip(_PIXEL_RANGE, self.byte_ranges[ctx])) if self.byte_ranges else {}


class _Elementwise(mx.nd.NDArray):
    """An NDArray whose in-place +=, -= and *= by an array of its shape are element-wise."""
    # NDArray's operators call broadcast_add and its kin, whose kernels take several times as long
    # as elemwise_add's on this wheel (benchmarks/elementwise.py). The arithmetic is the same.

    __slots__ = []

    def __iadd__(self, other):
        if self._same_shape(other):
            return mx.nd.elemwise_add(self, other, out=self)
        return super().__iadd__(other)

    def __isub__(self, other):
        if self._same_shape(other):
            return mx.nd.elemwise_sub(self, other, out=self)
        return super().__isub__(other)

    def __imul__(self, other):
        if self._same_shape(other):
            return mx.nd.elemwise_mul(self, other, out=self)
        return super().__imul__(other)

    def _same_shape(self, other):
        return isinstance(other, mx.nd.NDArray) and other.shape == self.shape

    def zeros_like(self, *args, **kwargs):
        # The optimizer's state arrays, made from a weight, step as it does.
        return _elementwise(super().zeros_like(*args, **kwargs))


def _elementwise(array):
    """array, a dense NDArray, as an _Elementwise over the same memory."""
    array.__class__ = _Elementwise
    return array


def _rewritten(graph, grad_scale, pool_first):
    """graph with SoftmaxOutput's grad_scale set (unless None), and pooling first if asked."""
    # Through its JSON: an op's attributes are fixed once it is made.
    spec = json.loads(graph.tojson())
    nodes = spec["nodes"]
    if grad_scale is not None:
        for node in nodes:
            if node["op"] == "SoftmaxOutput":
                node.setdefault("attrs", {})["grad_scale"] = repr(grad_scale)
    if pool_first:
        _pool_before_activation(nodes, spec["heads"])
    return mx.sym.load_json(json.dumps(spec))


def _pool_before_activation(nodes, heads):
    """Swap each unpadded max pooling with the rising activation it alone reads, in place."""
    # max(f(a), f(b)) is f(max(a, b)) for a function f that never falls: the outputs are the very
    # same floats. The gradient differs only where f rounds two inputs of one window to one float,
    # so that the two orders route it to different inputs.
    readers = collections.Counter(ref[0] for node in nodes for ref in node["inputs"])
    readers.update(ref[0] for ref in heads)
    for i, pool in enumerate(nodes):
        attrs = pool.get("attrs", {})
        if pool["op"] != "Pooling" or attrs.get("pool_type") != "max" or len(pool["inputs"]) != 1:
            continue
        # Padding would put f(0) against the window's values, not 0 against its inputs.
        if any(int(size) for size in re.findall(r"\d+", attrs.get("pad", ""))):
            continue
        j = pool["inputs"][0][0]
        activation = nodes[j]
        if (activation["op"] == "Activation" and readers[j] == 1
                and activation.get("attrs", {}).get("act_type") in _RISING):
            nodes[j] = dict(pool, inputs=activation["inputs"])
            nodes[i] = dict(activation, inputs=[[j, 0, 0]])


def _pixel_range(ctx, shapes, scale):
    """(min, max) arrays with which dequantize on ctx gives byte * scale; or None."""
    # MXNet's MKLDNN kernel scales the bytes by max / 255.5 and its plain kernel by max / 255: try
    # the max that each needs, and keep the first that gives every byte value's float bit for bit,
    # on the very shapes bound.
    codes = [np.arange(np.prod(shape)).reshape(shape) % 256 for shape in shapes]
    mkldnn_max = np.float32(255.5) / np.float32(255)
    for top in (
        1,
        mkldnn_max,
        np.nextafter(mkldnn_max, np.float32(2)),
        np.nextafter(mkldnn_max, np.float32(0)),
    ):
        low, high = mx.nd.zeros(1, ctx), mx.nd.array([top], ctx)
        if all(
            np.array_equal(
                mx.nd.contrib.dequantize(mx.nd.array(c, ctx, np.uint8), low, high).asnumpy(),
                c.astype(np.float32) * scale,
            )
            for c in codes
        ):
            return low, high
    return None
