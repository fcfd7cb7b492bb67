"""Hand-written optimizers for any set of parameters, each the update rule of its mx.optimizer namesake.

Adding one means one subclass of Optimizer here: it registers itself under its `name` for --optimizer.
If its step multiplies the gradient by a factor that never changes, its fixed_scale() says so, and the trainer
then folds that factor into the backward pass.
"""
import math

import mxnet as mx

OPTIMIZERS = {}  # name -> class, filled in by each subclass


class Optimizer:
    """Per-parameter state, the update count and the learning-rate schedule; a subclass writes one step."""

    name = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.name] = cls

    def __init__(self, learning_rate, momentum=0.0, wd=0.0, lr_schedule=None):
        if not learning_rate > 0 or not 0 <= momentum < 1 or not wd >= 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1 and wd >= 0, got {learning_rate}, {momentum}, {wd}")
        self.learning_rate, self.momentum, self.wd = learning_rate, momentum, wd
        self.lr_schedule = lr_schedule  # num_update -> learning rate, as mx.lr_scheduler; None keeps it fixed
        self.num_update = 0
        self.state = {}  # name -> list of NDArrays: what a checkpoint saves and restores, with num_update

    def update(self, params, grads, rescale_grad=1.0, prescaled=False):
        """Step every array in params (name -> NDArray) in place; consumes grads, which it scales in place.

        prescaled: grads already hold rescale_grad * fixed_scale() * gradient, so the step skips that pass.
        """
        self.num_update += 1
        lr = self.lr_schedule(self.num_update) if self.lr_schedule else self.learning_rate
        for name, weight in params.items():
            if name not in self.state:
                self.state[name] = self.new_state(weight)
            self.step(weight, grads[name], self.state[name], lr, None if prescaled else rescale_grad)

    def fixed_scale(self):
        """The factor by which every step multiplies rescale_grad * gradient, if it never changes; else None."""
        return None  # no promise: the trainer then leaves all scaling to step()

    def new_state(self, weight):
        """The zeroed state arrays one parameter needs."""
        return []

    def step(self, weight, grad, state, lr, rescale_grad):
        """Update one parameter array in place, at learning rate lr; rescale_grad None: grad is prescaled."""
        raise NotImplementedError

    def scaled_gradient(self, weight, grad, scale, rescale_grad):
        """scale * (rescale_grad * grad + wd * weight), computed in grad's own buffer, which it returns."""
        # Each element-wise op is a full pass over memory, so scalars are folded and no temporary is made:
        # scaling the gradient in place is free, since the next backward overwrites it anyway.
        if rescale_grad is not None:  # None: backward has already multiplied grad by scale * rescale_grad
            grad *= scale * rescale_grad
        if self.wd:
            grad += weight * (scale * self.wd)
        return grad


class SGD(Optimizer):
    """mx.optimizer.SGD: v = mom * v - lr * (rescale * g + wd * w); w += v (w -= that step if mom is 0)."""

    name = "sgd"

    def fixed_scale(self):
        return None if self.lr_schedule else self.learning_rate

    def new_state(self, weight):
        return [mx.nd.zeros_like(weight)] if self.momentum else []

    def step(self, weight, grad, state, lr, rescale_grad):
        descent = self.scaled_gradient(weight, grad, lr, rescale_grad)
        if self.momentum:
            velocity, = state
            velocity *= self.momentum
            velocity -= descent
            self.apply_velocity(weight, velocity, descent)
        else:
            weight -= descent

    def apply_velocity(self, weight, velocity, descent):
        weight += velocity


class NAG(SGD):
    """MXNet's NAG kernel: v = mom * v - lr * (rescale * g + wd * w); w += mom * v - lr * (rescale * g + wd * w)."""

    name = "nag"

    def apply_velocity(self, weight, velocity, descent):
        weight += velocity * self.momentum  # the look-ahead: where the momentum carries the weights next
        weight -= descent


class Adam(Optimizer):
    """mx.optimizer.Adam: g = rescale * g + wd * w; m, v = moving moments; w -= lr_t * m / (sqrt(v) + eps)."""

    name = "adam"
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    def __init__(self, learning_rate, momentum=0.0, wd=0.0, lr_schedule=None):
        if momentum:
            raise ValueError("adam keeps its own moments (beta1 0.9, beta2 0.999); momentum does not apply")
        super().__init__(learning_rate, momentum, wd, lr_schedule)

    def fixed_scale(self):
        return 1.0  # the learning rate enters after the moments, so only rescale_grad scales the gradient

    def new_state(self, weight):
        return [mx.nd.zeros_like(weight), mx.nd.zeros_like(weight)]

    def step(self, weight, grad, state, lr, rescale_grad):
        grad = self.scaled_gradient(weight, grad, 1.0, rescale_grad)
        mean, var = state
        mean *= self.beta1
        mean += grad * (1 - self.beta1)
        var *= self.beta2
        var += mx.nd.square(grad) * (1 - self.beta2)
        # Bias correction folded into the step size, as MXNet does (epsilon is not corrected).
        t = self.num_update
        lr_t = lr * math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        weight -= mean / (mx.nd.sqrt(var) + self.epsilon) * lr_t


def lr_schedule(kind, learning_rate, total_updates, step_updates=(), factor=0.1):
    """Return num_update -> learning rate: 'none', 'step' (times factor after each of step_updates) or 'cosine'."""
    if kind == "none":
        return None
    if kind == "step":
        steps = sorted(step_updates)
        return lambda num_update: learning_rate * factor ** sum(num_update > s for s in steps)
    if kind == "cosine":
        # From learning_rate at the first update down to 0 at the last, as mx.lr_scheduler.CosineScheduler.
        return lambda num_update: learning_rate * (1 + math.cos(math.pi * min(num_update, total_updates)
                                                                / total_updates)) / 2
    raise ValueError(f"unknown learning-rate schedule {kind!r}: use none, step or cosine")
