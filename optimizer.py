"""Hand-written SGD with momentum, weight decay and gradient rescaling, for any set of parameters."""
import mxnet as mx


class SGD:
    """Update rule of mx.optimizer.SGD: v = mom * v - lr * (rescale * g + wd * w); w += v."""

    def __init__(self, learning_rate, momentum=0.0, wd=0.0):
        if learning_rate <= 0 or not 0 <= momentum < 1 or wd < 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1 and wd >= 0, got {learning_rate}, {momentum}, {wd}")
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.wd = wd
        self.velocity = {}

    def update(self, params, grads, rescale_grad=1.0):
        """Step every array in params (name -> NDArray, in place) along grads[name] * rescale_grad."""
        lr = self.learning_rate
        for name, weight in params.items():
            grad = grads[name]
            # Scalars fold into as few element-wise ops as possible: each op is a full pass over memory.
            step = grad * (lr * rescale_grad)
            if self.wd:
                step += weight * (lr * self.wd)
            if self.momentum:
                velocity = self.velocity.get(name)
                if velocity is None:
                    velocity = self.velocity[name] = mx.nd.zeros_like(weight)
                velocity *= self.momentum
                velocity -= step
                weight += velocity
            else:
                weight -= step
