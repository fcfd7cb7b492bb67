"""Hand-written optimizers for any network's parameters, each the update rule of its mx.optimizer namesake.

They use NDArray methods only, so this module imports no MXNet of its own. Adding an optimizer means one
subclass of Optimizer here: it registers itself under its `name` for --optimizer.
"""
import math

OPTIMIZERS = {}  # name -> class, filled in by each subclass


class Optimizer:
    """Per-parameter state, the update count and the learning-rate schedule; a subclass writes one step."""

    name = None
    default_learning_rate = 0.1  # used when --lr is not given

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.name] = cls

    def __init__(self, learning_rate, momentum=0.0, wd=0.0, lr_schedule=None, clip_gradient=None):
        if not learning_rate > 0 or not 0 <= momentum < 1 or not wd >= 0 or not (clip_gradient or 1) > 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1, wd >= 0 and clip_gradient > 0, got {learning_rate}, "
                             f"{momentum}, {wd}, {clip_gradient}")
        self.learning_rate, self.momentum, self.wd = learning_rate, momentum, wd
        self.clip_gradient = clip_gradient  # None: no clipping
        self.lr_schedule = lr_schedule  # num_update -> learning rate, as mx.lr_scheduler; None keeps it fixed
        self.num_update = 0
        self.state = {}  # name -> list of NDArrays: what a checkpoint saves and restores, with num_update

    def update(self, params, grads, rescale_grad=1.0):
        """Step every parameter (name -> NDArray) in place with its gradient in grads, which it consumes."""
        self.num_update += 1
        lr = self.lr_schedule(self.num_update) if self.lr_schedule else self.learning_rate
        for name, weight in params.items():
            if name not in self.state:
                self.state[name] = self.new_state(weight)
            self.step(weight, grads[name], self.state[name], lr, rescale_grad)

    def new_state(self, weight):
        """The zeroed state arrays one parameter needs."""
        return []

    def step(self, weight, grad, state, lr, rescale_grad):
        """Update one parameter array in place, at learning rate lr."""
        raise NotImplementedError

    def clipped(self, grad, factor):
        """factor * grad, clipped to +-clip_gradient if set, computed in grad's own buffer."""
        # Scaling the gradient in place is free, since the next backward overwrites it anyway; each op is a
        # full pass over memory, so a factor of exactly 1 costs none.
        if factor != 1:
            grad *= factor
        if self.clip_gradient:
            grad.clip(-self.clip_gradient, self.clip_gradient, out=grad)
        return grad


class SGD(Optimizer):
    """mx.optimizer.SGD: v = mom * v - lr * (clip(rescale * g) + wd * w); w += v (w -= the step if mom is 0)."""

    name = "sgd"

    def new_state(self, weight):
        return [weight.zeros_like()] if self.momentum else []

    def scaled(self, grad, lr, rescale_grad):
        """lr * clip(rescale_grad * grad), in grad's buffer."""
        if not self.clip_gradient:
            return self.clipped(grad, lr * rescale_grad)
        grad = self.clipped(grad, rescale_grad)  # the clip comes before the learning rate: a pass of its own
        if lr != 1:
            grad *= lr
        return grad

    def step(self, weight, grad, state, lr, rescale_grad):
        descent = self.scaled(grad, lr, rescale_grad)
        if self.wd:
            descent += weight * (lr * self.wd)
        if self.momentum:
            velocity, = state
            velocity *= self.momentum
            velocity -= descent
            weight += velocity
        else:
            weight -= descent


class NAG(SGD):
    """mx.optimizer.NAG, as its nag_mom_update kernel computes it with out=weight:

    v = mom * v; w += mom * v - (1 + mom) * lr * (clip(rescale * g) + wd * w); then
    v -= lr * (clip(rescale * g) + wd * w), where this w is the weight just updated.
    """

    name = "nag"

    def step(self, weight, grad, state, lr, rescale_grad):
        if not self.momentum:  # MXNet then runs plain sgd_update
            return super().step(weight, grad, state, lr, rescale_grad)
        velocity, = state
        scaled = self.scaled(grad, lr, rescale_grad)
        descent = scaled + weight * (lr * self.wd) if self.wd else scaled
        velocity *= self.momentum
        weight += velocity * self.momentum
        weight -= descent * (1 + self.momentum)
        if self.wd:
            # MXNet's kernel writes the weight before it reads it again for this term, and mx.optimizer.NAG
            # passes out=weight: the momentum's weight decay sees the updated weight. That is the reference.
            scaled += weight * (lr * self.wd)
        velocity -= scaled


class Adam(Optimizer):
    """mx.optimizer.Adam: g = clip(rescale * g + wd * w); moving moments m, v; w -= lr_t * m / (sqrt(v) + eps)."""

    name = "adam"
    default_learning_rate = 0.001  # Adam's usual rate, and MXNet's
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    def __init__(self, learning_rate, momentum=0.0, wd=0.0, lr_schedule=None, clip_gradient=None):
        if momentum:
            raise ValueError("adam keeps its own moments (beta1 0.9, beta2 0.999); momentum does not apply")
        super().__init__(learning_rate, momentum, wd, lr_schedule, clip_gradient)

    def new_state(self, weight):
        return [weight.zeros_like(), weight.zeros_like()]

    def step(self, weight, grad, state, lr, rescale_grad):
        if rescale_grad != 1:
            grad *= rescale_grad
        if self.wd:
            grad += weight * self.wd
        grad = self.clipped(grad, 1)  # MXNet's adam_update clips after adding the weight decay
        mean, var = state
        mean *= self.beta1
        mean += grad * (1 - self.beta1)
        var *= self.beta2
        var += grad.square() * (1 - self.beta2)
        # Bias correction folded into the step size, as MXNet does (epsilon is not corrected).
        t = self.num_update
        lr_t = lr * math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        weight -= mean / (var.sqrt() + self.epsilon) * lr_t


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
