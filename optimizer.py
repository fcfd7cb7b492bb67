"""Hand-written SGD with momentum, weight decay and gradient rescaling, for any set of parameters."""
import mxnet as mx


class SGD:
    """The update of mx.optimizer.SGD: v = mom * v - lr * (rescale * g + wd * w); w += v (w -= that step if mom is 0)."""

    def __init__(self, learning_rate, momentum=0.0, wd=0.0):
        if not learning_rate > 0 or not 0 <= momentum < 1 or not wd >= 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1 and wd >= 0, got {learning_rate}, {momentum}, {wd}")
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.wd = wd
        self.state = {}  # name -> momentum buffer; what a checkpoint saves and restores

    def update(self, params, grads, rescale_grad=1.0):
        """Step every array in params (name -> NDArray) in place; consumes grads, which it scales in place."""
        lr = self.learning_rate
        for name, weight in params.items():
            # Each element-wise op is a full pass over memory, so scalars are folded and no temporary is made:
            # scaling the gradient in place is free, since the next backward overwrites it anyway.
            step = grads[name]
            step *= lr * rescale_grad
            if self.wd:
                step += weight * (lr * self.wd)
            if self.momentum:
                velocity = self.state.get(name)
                if velocity is None:
                    velocity = self.state[name] = mx.nd.zeros_like(weight)
                velocity *= self.momentum
                velocity -= step
                weight += velocity
            else:
                weight -= step
