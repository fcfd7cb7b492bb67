"""The speed tricks, all of them, behind one switch (Config.fast), chosen as the model is bound."""
# Off, training takes the plain path. Each trick is tested equal to the plain path
# (tests/harness/test_fast.py), and what each saves is measured in docs/speed.md:
# - the optimizer steps all parameters as one or two flat arrays instead of one array each;
# - the factor that every step first multiplies the gradient by (-lr / batch for SGD and NAG at a
#   fixed rate, 1 / batch otherwise) is folded into backward, as SoftmaxOutput's grad_scale;
# - the training pixels stay uint8 bytes on the devices, dequantized inside the bound graph.
import json

import mxnet as mx
import numpy as np

from harness.datasets import DATA

# Inputs of a graph that takes its pixels as bytes.
_PIXEL_RANGE = ("pixel_min", "pixel_max")


def plain():
    """The tutorial's path."""
    # Float32 pixels, nothing folded into backward, each parameter stepped alone.
    return Tricks(flat=False, fold=None, pixel_bytes=False)


def tricks(config, opt):
    """The fast path for config and its optimizer opt."""
    # The manual gradient is made outside the graph: there is no grad_scale to fold into.
    return Tricks(
        flat=True, fold=opt.foldable() if config.gradient == "builtin" else None, pixel_bytes=True
    )


class Tricks:
    """What the fast path changes."""
    # The graph each batch binds, the resident pixels, the optimizer's arrays.

    def __init__(self, flat, fold, pixel_bytes):
        self.flat, self.fold, self.pixel_bytes = flat, fold, pixel_bytes
        # ctx -> the (min, max) arrays that dequantize the bytes, once chosen.
        self.byte_ranges = None
        self.single_group = True

    def prepare(self, opt, train_iter, contexts, shapes):
        """Fold into opt."""
        # And keep train_iter's pixels as bytes where that gives its floats bit for bit.
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
        spans = self.spans(layout)
        return tuple(
            {name: flat[begin:end] for name, (begin, end) in spans.items()}
            for flat in (params, grads)
        )

    def graph(self, training_graph, samples):
        """The training graph to bind for a batch of samples."""
        # Its head's gradient scaled, its input bytes.
        graph = training_graph
        if self.fold is not None:
            graph = _with_grad_scale(graph, self.fold / samples)
        if self.byte_ranges:
            pixels = mx.sym.contrib.dequantize(
                mx.sym.var(DATA, dtype=np.uint8), *map(mx.sym.var, _PIXEL_RANGE)
            )
            graph = graph(**{DATA: pixels})
        return graph

    def inputs(self, ctx):
        """The extra arrays a byte-input graph reads on ctx: the dequantize range."""
        return dict(zip(_PIXEL_RANGE, self.byte_ranges[ctx])) if self.byte_ranges else {}


def _with_grad_scale(graph, scale):
    """graph with every SoftmaxOutput's grad_scale set to scale."""
    # Through its JSON (an op's attrs are fixed).
    spec = json.loads(graph.tojson())
    for node in spec["nodes"]:
        if node["op"] == "SoftmaxOutput":
            node.setdefault("attrs", {})["grad_scale"] = repr(scale)
    return mx.sym.load_json(json.dumps(spec))


def _pixel_range(ctx, shapes, scale):
    """(min."""
    # Max) arrays with which dequantize on ctx turns bytes of these shapes into byte * scale; or
    # None.
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
