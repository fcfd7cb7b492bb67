"""Hand-written accuracy and cross-entropy, and their running sums over an epoch on the devices."""
import mxnet as mx
import numpy as np

# The same epsilon as mx.metric.CrossEntropy, so that the two agree on confident mistakes.
_EPS = 1e-12


def batch_metrics(F, probs, labels):
    """Return [number correct, summed cross-entropy] for (N, C) probabilities; F is mx.nd or mx.sym.

    labels: (N,) or (N, 1) class indices of any numeric dtype, as mx.metric.Accuracy takes them (ValueError
    otherwise); a symbol's are taken as bound, (N,) float32.
    """
    if F is mx.nd:
        labels = _label_vector(probs, labels)
    num_correct = F.sum(F.argmax(probs, axis=1) == labels)
    loss_sum = -F.sum(F.log(F.pick(probs, labels, axis=1) + _EPS))
    # Sums, not means, so batches of any size accumulate exactly; divide by the sample count once.
    return F.concat(num_correct, loss_sum, dim=0)


def accuracy(probs, labels):
    """The fraction of rows of probs (N, C) whose largest entry is at the label's index, as mx.metric.Accuracy."""
    probs, labels = (a if isinstance(a, mx.nd.NDArray) else mx.nd.array(a, dtype=np.asarray(a).dtype)
                     for a in (probs, labels))
    return float(batch_metrics(mx.nd, probs, labels)[0].asscalar()) / probs.shape[0]


def _label_vector(probs, labels):
    """labels as an (N,) float32 NDArray, from (N,) or (N, 1) of any numeric dtype."""
    shape, n = labels.shape, probs.shape[0]
    if shape not in ((n,), (n, 1)):
        raise ValueError(f"labels must be shaped ({n},) or ({n}, 1) for {n} predictions, got {shape}")
    if not np.issubdtype(np.dtype(labels.dtype), np.number):
        raise ValueError(f"labels must be numbers, got dtype {np.dtype(labels.dtype)}")
    labels = labels.reshape((n,))
    return labels if labels.dtype == np.float32 else labels.astype(np.float32)


class Meter:
    """Each batch's [correct, summed loss] on each device, summed by the host once per epoch.

    Each batch has an array of its own, not a row of one: the engine orders work per array, so reading early
    batches then waits for those alone, and the batches queued after them keep the engine busy meanwhile.
    """

    def __init__(self):
        self.stats = []    # per device, per batch of the epoch: a (2,) array, reused from epoch to epoch
        self.samples = []  # per batch of the epoch: (samples this worker scored, samples of all workers)
        self.restored = 0  # batches of this epoch that an interrupted run did, not this one
        self._read = (0, np.zeros(2))

    def add(self, executors, samples):
        """Record the batch the executors just ran, of samples over all workers: their second output."""
        i = len(self.samples)
        for device, exe in enumerate(executors):
            if device == len(self.stats):
                self.stats.append([])
            if i == len(self.stats[device]):
                self.stats[device].append(mx.nd.zeros(2, exe.outputs[1].context))
            exe.outputs[1].copyto(self.stats[device][i])  # on the device: no host sync per batch
        self.samples.append((sum(exe.outputs[0].shape[0] for exe in executors), samples))

    def reset(self, samples=(), stats=()):
        """Start an epoch afresh, or with the batches an interrupted run did: samples, per-device stats arrays."""
        self.samples, self.restored, self._read = list(samples), len(samples), (0, np.zeros(2))
        for device, arrays in enumerate(stats):
            if device == len(self.stats):
                self.stats.append([])
            for i, saved in enumerate(arrays):
                if i == len(self.stats[device]):
                    self.stats[device].append(mx.nd.zeros(2, saved.context))
                saved.copyto(self.stats[device][i])

    def per_batch(self, start=0, stop=None):
        """A (batches, 2) float32 array of batches start to stop, summed over devices: a host sync."""
        stop = len(self.samples) if stop is None else stop
        if stop <= start:
            return np.zeros((0, 2), np.float32)
        return sum(mx.nd.stack(*slots[start:stop]).asnumpy() for slots in self.stats)

    def total_samples(self):
        """The epoch's samples over all workers, and those of them this run trained (not restored)."""
        everyone = [pair[1] for pair in self.samples]
        return sum(everyone), sum(everyone[self.restored:])

    def running(self, lag=2):
        """(correct, summed loss, samples scored, samples of all workers) of the epoch so far, lag batches behind.

        Reading the batch just queued would stall Python until the engine drains, and the engine would then
        idle while Python queues the next; a few batches behind, the engine still has work while Python waits.
        Each call reads only the batches the last one did not.
        """
        done = max(len(self.samples) - lag, min(len(self.samples), 1))
        start, total = self._read
        if done > start:
            total = total + self.per_batch(start, done).sum(axis=0)
            self._read = (done, total)
        return total[0], total[1], sum(p[0] for p in self.samples[:done]), sum(p[1] for p in self.samples[:done])
