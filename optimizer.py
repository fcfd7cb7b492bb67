"""Hand-written optimizers for any network, each the update rule of its mx.optimizer namesake."""
# A step is in-place arithmetic on a parameter's arrays: +=, -=, *=, clip and sqrt. The arrays are
# MXNet NDArrays, or on a CPU numpy views of the very same memory (harness/fast.py): both compute
# each element with the same float32 operation, so a step gives the same bytes either way. Adding
# an optimizer is one subclass of Optimizer here: it registers itself under its `name`.
import math

# name -> class, filled in by each subclass
OPTIMIZERS = {}


class Optimizer:
    """Per-parameter state, the update count and the rate's schedule; a subclass writes one step.

    As MXNet's optimizers do once they know the parameters' names, weight decay applies to the
    names that end in _weight or _gamma, and not to the biases; decay_biases applies it to all.
    """

    name = None
    # Used when --lr is not given.
    default_learning_rate = 0.1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        OPTIMIZERS[cls.name] = cls

    def __init__(self, learning_rate, momentum=0.0, wd=0.0, lr_schedule=None, clip_gradient=None,
                 decay_biases=False):
        self.learning_rate, self.momentum, self.wd = learning_rate, momentum, wd
        # None: no clipping.
        self.clip_gradient = clip_gradient
        # num_update -> learning rate, as mx.lr_scheduler; None keeps it fixed.
        self.lr_schedule = lr_schedule
        self.decay_biases = decay_biases
        self.num_update = 0
        # name -> list of arrays: what a checkpoint saves and restores, with num_update.
        self.state = {}

    def update(self, params, grads, rescale_grad=1.0):
        """Step every parameter (name -> array) in place with its gradient, which it consumes."""
        self.num_update += 1
        lr = self.lr_schedule(self.num_update) if self.lr_schedule else self.learning_rate
        for name, weight in params.items():
            if name not in self.state:
                self.state[name] = self.new_state(weight)
            self.step(name, weight, grads[name], lr, rescale_grad)

    def decays(self, name):
        """Whether weight decay applies to the parameter of this name."""
        return self.decay_biases or name.endswith(("_weight", "_gamma"))

    def new_state(self, weight):
        """The zeroed state arrays that one parameter needs."""
        if "float16" in str(weight.dtype):
            raise ValueError("float16 weights lose the small steps of training (MXNet keeps "
                             "float32 master weights for them, with multi_precision): use float32")
        return []

    def step(self, name, weight, grad, lr, rescale_grad):
        """Update one parameter array in place, at learning rate lr."""
        raise NotImplementedError

    def gradient(self, name, weight, grad, rescale_grad):
        """MXNet's rescaled gradient, clip(rescale_grad * grad) + wd * weight, in grad's buffer.

        Working in place is free, since the next backward pass overwrites the gradient anyway.
        """
        grad *= rescale_grad
        if self.clip_gradient:
            grad.clip(-self.clip_gradient, self.clip_gradient, out=grad)
        if self.wd and self.decays(name):
            grad += self.wd * weight
        return grad


class SGD(Optimizer):
    """mx.optimizer.SGD: v = mom * v - lr * (clip(rescale * g) + wd * w); w += v."""

    name = "sgd"

    def new_state(self, weight):
        super().new_state(weight)
        return [weight.zeros_like()] if self.momentum else []

    def step(self, name, weight, grad, lr, rescale_grad):
        grad = self.gradient(name, weight, grad, rescale_grad)
        grad *= lr
        if self.momentum:
            velocity, = self.state[name]
            velocity *= self.momentum
            velocity -= grad
            weight += velocity
        else:
            weight -= grad


class NAG(SGD):
    """mx.optimizer.NAG, as its nag_mom_update kernel computes it with out=weight.

    With g = clip(rescale * grad): v = mom * v; w += mom * v - (1 + mom) * lr * (g + wd * w); then
    v -= lr * (g + wd * w), where this w is the weight just updated.
    """

    name = "nag"

    def step(self, name, weight, grad, lr, rescale_grad):
        if not self.momentum:
            # MXNet then runs plain sgd_update.
            return super().step(name, weight, grad, lr, rescale_grad)
        velocity, = self.state[name]
        decay = self.wd if self.decays(name) else 0.0
        grad *= rescale_grad
        if self.clip_gradient:
            grad.clip(-self.clip_gradient, self.clip_gradient, out=grad)
        grad *= lr
        step = grad + (lr * decay) * weight if decay else grad
        velocity *= self.momentum
        weight += self.momentum * velocity
        weight -= (1 + self.momentum) * step
        # MXNet's kernel writes the weight before it reads it again for this term, and NAG passes
        # out=weight: the momentum's decay sees the updated weight. That is the rule.
        if decay:
            grad += (lr * decay) * weight
        velocity -= grad


class Adam(Optimizer):
    """mx.optimizer.Adam: g = clip(rescale * g + wd * w), moments m, v; w -= lr_t * m / sqrt(v)."""

    name = "adam"
    # Adam's usual rate, and MXNet's.
    default_learning_rate = 0.001
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8

    def new_state(self, weight):
        super().new_state(weight)
        return [weight.zeros_like(), weight.zeros_like()]

    def step(self, name, weight, grad, lr, rescale_grad):
        grad *= rescale_grad
        if self.wd and self.decays(name):
            grad += self.wd * weight
        # MXNet's adam_update clips after adding the weight decay.
        if self.clip_gradient:
            grad.clip(-self.clip_gradient, self.clip_gradient, out=grad)
        mean, var = self.state[name]
        mean *= self.beta1
        mean += (1 - self.beta1) * grad
        var *= self.beta2
        var += (1 - self.beta2) * grad * grad
        # Bias correction folded into the step size, as MXNet does (epsilon is not corrected).
        t = self.num_update
        lr_t = lr * math.sqrt(1 - self.beta2 ** t) / (1 - self.beta1 ** t)
        weight -= lr_t * mean / (var.sqrt() + self.epsilon)


def lr_schedule(kind, learning_rate, total_updates, step_updates=(), factor=0.1):
    """num_update -> learning rate: 'none', 'step' (times factor after each step) or 'cosine'."""
    if kind == "none":
        return None
    if kind == "step":
        steps = sorted(step_updates)
        return lambda num_update: learning_rate * factor ** sum(num_update > s for s in steps)
    if kind == "cosine":
        # From learning_rate at the first update to 0 at the last, as mx.lr_scheduler's cosine.
        return lambda num_update: learning_rate * (
            1 + math.cos(math.pi * min(num_update, total_updates) / total_updates)) / 2
    raise ValueError(f"unknown learning-rate schedule {kind!r}")


def create(config, batches):
    """The optimizer config names, its schedule counted in batches (epoch -> its batch count).

    The schedule spans those epochs; a step epoch before the first has already lowered the rate.
    """
    def updates_after(epoch):
        return sum(count for e, count in batches.items() if e <= epoch)
    steps = [updates_after(epoch) for epoch in config.lr_step_epochs]
    schedule = lr_schedule(config.lr_scheduler, config.lr, updates_after(max(batches)), steps,
                           config.lr_factor)
    return OPTIMIZERS[config.optimizer](config.lr, config.mom, config.wd, schedule,
                                        config.clip_gradient or None, config.decay_biases)
