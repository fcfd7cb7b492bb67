"""Summing gradients and sharing weights over the devices of one process and over workers.

One context and one worker need neither. Several contexts sum through MXNet's kvstore (local or
device); dist_sync workers through its parameter server (ps-lite); horovod workers by Horovod's
allreduce.
"""
import os

import mxnet as mx
import numpy as np

from harness.errors import ConfigError

HOROVOD_INSTALL = (
    "pip install wheel && HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 "
    "HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 pip install "
    "--no-build-isolation -r requirements-horovod.txt"
)
# What ps-lite reads to find its job; a launcher sets them.
_DMLC = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")
# kvstore keys: each is initialised once, by every worker at the same point.
_GRADS, _WEIGHTS, _TOTALS, _GATHER, _VALUES = 0, 1, 2, 3, 4


def create(kind, num_contexts):
    """The Sync for kind (a --kv-store, as Config allows it) and that many contexts here."""
    if kind == "horovod":
        return HorovodSync()
    if kind == "dist_sync":
        missing = [name for name in _DMLC if name not in os.environ]
        if missing:
            raise ConfigError(
                f"--kv-store dist_sync runs under a launcher, which sets {', '.join(missing)}: "
                "python -m harness.launch -n 2 -s 1 -- python train_mnist.py "
                "--kv-store dist_sync"
            )
        return KVStoreSync(kind)
    if kind in ("local", "device"):
        return Sync() if num_contexts == 1 else KVStoreSync(kind)
    raise ValueError(f"no Sync for --kv-store {kind!r}")


class Sync:
    """One context, one worker: nothing to sum; weights copied to the other contexts, if any."""

    rank, num_workers = 0, 1

    def init(self, flat_grads):
        """Get ready to sum buffers like flat_grads."""

    def sum_grads(self, grads):
        """Sum the flat gradient buffers of every context and worker into grads[0]."""

    def share_weights(self, params, from_rank0=False):
        """Copy params[0] into the other contexts' buffers (first, from_rank0: rank 0's values)."""
        for other in params[1:]:
            params[0].copyto(other)

    def all_workers(self, totals):
        """totals (a numpy array) summed over all workers."""
        return totals

    def gather(self, array):
        """Every worker's array (an NDArray on the CPU), stacked in rank order."""
        return array.expand_dims(0)

    def gather_values(self, values):
        """Every worker's values (a float32 numpy vector), stacked in rank order, in numpy."""
        return values[None]


class KVStoreSync(Sync):
    """MXNet's kvstore: push each context's buffer, pull the sum; over workers with dist_sync."""

    def __init__(self, kind):
        self.kv = mx.kv.create(kind)
        self.rank, self.num_workers = self.kv.rank, self.kv.num_workers

    def init(self, flat_grads):
        self.kv.init(_GRADS, flat_grads)
        self.totals_size = None

    def sum_grads(self, grads):
        self.kv.push(_GRADS, grads)
        self.kv.pull(_GRADS, out=grads[0])

    def share_weights(self, params, from_rank0=False):
        if from_rank0 and self.num_workers > 1:
            # The store keeps rank 0's value, and every worker pulls it.
            self.kv.init(_WEIGHTS, params[0])
            self.kv.pull(_WEIGHTS, out=params[0])
        super().share_weights(params)

    def all_workers(self, totals):
        if self.num_workers == 1:
            return totals
        ctx = mx.cpu()
        if self.totals_size is None:
            # Every worker sums its first totals at the same point: the key's one collective init.
            self.kv.init(_TOTALS, mx.nd.zeros(len(totals), ctx))
            self.totals_size = len(totals)
        self.kv.push(_TOTALS, mx.nd.array(totals, ctx))
        summed = mx.nd.zeros(len(totals), ctx)
        self.kv.pull(_TOTALS, out=summed)
        return summed.asnumpy().astype(np.float64)

    def gather(self, array, key=_GATHER):
        if self.num_workers == 1:
            return array.expand_dims(0)
        # A sum of arrays that are zero but for each worker's own row: every row, exactly.
        rows = mx.nd.zeros((self.num_workers, *array.shape), array.context)
        rows[self.rank] = array
        self.kv.init(key, mx.nd.zeros(rows.shape, array.context))
        self.kv.push(key, rows)
        self.kv.pull(key, out=rows)
        # Done here, before any worker moves on: one that went on into MXNet's shutdown while the
        # gather was in flight left another's pull waiting forever, in 1 run of 3.
        rows.wait_to_read()
        return rows

    def gather_values(self, values):
        return self.gather(mx.nd.array(values, mx.cpu()), _VALUES).asnumpy()


class HorovodSync(Sync):
    """Horovod: allreduce (sum) over the processes horovodrun started; no parameter server.

    In mxnet 1.9.1, mx.kv.create('horovod') silently gives a local store that sums nothing across
    processes, so this calls horovod.mxnet itself. Every process must make the same calls in the
    same order: each trains the same number of batches (its share of every global batch) and sums
    its totals once an epoch.
    """

    def __init__(self):
        try:
            import horovod.mxnet as hvd
        except ImportError:
            raise ConfigError(
                f"--kv-store horovod needs Horovod, which is not installed: {HOROVOD_INSTALL}"
            ) from None
        hvd.init()
        self.hvd, self.rank, self.num_workers = hvd, hvd.rank(), hvd.size()

    def sum_grads(self, grads):
        # This process's devices first, then the processes.
        for other in grads[1:]:
            grads[0] += other.as_in_context(grads[0].context)
        self.hvd.allreduce_(grads[0], op=self.hvd.Sum, name="gradients")

    def share_weights(self, params, from_rank0=False):
        if from_rank0:
            self.hvd.broadcast_(params[0], root_rank=0, name="weights")
        super().share_weights(params)

    def all_workers(self, totals):
        summed = mx.nd.array(totals)
        self.hvd.allreduce_(summed, op=self.hvd.Sum, name="totals")
        return summed.asnumpy()

    def gather(self, array):
        return self.hvd.allgather(array.expand_dims(0), name="gather")

    def gather_values(self, values):
        return self.hvd.allgather(mx.nd.array(values[None]), name="values").asnumpy()
