"""The run's life: its devices and ranks, its plan, and the loop's epochs, batches and end.

A Run opens by checking every output it will write (harness/outputs.py), taking an exclusive lock
on the checkpoint prefix and on the metrics file for its whole life, and making its plan
(harness/plan.py): what it is for and where it starts. In the loop it keeps the epochs, the
batches, the end of each epoch (the record, the checkpoint, the metrics line) and the end of the
run (the pictures, the final line). A signal is honoured after the step in progress, which is
saved first (harness/saving.py saves and restores).
"""
import time

import numpy as np

from harness import cli, devices, files, outputs, plan, report, saving, signals, sync
from harness.checkpoint import Tag
from harness.datasets import DATASETS
from harness.errors import ConfigError, Diverged

# How many steps Python may queue ahead of MXNet's engine: enough to keep it busy, few enough that a
# signal is seen within a step or two, and not when the engine drains an epoch of queued work.
_QUEUE = 1


class Run:
    """One run: with Run(config) as run, the loop goes run.epochs(), run.batches(), run.end_epoch().

    config is resolved (Config.resolved()). log(line) shows a line; progress(figures) is called
    every --disp-batches batches; script is the trainer's path, for the commands it prints.
    """

    def __init__(self, config, log=None, progress=None, script="train_mnist.py"):
        self.config, self.script = config, script
        self.log, self.progress = log or (lambda line: None), progress
        self.history, self.first_epoch, self.skip = [], 1, 0
        self.contexts = self.sync = self.rng = self.plan = self.disk = None
        self.model = self.opt = self.meter = self.symbols = self.resumed = None
        self.locks, self.digests, self.metrics, self.begun = [], None, None, False
        self.epoch, self.tic, self.epoch_rng, self.signals = 0, 0.0, None, None
        # The last epoch's training steps, in seconds, until their work was done.
        self.train_seconds = 0.0
        # The stop flags of steps whose sums are not read yet (workers only); each epoch's batch
        # count, for the progress lines.
        self.flags, self.batch_counts = [], {}

    @property
    def rank(self):
        """This worker's index: rank 0 alone reports, saves and draws."""
        return self.sync.rank

    @property
    def epoch_range(self):
        """The epochs this run's schedule spans: from the first it trained, resumed or not."""
        return range(self.first_epoch, self.config.num_epochs + 1)

    @property
    def shard(self):
        """(this worker's index, the number of workers): how every global batch is split."""
        return self.sync.rank, self.sync.num_workers

    def __enter__(self):
        try:
            self._open()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, kind, error, traceback):
        self._release()
        return False

    def _release(self):
        for lock in self.locks:
            lock.release()
        self.locks = []

    def _open(self):
        """The devices, the outputs checked, the locks, the plan: all before anything is built."""
        signals.set_stage("before training began; nothing saved")
        config = self.config
        self.contexts = devices.contexts(config.gpus, config.cpus)
        self.sync = sync.create(config.kv_store, len(self.contexts))
        if self.rank > 0:
            self.log, self.progress = (lambda line: None), None
        for line in cli.summary(config):
            self.log(line)
        mode = plan.mode_of(config)
        if self.rank == 0:
            outputs.check(config, mode)
            if mode == "train":
                for path, flag in ((config.model_prefix, "--model-prefix"),
                                   (config.metrics_file, "--metrics-file")):
                    if path:
                        self.locks.append(files.Lock(path, f"{flag} {path}").acquire())
        self.disk = plan.Disk(config.model_prefix)
        self.plan = plan.make(config, self.disk, self.script, plan.launcher())
        self.first_epoch = self.plan.first_epoch
        if self.rank == 0 and self.plan.saves and config.metrics_file:
            self.metrics = report.MetricsFile(config.metrics_file)
        if self.wants_pictures() and report.pictures_warning():
            self.log(report.pictures_warning())
        # The weights' initialisation, then each epoch's shuffle.
        self.rng = np.random.RandomState(config.seed)
        signals.check()

    def restore(self, symbols, model, opt, meter):
        """Take the plan's checkpoint over into model, opt, run.rng and meter; share the weights.

        symbols: (the network, its inference graph), which this run's checkpoints hold.
        """
        if not self.plan.trains:
            raise ConfigError(
                "this config scores, exports or predicts (--evaluate, --export-onnx, --predict): "
                "train() trains; call score(), or main() with these flags"
            )
        self.symbols, self.model, self.opt, self.meter = symbols, model, opt, meter
        state = saving.restore(self, symbols)
        if state is not None:
            self.history, self.first_epoch, self.resumed = state.history, state.first_epoch, state
            self.skip = self.plan.tag.batches or 0
        model.share_weights(from_rank0=True)
        self.sync.init(model.replicas[0].flat_grads)

    def epochs(self, batches):
        """The epochs to train, in order (batches: epoch -> its batch count).

        Inside, a signal waits for the step in progress to end.
        """
        self.batch_counts = batches
        # A signal during start-up whose raise was lost stops the run here, before any training.
        signals.check()
        with signals.deferred() as self.signals:
            for epoch in range(self.first_epoch + len(self.history), self.config.num_epochs + 1):
                self.epoch, self.tic = epoch, time.perf_counter()
                self.epoch_rng = self.rng.get_state()
                yield epoch
                if self.plan.mode == "dry_run":
                    break
        signals.set_stage(_after_training(self))
        # A signal that came as the last epoch ended, after its check: recorded, and honoured here.
        signals.check()

    def batches(self, train_iter):
        """train_iter's batches for this epoch, after those a resumed epoch had done.

        Between two batches: the queue kept short, the progress lines, and a signal's save.
        """
        if not self.begun:
            saving.check_data(self, getattr(train_iter, "digests", None))
        train_iter.reset()
        done, self.skip = self.skip, 0
        for i, batch in enumerate(train_iter):
            if i < done:
                continue
            if self.sync.num_workers > 1:
                # Every worker says, in the step's own sum, whether it has a signal to honour.
                self.model.stop_flag[:] = 1.0 if self.signals.pending else 0.0
            yield batch
            self._after_step(i)
            if self.plan.mode == "dry_run":
                return
        # The steps' own time, without the scoring after them: what the speed figures compare.
        if self.meter.samples:
            self.meter.wait(len(self.meter.samples) - 1)
        self.train_seconds = time.perf_counter() - self.tic

    def _after_step(self, i):
        meter = self.meter
        last = len(meter.samples) - 1
        if last >= _QUEUE:
            meter.wait(last - _QUEUE)
        if not self.begun:
            meter.wait(last)
            self._begin()
        if self._stop_agreed(last):
            raise saving.interrupt(self, self.signals.pending, in_epoch=i + 1)
        disp = self.config.disp_batches
        if self.progress and disp and (i + 1) % disp == 0:
            batches = self.batch_counts.get(self.epoch, 0)
            self.progress(report.progress_figures(meter, self.epoch, i + 1, batches, self.tic))

    def _begin(self):
        """The run has begun (its first step is done): what the plan deferred happens now."""
        self.begun = True
        if self.plan.saves:
            saving.begin(self)

    def _stop_agreed(self, last):
        """Whether to stop after this step: on a signal here, or one any worker had.

        Workers agree through the flag summed with the gradients, read a step late, when that
        step's sum is done: every worker reads the same sum after the same step, and all stop
        together.
        """
        if self.sync.num_workers == 1:
            return bool(self.signals.pending)
        self.flags.append(self.model.stop_flag.copy())
        return len(self.flags) > 1 and self.flags.pop(0).asscalar() > 0

    def end_epoch(self, meter, scored):
        """After the epoch's last step and its scoring: its record, checkpoint and metrics line.

        Its one host sync: all the epoch's work is done after it.
        """
        per_batch = meter.per_batch()
        if not self.begun:
            # A resume after the epoch's last batch has no step of its own to wait for.
            self._begin()
        seconds = time.perf_counter() - self.tic
        _check_finite(self.config, self.epoch, per_batch, self.model)
        # The stop flag rides with the totals: every worker learns of any worker's signal here too.
        local = np.append(per_batch.sum(axis=0), 1.0 if self.signals.pending else 0.0)
        *totals, stops = self.sync.all_workers(local)
        self.flags = []
        if self.plan.mode == "dry_run":
            self.log(_dry_run_line(self, meter, totals, scored))
            return
        self.history.append(report.record(self.epoch, totals, meter.total_samples(), scored,
                                          (seconds, self.train_seconds)))
        if self.rank == 0:
            # The checkpoint first: the metrics file's position at its save tells a resume what to
            # write.
            config = self.config
            if config.model_prefix and (self.epoch % config.save_period == 0
                                        or self.epoch == config.num_epochs):
                saving.save(self, Tag(self.epoch), self.rng.get_state())
            if self.metrics:
                self.metrics.append(self.history[-1])
            self.log(report.epoch_line(self.history[-1]))
        meter.reset()
        # One process also stops for a signal that came while it scored or saved; workers only for
        # the one they agreed on, in the sum, lest one stop without the others.
        if stops or (self.sync.num_workers == 1 and self.signals.pending):
            raise saving.interrupt(self, self.signals.pending)

    def finish(self, scored):
        """After the last epoch: the pictures and the final line.

        scored: the test set's (probabilities, labels, images), which the pictures show.
        """
        if self.plan.mode == "dry_run":
            return
        if self.wants_pictures() and scored is not None:
            dataset = DATASETS[self.config.dataset]
            folder = report.pictures_folder(self.config)
            self.log(report.save_pictures(folder, self.history, scored, dataset))
        if self.history:
            count = len(self.history)
            self.log(f"final test accuracy {self.history[-1]['test_acc']:.4f} after {count} "
                     f"epoch{'' if count == 1 else 's'}")
        signals.set_stage(_after_training(self, ended=True))

    def wants_pictures(self):
        """Whether finish() draws pictures: so that the test set's predictions are worth making."""
        return self.rank == 0 and self.plan.saves and bool(report.pictures_folder(self.config))


def _after_training(run, ended=False):
    """What a signal now stops, once the last epoch is trained: nothing, and what is saved."""
    config = run.config
    when = "after the run ended" if ended else f"after the last epoch ({config.num_epochs})"
    if config.model_prefix and run.plan.saves:
        return f"{when}; {Tag(config.num_epochs).stem(config.model_prefix)} is saved"
    return f"{when}; nothing was to be saved"


def _dry_run_line(run, meter, totals, scored):
    """What a dry run did: its one step, and the test set scored."""
    samples = meter.total_samples()[0]
    return (f"dry run: one step of {samples} samples over {len(run.contexts)} device(s) and "
            f"{run.sync.num_workers} worker(s), loss {totals[1] / samples:.4f}; the test set "
            f"scored {scored['acc']:.4f}; nothing saved")


def _check_finite(config, epoch, per_batch, model):
    """Raise Diverged naming the likely flag and the first batch whose loss is not finite.

    Or that the parameters are not, after the epoch's last step.
    """
    bad = np.flatnonzero(~np.isfinite(per_batch[:, 1]))
    if not len(bad) and np.isfinite(model.replicas[0].flat_params.sum().asscalar()):
        return
    where = f"non-finite loss in epoch {epoch}, batch {bad[0] + 1}" if len(bad) else \
        f"non-finite parameters after epoch {epoch}"
    # SGD's weight decay multiplies each weight by 1 - lr * wd per step: past 2, the weights grow
    # every step.
    if config.wd and config.lr * config.wd >= 1:
        product = config.lr * config.wd
        cause = f"--wd {config.wd} is too large for --lr {config.lr} (lr * wd = {product:g})"
    else:
        cause = f"try a smaller --lr than {config.lr:g}" + (
            " or a --clip-gradient" if not config.clip_gradient else ""
        )
    raise Diverged(f"training diverged: {where}; {cause}. Checkpoints already saved are untouched")
