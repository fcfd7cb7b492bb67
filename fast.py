"""The speed tricks, all of them, behind one switch (Config.fast); off, training takes the plain path.

Each is tested equal to the plain path (tests/test_fast.py). What each saves, per batch of 100 on the 2-core
development machine, is measured in docs/speed.md.
"""
import json

import mxnet as mx
import numpy as np

import data

ALL = "all parameters"  # the one name under which the flat update holds its state
_PIXEL_RANGE = ("pixel_min", "pixel_max")  # inputs of a graph that takes its pixels as bytes
# Optimizers whose every step multiplies the gradient by the learning rate first, so that lr can be folded
# into backward when it never changes; any other optimizer gets only 1/batch folded.
_LR_FIRST = ("sgd", "nag")


def plain():
    """The tutorial's path: float32 pixels, nothing folded into backward, the optimizer given each parameter."""
    return Tricks(flat=False, fold=None, contexts=())


def tricks(config, contexts):
    """The fast path for config on contexts."""
    # Folding lr / batch into backward saves the update its scaling pass over every parameter; SoftmaxOutput
    # multiplies its gradient by grad_scale for free. The manual loss makes its gradient outside the graph.
    fold = None
    if config.loss == "builtin":
        lr_first = config.optimizer in _LR_FIRST and config.lr_scheduler == "none" and not config.clip_gradient
        fold = config.lr if lr_first else 1.0
    return Tricks(flat=True, fold=fold, contexts=contexts)


class Tricks:
    """What the fast path changes: the graph each batch binds, the resident pixels, the update."""

    def __init__(self, flat, fold, contexts):
        self.flat, self.fold, self.contexts = flat, fold, contexts
        self.byte_ranges = None  # ctx -> the (min, max) arrays that dequantize the bytes, once chosen

    @property
    def pixel_bytes(self):
        """Whether training pixels stay uint8 bytes on the devices."""
        return self.byte_ranges is not None

    def pixels_as_bytes(self, shapes):
        """Whether the project's iterator should keep its pixels as bytes, for a graph of these input shapes."""
        # Pixels stay on the device as uint8, a quarter of float32's memory to gather from, and the bound graph
        # dequantizes them: only where that reproduces data.py's floats bit for bit, on the very shapes bound.
        ranges = [_pixel_range(ctx, shapes) for ctx in self.contexts]
        if ranges and all(ranges):
            self.byte_ranges = dict(zip(self.contexts, ranges))
        return self.pixel_bytes

    def graph(self, training_graph, samples):
        """The training graph to bind for a batch of samples: its head's gradient scaled, its input bytes."""
        graph = training_graph
        if self.fold is not None:
            graph = _with_grad_scale(graph, self.fold / samples)
        if self.byte_ranges:
            pixels = mx.sym.contrib.dequantize(mx.sym.var("data", dtype=np.uint8), *map(mx.sym.var, _PIXEL_RANGE))
            graph = graph(data=pixels)
        return graph

    def inputs(self, ctx):
        """The extra arrays a byte-input graph reads on ctx: the dequantize range."""
        return dict(zip(_PIXEL_RANGE, self.byte_ranges[ctx])) if self.byte_ranges else {}

    def update_rule(self, optimizer, layout):
        """The optimizer as the loop calls it: itself, or over one flat buffer with the folded factor."""
        return FlatUpdate(optimizer, layout, self.fold) if self.flat else optimizer


class FlatUpdate:
    """optimizer applied to all parameters at once, as one flat array, with its gradient prescaled.

    One flat array makes the update one or two element-wise ops per step instead of one or two per parameter.
    With fold set, backward has already multiplied the gradients by fold * rescale_grad: each batch runs a
    graph bound for its own sample count (devices.Group.load), so the update's scaling pass goes. With
    fold = lr, a step of lr' = 1 and wd' = lr * wd on those gradients is the step of lr and wd on the raw ones.
    """

    def __init__(self, optimizer, layout, fold):
        self.layout, self.fold, fold = layout, fold, fold or 1.0
        self.inner = type(optimizer)(optimizer.learning_rate / fold, optimizer.momentum, optimizer.wd * fold,
                                     optimizer.lr_schedule, optimizer.clip_gradient)

    def update(self, params, grads, rescale_grad=1.0):
        """Step params.flat with grads.flat; with fold set, backward has applied rescale_grad already."""
        self.inner.update({ALL: params.flat}, {ALL: grads.flat}, rescale_grad if self.fold is None else 1.0)

    def new_state(self, weight):
        return self.inner.new_state(weight)

    @property
    def num_update(self):
        return self.inner.num_update

    @num_update.setter
    def num_update(self, value):
        self.inner.num_update = value

    @property
    def state(self):
        """name -> state arrays, each a view of the flat state: as the plain optimizer keeps it."""
        if ALL not in self.inner.state:
            return {}
        views = [self.layout.views(array) for array in self.inner.state[ALL]]
        return {name: [view[name] for view in views] for name in self.layout.names}

    @state.setter
    def state(self, by_name):
        arrays = list(by_name.values())
        if not arrays:
            self.inner.state = {}
            return
        ctx = arrays[0][0].context if arrays[0] else None
        self.inner.state = {ALL: [self.layout.join({name: values[i] for name, values in by_name.items()}, ctx)
                                  for i in range(len(arrays[0]))]}


def _with_grad_scale(graph, scale):
    """graph with every SoftmaxOutput's grad_scale set to scale, through its JSON (an op's attrs are fixed)."""
    spec = json.loads(graph.tojson())
    for node in spec["nodes"]:
        if node["op"] == "SoftmaxOutput":
            node.setdefault("attrs", {})["grad_scale"] = repr(scale)
    return mx.sym.load_json(json.dumps(spec))


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
