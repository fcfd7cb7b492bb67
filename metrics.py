"""Hand-written accuracy and cross-entropy, and their running sums over an epoch."""
import mxnet as mx
import numpy as np

# The same epsilon as mx.metric.CrossEntropy, so that the two agree on confident mistakes.
EPS = 1e-12


def accuracy(probs, labels):
    """How many rows of probs (samples, classes) have their largest entry at the row's label."""
    return (probs.argmax(axis=1) == labels).sum()


def cross_entropy(probs, labels):
    """The sum, over the rows of probs, of -log(the probability the row gives its label)."""
    return -(probs.pick(labels, axis=1) + EPS).log().sum()


def batch_metrics(probs, labels):
    """[number correct, summed cross-entropy] of a batch, as symbols: the graph's second output.

    probs and labels are symbols (or NDArrays): (N, classes) probabilities and N class indices.
    Sums, not means, so that batches of any size add up exactly; an epoch divides by its samples
    once. Computed inside the bound graph, they cost no dispatch of their own per batch.
    """
    return mx.sym.concat(accuracy(probs, labels), cross_entropy(probs, labels), dim=0)


class Meter:
    """Each batch's [correct, summed loss] on each device, summed by the host once an epoch.

    Each batch has an array of its own, not a row of one: the engine orders work per array, so
    reading early batches waits for those alone, while the batches queued after them keep the engine
    busy.
    """

    def __init__(self):
        # Per device, per batch of the epoch: a (2,) array, reused from epoch to epoch.
        self.stats = []
        # Per batch of the epoch: (samples this worker scored, samples of all workers).
        self.samples = []
        # How many batches of this epoch an interrupted run did, not this one.
        self.restored = 0
        self._read = (0, np.zeros(2))

    def add(self, executors, samples):
        """Record the batch the executors just ran (samples: over all workers): their 2nd output."""
        i = len(self.samples)
        for device, exe in enumerate(executors):
            if device == len(self.stats):
                self.stats.append([])
            if i == len(self.stats[device]):
                self.stats[device].append(mx.nd.zeros(2, exe.outputs[1].context))
            # On the device: no host sync per batch.
            exe.outputs[1].copyto(self.stats[device][i])
        self.samples.append((sum(exe.outputs[0].shape[0] for exe in executors), samples))

    def reset(self, samples=(), stats=()):
        """Start an epoch afresh, or with the samples and per-device stats of an interrupted run."""
        self.samples, self.restored, self._read = list(samples), len(samples), (0, np.zeros(2))
        for device, arrays in enumerate(stats):
            if device == len(self.stats):
                self.stats.append([])
            for i, saved in enumerate(arrays):
                if i == len(self.stats[device]):
                    self.stats[device].append(mx.nd.zeros(2, saved.context))
                saved.copyto(self.stats[device][i])

    def wait(self, batch):
        """Block until batch number batch (from 0) of the epoch is measured, its work all done."""
        for slots in self.stats:
            slots[batch].wait_to_read()

    def per_batch(self, start=0, stop=None):
        """A (batches, 2) float32 array of batches start to stop, summed over devices (a sync)."""
        stop = len(self.samples) if stop is None else stop
        if stop <= start:
            return np.zeros((0, 2), np.float32)
        return sum(mx.nd.stack(*slots[start:stop]).asnumpy() for slots in self.stats)

    def total_samples(self):
        """(the epoch's samples over all workers, those of them this run trained, not restored)."""
        everyone = [pair[1] for pair in self.samples]
        return sum(everyone), sum(everyone[self.restored:])

    def running(self, lag=2):
        """(correct, loss sum, samples scored, samples of all workers) so far, lag batches back.

        Reading the batch just queued would stall Python until the engine drains, and the engine
        would then idle while Python queues the next; a few batches behind, the engine still has
        work while Python waits. Each call reads only the batches the last one did not.
        """
        done = max(len(self.samples) - lag, min(len(self.samples), 1))
        start, total = self._read
        if done > start:
            total = total + self.per_batch(start, done).sum(axis=0)
            self._read = (done, total)
        scored = sum(pair[0] for pair in self.samples[:done])
        return total[0], total[1], scored, sum(pair[1] for pair in self.samples[:done])
