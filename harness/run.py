"""The run's life in one object: its devices and ranks, signals, checkpoints, metrics, report."""
# A Run refuses, before anything is built, every output that cannot be written or that collides
# with another, and takes an exclusive lock on the checkpoint prefix and on the metrics file for its
# whole life. It never writes over saved work: a fresh run stops on a prefix that holds
# checkpoints, a resume on newer ones. Nothing is deleted or set aside until the first step has
# run. Everything read back is checked against the configuration, and a problem is one line naming
# the newest intact checkpoint and the command that resumes from it. In the loop, a signal is
# honoured after the step in progress, which is saved first.
import dataclasses
import os
import re
import shlex
import time

import mxnet as mx
import numpy as np

from harness import checkpoint, cli, devices, files, report, sidecar, signals, sync
from harness.checkpoint import Tag
from harness.datasets import DATASETS, FILES
from harness.errors import CheckpointError, ConfigError, Diverged, Interrupted, OutputError

# How many steps Python may queue ahead of MXNet's engine: enough to keep it busy, few enough that a
# signal is seen within a step or two, and not when the engine drains an epoch of queued work.
_QUEUE = 1
# Set by harness.launch: the launcher's own words, which a resume command must start with.
LAUNCHER_ENV = "HARNESS_LAUNCHER"


@dataclasses.dataclass
class _Start:
    """Where training starts: tag None is epoch 1."""
    # Else the checkpoint to resume or warm-start from.
    tag: object = None
    # MXNet's own checkpoint (a .params file without this trainer's state): weights only.
    foreign: bool = False
    # With --start-over: the checkpoints to delete once the first step has run.
    remove: tuple = ()
    # Torn checkpoints past the resume point, to set aside once the first step has run.
    set_aside: tuple = ()


class Run:
    """One training run."""
    # With Run(config) as run, the loop goes run.epochs(), run.batches(), run.end_epoch().
    # config is resolved (checks.resolved). log(line) shows a line; progress(figures) every
    # --disp-batches batches; script is the trainer's path, for the commands it prints.

    def __init__(self, config, log=None, progress=None, script="train_mnist.py"):
        self.config, self.script = config, script
        self.log, self.progress = log or (lambda line: None), progress
        self.history, self.first_epoch, self.skip = [], 1, 0
        self.contexts = self.sync = self.rng = self.start = None
        self.model = self.opt = self.meter = self.symbols = None
        self.locks, self.digests, self.metrics, self.begun = [], None, None, False
        self.epoch, self.tic, self.epoch_rng, self.signals = 0, 0.0, None, None
        # The last epoch's training steps, in seconds, until their work was done.
        self.train_seconds = 0.0
        # The stop flags of steps whose sums are not read yet (workers only).
        self.flags = []
        # The checkpoint resumed, decoded; and each epoch's batch count, for the progress lines.
        self.resumed, self.batch_counts = None, {}
        # The stem of the checkpoint whose weights load_weights took.
        self.source = None

    @property
    def rank(self):
        return self.sync.rank

    @property
    def trains(self):
        """Whether this run trains, rather than only reading a checkpoint (--evaluate...)."""
        return not (self.config.evaluate or self.config.export_onnx or self.config.predict)

    @property
    def epoch_range(self):
        """The epochs this run's schedule spans."""
        # From the first it trained, resumed or not, to the last.
        return range(self.first_epoch, self.config.num_epochs + 1)

    @property
    def shard(self):
        """(this worker's index, the number of workers)."""
        # How every global batch is split between them.
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
        signals.set_stage("before training began; nothing saved")
        config = self.config
        self.contexts = devices.contexts(config.gpus, config.cpus)
        self.sync = sync.create(config.kv_store, len(self.contexts))
        if self.rank > 0:
            # Rank 0 alone reports, saves and draws.
            self.log, self.progress = (lambda line: None), None
        for line in cli.summary(config):
            self.log(line)
        if self.rank == 0 and self.trains:
            check_outputs(config)
            if not config.dry_run:
                self._lock()
                if config.metrics_file:
                    self.metrics = report.MetricsFile(config.metrics_file)
        self.start = self._plan()
        if self.rank == 0 and report.pictures_folder(config) and report.pictures_warning():
            self.log(report.pictures_warning())
        # The weights' initialisation, then each epoch's shuffle.
        self.rng = np.random.RandomState(config.seed)
        signals.check()

    def _lock(self):
        config = self.config
        for path, what in ((config.model_prefix, f"--model-prefix {config.model_prefix}"),
                           (config.metrics_file, f"--metrics-file {config.metrics_file}")):
            if path:
                self.locks.append(files.Lock(os.path.realpath(path), what).acquire())

    # The plan: where training starts, never over saved work.

    def _plan(self):
        config, prefix = self.config, self.config.model_prefix
        if not prefix:
            return _Start()
        tags, foreign = checkpoint.listing(prefix), checkpoint.foreign(prefix)
        if config.start_over:
            if foreign:
                raise CheckpointError(
                    f"{prefix} holds MXNet's own checkpoint {Tag(foreign[-1]).stem(prefix)}, "
                    "which --start-over would write over; give another --model-prefix"
                )
            return _Start(remove=tuple(tags), set_aside=tuple(checkpoint.leftovers(prefix)))
        if config.resume:
            interrupted = [tag for tag in tags if tag.interrupted]
            if not interrupted:
                raise CheckpointError(f"no interrupted checkpoint under {prefix}; {self._hint()}")
            tag = interrupted[-1]
        elif config.load_epoch and not self.trains:
            return self._read_start(Tag(config.load_epoch), tags, foreign)
        elif config.load_epoch:
            tag = Tag(config.load_epoch)
            if tag not in tags and config.load_epoch in foreign:
                return self._foreign_start(tag, foreign)
            if tag not in tags:
                raise CheckpointError(f"no checkpoint {tag.stem(prefix)}; {self._hint()}")
        else:
            if tags or checkpoint.leftovers(prefix) or foreign:
                raise CheckpointError(f"{prefix} already holds checkpoints: {self._hint()}, "
                                      "or start over with --start-over")
            return _Start()
        try:
            checkpoint.verify(prefix, tag)
        except CheckpointError as err:
            raise CheckpointError(f"{err}; {self._hint()}") from None
        if config.warm_start:
            return self._foreign_start(tag, foreign, ours=True)
        self.first_epoch = self._first_epoch(tag)
        return self._resume_start(tag, tags, foreign)

    def _first_epoch(self, tag):
        """The first epoch the run that saved tag trained (after a warm start, not 1)."""
        # Checked in full later.
        try:
            state = files.parse_json(
                files.read_bounded(
                    checkpoint.paths(self.config.model_prefix, tag)["state"],
                    checkpoint.MAX_STATE_JSON,
                )
            )
            first = state["first_epoch"]
        except (OSError, ValueError, TypeError, KeyError):
            return 1
        return first if type(first) is int and 1 <= first <= tag.epoch else 1

    def _read_start(self, tag, tags, foreign):
        """The checkpoint that --evaluate, --export-onnx or --predict reads."""
        # This trainer's, or MXNet's own.
        prefix = self.config.model_prefix
        if tag in tags:
            try:
                checkpoint.verify(prefix, tag)
            except CheckpointError as err:
                raise CheckpointError(f"{err}; {self._hint()}") from None
            return _Start(tag)
        if tag.epoch in foreign:
            return _Start(tag, foreign=True)
        raise CheckpointError(f"no checkpoint {tag.stem(prefix)}; {self._hint()}")

    def load_weights(self, params, symbol):
        """The weights of the checkpoint read (--evaluate...), into params."""
        # A line says if it is MXNet's.
        prefix, tag = self.config.model_prefix, self.start.tag
        where = checkpoint.paths(prefix, tag)
        if self.start.foreign:
            self.log(
                f"{tag.stem(prefix)} is MXNet's own checkpoint: its weights alone, checked by "
                "name and shape"
            )
        elif files.read_bounded(where["symbol"], 16 << 20) != symbol.tojson().encode():
            raise CheckpointError(
                f"{where['symbol']} holds another network than this run's --network and "
                "--num-hidden"
            )
        checkpoint.load_weights(where["params"], params)
        self.source = tag.stem(prefix)

    def _resume_start(self, tag, tags, foreign):
        # What lies past the resume point: newer work blocks it; a torn checkpoint or the files of a
        # save cut short are set aside (renamed *.torn, never deleted), since this run will write
        # those names again.
        prefix = self.config.model_prefix
        newer = [t for t in tags if t.order() > tag.order()]
        for later in reversed(newer):
            try:
                checkpoint.verify(prefix, later)
            except CheckpointError:
                continue
            if later.epoch > tag.epoch or not later.interrupted:
                raise CheckpointError(
                    f"{later.stem(prefix)} is newer than {tag.stem(prefix)}, and resuming from "
                    f"the older would write over it; {self._hint()}"
                )
        self._refuse_foreign_ahead(tag.epoch, foreign)
        aside = [path for later in newer for kind, path in checkpoint.paths(prefix, later).items()
                 if kind not in ("symbol", "inference")] + checkpoint.leftovers(prefix)
        return _Start(tag, set_aside=tuple(aside))

    def _foreign_start(self, tag, foreign, ours=False):
        """A warm start from tag's weights; tag is MXNet's own checkpoint unless ours."""
        prefix = self.config.model_prefix
        if not self.config.warm_start:
            raise CheckpointError(
                f"{tag.stem(prefix)} is MXNet's own checkpoint ({tag.stem(prefix)}.params, "
                "without this trainer's state and manifest): it holds no optimizer state or "
                "RNG to resume exactly; --warm-start trains on from its weights, with the "
                "optimizer and the RNG afresh"
            )
        self._refuse_foreign_ahead(tag.epoch, foreign)
        if any(t.epoch > tag.epoch for t in checkpoint.listing(prefix)):
            raise CheckpointError(
                f"{prefix} holds checkpoints after epoch {tag.epoch}, which a warm start "
                f"would write over; {self._hint()}"
            )
        self.first_epoch = tag.epoch + 1
        return _Start(tag, foreign=not ours)

    def _refuse_foreign_ahead(self, epoch, foreign):
        ahead = [e for e in foreign if e > epoch]
        if ahead:
            raise CheckpointError(
                f"{Tag(ahead[0]).stem(self.config.model_prefix)}.params is MXNet's own "
                "checkpoint, which this run would write over; give another --model-prefix"
            )

    def _hint(self):
        """'the newest intact checkpoint is X: resume with <command>', or that there is none."""
        prefix = self.config.model_prefix
        for tag in reversed(checkpoint.listing(prefix)):
            try:
                checkpoint.verify(prefix, tag)
            except CheckpointError:
                continue
            stem, base = tag.stem(prefix), self._saved_config(tag)
            if tag.interrupted:
                again = self.command(base, resume=True)
                return f"the newest intact checkpoint is {stem}: resume with {again}"
            if tag.epoch >= base.num_epochs:
                scored = self.command(base, load_epoch=tag.epoch, evaluate=True)
                return (
                    f"the newest intact checkpoint is {stem}, already at --num-epochs "
                    f"{base.num_epochs}: "
                    f"score it with {scored}, or train on with a larger --num-epochs"
                )
            again = self.command(base, load_epoch=tag.epoch)
            return f"the newest intact checkpoint is {stem}: resume with {again}"
        return f"{prefix} has no intact checkpoint"

    def _saved_config(self, tag):
        """The config a checkpoint was trained with (its resume must use the same)."""
        # As far as it can be read.
        config = self.config
        try:
            state = files.parse_json(
                files.read_bounded(
                    checkpoint.paths(config.model_prefix, tag)["state"], checkpoint.MAX_STATE_JSON
                )
            )
            # What the checkpoint trained with, but where this run finds and puts things.
            places = ("data_dir", "metrics_file", "model_prefix", "plot_dir")
            saved = dict(state["config"], **{name: getattr(config, name) for name in places})
            saved = type(config)(**{key: tuple(value) if isinstance(value, list) else value
                                    for key, value in saved.items()})
        except (OSError, ValueError, TypeError, KeyError):
            saved = config
        return dataclasses.replace(saved, num_epochs=max(saved.num_epochs, config.num_epochs))

    def command(self, config, **changes):
        """The command that runs config with changes, under the job's launcher if it has one."""
        plain = dict(resume=False, load_epoch=0, start_over=False, evaluate=False, warm_start=False)
        launcher = shlex.split(os.environ.get(LAUNCHER_ENV, ""))
        return cli.command_line(
            dataclasses.replace(config, **{**plain, **changes}), self.script, launcher
        )

    # Restoring: the weights, the optimizer, the RNG and the epoch's metrics, from a checkpoint.

    def restore(self, symbols, model, opt, meter):
        """Take over start's checkpoint, if any, into model, opt, run.rng and meter."""
        # Share the weights.
        # symbols: (the network, its inference graph), for the checkpoints.
        if not self.trains:
            raise ConfigError(
                "this config scores, exports or predicts (--evaluate, --export-onnx, --predict): "
                "train() trains; call score(), or main() with these flags"
            )
        self.symbols, self.model, self.opt, self.meter = symbols, model, opt, meter
        tag, prefix = self.start.tag, self.config.model_prefix
        if tag is not None and (self.start.foreign or self.config.warm_start):
            path = checkpoint.paths(prefix, tag)["params"]
            checkpoint.load_weights(path, model.arg_params)
            kind = "MXNet's own checkpoint" if self.start.foreign else "its weights alone"
            self.log(
                f"warm start from {tag.stem(prefix)} ({kind}): the optimizer and the RNG start "
                f"afresh, training epochs {self.first_epoch} to {self.config.num_epochs}"
            )
        elif tag is not None:
            self._resume(tag)
        model.share_weights(from_rank0=True)
        self.sync.init(model.replicas[0].flat_grads)

    def _resume(self, tag):
        prefix, model, opt = self.config.model_prefix, self.model, self.opt
        count = len(opt.new_state(model.arg_params[model.layout.names[0]]))
        values = checkpoint.load(prefix, tag, model.arg_params, self.symbols[0])
        reader = sidecar.Reader(
            checkpoint.paths(prefix, tag)["state"], self.config, tag, model.layout.shapes, count
        )
        state = reader.read(
            values,
            lambda: checkpoint.load_arrays(prefix, tag, self._arrays_limit(count, tag)),
            self.sync.num_workers,
            len(self.contexts),
        )
        opt.num_update = state.num_update
        opt.state = model.optimizer_state(
            {
                name: [a.as_in_context(self.contexts[0]) for a in arrays]
                for name, arrays in state.optimizer.items()
            }
        )
        self.rng.set_state(state.rng)
        self.history, self.first_epoch, self.resumed = state.history, state.first_epoch, state
        if tag.interrupted:
            self.meter.reset(state.samples, [a.as_in_context(ctx) for a, ctx in
                                             zip(state.stats[self.rank], self.contexts)])
            self.skip = tag.batches

    def _arrays_limit(self, count, tag):
        """The most bytes a checkpoint's state arrays take for this configuration."""
        # Refused past it.
        layout, workers, devices_ = self.model.layout, self.sync.num_workers, len(self.contexts)
        stats = 8 * (tag.batches or 0) * workers * devices_
        return (
            4 * layout.size * count
            + stats
            + 256 * (len(layout.names) * count + workers * devices_)
            + 1024
        )

    # The loop.

    def epochs(self, batches):
        """The epochs to train, in order (batches: epoch -> its batch count)."""
        # Inside, a signal waits for the step in progress to end.
        self.batch_counts = batches
        # A signal during start-up whose raise was lost stops the run here, before any training.
        signals.check()
        with signals.deferred() as self.signals:
            for epoch in range(self.first_epoch + len(self.history), self.config.num_epochs + 1):
                self.epoch, self.tic = epoch, time.perf_counter()
                self.epoch_rng = self.rng.get_state()
                yield epoch
                if self.config.dry_run:
                    break
        signals.set_stage(self._after_training())
        # A signal that came as the last epoch ended, after its check: recorded, and honoured here.
        signals.check()

    def batches(self, train_iter):
        """train_iter's batches for this epoch, after those a resumed epoch had done."""
        # Between two batches: the queue kept short, the progress lines, and a signal's save.
        if not self.begun:
            self._check_data(getattr(train_iter, "digests", None))
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
            if self.config.dry_run:
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
            self.begun = True
            self._begin()
        if self._stop_agreed(last):
            raise self._interrupt(self.signals.pending, in_epoch=i + 1)
        disp = self.config.disp_batches
        if self.progress and disp and (i + 1) % disp == 0:
            batches = self.batch_counts.get(self.epoch, 0)
            self.progress(report.progress_figures(meter, self.epoch, i + 1, batches, self.tic))

    def _stop_agreed(self, last):
        """Whether to stop after this step: on a signal here, or one any worker had."""
        # Workers agree through the flag summed with the gradients, read a step late, when that
        # step's sum is done: every worker reads the same sum after the same step, and all stop
        # together.
        if self.sync.num_workers == 1:
            return bool(self.signals.pending)
        self.flags.append(self.model.stop_flag.copy())
        return len(self.flags) > 1 and self.flags.pop(0).asscalar() > 0

    def end_epoch(self, meter, scored):
        """After the epoch's last step and its scoring."""
        # Its record, the metrics file, the checkpoint.
        # The epoch's one host sync: all its work is done after it.
        per_batch = meter.per_batch()
        if not self.begun:
            # A resume after the epoch's last batch has no step of its own to wait for.
            self.begun = True
            self._begin()
        seconds = time.perf_counter() - self.tic
        self._check_finite(per_batch)
        # The stop flag rides with the totals: every worker learns of any worker's signal here too.
        local = np.append(per_batch.sum(axis=0), 1.0 if self.signals.pending else 0.0)
        *totals, stops = self.sync.all_workers(local)
        self.flags = []
        if self.config.dry_run:
            samples = meter.total_samples()[0]
            self.log(
                f"dry run: one step of {samples} samples over {len(self.contexts)} device(s) and "
                f"{self.sync.num_workers} worker(s), loss {totals[1] / samples:.4f}; the test set "
                f"scored {scored['acc']:.4f}; nothing saved"
            )
            return
        self.history.append(
            report.record(self.epoch, totals, meter.total_samples(), scored,
                          (seconds, self.train_seconds))
        )
        if self.rank == 0:
            # The checkpoint first: the metrics file's position at its save tells a resume what to
            # write.
            self._save_epoch()
            if self.metrics:
                self.metrics.append(self.history[-1])
            self.log(report.epoch_line(self.history[-1]))
        meter.reset()
        # One process also stops for a signal that came while it scored or saved; workers only for
        # the one they agreed on, in the sum, lest one stop without the others.
        if stops or (self.sync.num_workers == 1 and self.signals.pending):
            raise self._interrupt(self.signals.pending)

    def finish(self, scored):
        """After the last epoch."""
        # The pictures from scored, (probabilities, labels, images), and the final line.
        folder = report.pictures_folder(self.config)
        if self.config.dry_run:
            return
        if self.rank == 0 and folder and scored is not None:
            self.log(
                report.save_pictures(folder, self.history, scored, DATASETS[self.config.dataset])
            )
        last = self.history[-1] if self.history else None
        if last:
            self.log(f"final test accuracy {last['test_acc']:.4f} after {len(self.history)} epochs")
        signals.set_stage(self._after_training(ended=True))

    def wants_pictures(self):
        """Whether finish() draws pictures."""
        # So that the test set's predictions are worth collecting.
        return (
            self.rank == 0 and bool(report.pictures_folder(self.config)) and not self.config.dry_run
        )

    # Saving.

    def _begin(self):
        """After the first step: what --start-over deletes goes, and what lies torn is set aside."""
        if self.config.dry_run:
            return
        prefix = self.config.model_prefix
        for tag in self.start.remove:
            checkpoint.remove(prefix, tag)
        if self.start.remove:
            self.log(f"started over: removed {len(self.start.remove)} checkpoint(s) under {prefix}")
        aside = [files.set_aside(path) for path in self.start.set_aside if os.path.exists(path)]
        if aside:
            self.log(f"set aside {len(aside)} file(s) of torn checkpoints as *.torn")
        self._resume_metrics()

    def _resume_metrics(self):
        """Make the metrics file hold the resumed checkpoint's records once."""
        # As that checkpoint left it.
        state = self.resumed
        if self.metrics and state is not None and state.metrics is not None:
            line = self.metrics.resume(state.metrics, self.history)
            if line:
                self.log(line)
        elif self.metrics:
            self.metrics.at["records"] = len(self.history)

    def _state(self, rng_state, in_epoch):
        opt, meter = self.opt, self.meter
        state = sidecar.State(
            config=dataclasses.asdict(self.config),
            history=list(self.history),
            rng=rng_state,
            num_update=opt.num_update,
            optimizer=self.model.saved_state(opt.state),
            first_epoch=self.first_epoch,
            data=self.digests,
            metrics=dict(self.metrics.at) if self.metrics else None,
        )
        if in_epoch:
            state.samples = meter.samples[:in_epoch]
        return state

    def _gathered_stats(self, batches):
        """Every worker's per-device metrics of the epoch's first batches, [worker][device]."""
        mine = mx.nd.stack(*[mx.nd.stack(*slots[:batches]) for slots in self.meter.stats])
        every = self.sync.gather(mine.as_in_context(mx.cpu()))
        return [[every[w][d] for d in range(every.shape[1])] for w in range(every.shape[0])]

    def _save(self, tag, state):
        values, arrays = sidecar.encode(state)
        checkpoint.save(
            self.config.model_prefix, tag, self.symbols, self.model.arg_params, values, arrays
        )
        self._retire_interrupted(tag)

    def _save_epoch(self):
        """After an epoch: its checkpoint, if the save period says so."""
        epoch, config = self.epoch, self.config
        if config.model_prefix and not (epoch % config.save_period and epoch != config.num_epochs):
            self._save(Tag(epoch), self._state(self.rng.get_state(), None))

    def _interrupt(self, signum, in_epoch=None):
        """Save the state after the last completed step; return the Interrupted to raise."""
        # in_epoch: the batches done of the current epoch, or None between epochs.
        config, epoch = self.config, self.epoch
        cause = signals.name(signum) if signum else "a signal to another worker"
        where = f"in epoch {epoch} after batch {in_epoch}" if in_epoch else f"after epoch {epoch}"
        stopped = f"stopped by {cause} {where}"
        # With workers, every worker takes part in gathering the epoch's metrics; rank 0 alone
        # saves, and alone says so: the job ends with one line.
        stats = self._gathered_stats(in_epoch) if in_epoch else None
        if self.rank > 0:
            return Interrupted(stopped, signum, quiet=True)
        if not config.model_prefix:
            return Interrupted(f"{stopped}; nothing saved, since --model-prefix is not set", signum)
        self.model.arg_params[self.model.layout.names[0]].wait_to_read()
        tag = Tag(epoch, in_epoch) if in_epoch else Tag(epoch)
        if tag not in checkpoint.listing(config.model_prefix):
            state = self._state(self.epoch_rng if in_epoch else self.rng.get_state(), in_epoch)
            state.stats = stats
            self._save(tag, state)
        stem = tag.stem(config.model_prefix)
        if not in_epoch and epoch >= config.num_epochs:
            return Interrupted(
                f"{stopped}, the last; saved {stem}: nothing is left to train", signum
            )
        base = self._saved_config(tag)
        again = (
            self.command(base, resume=True) if in_epoch else self.command(base, load_epoch=epoch)
        )
        return Interrupted(f"{stopped}; saved {stem}. Resume with: {again}", signum)

    def _retire_interrupted(self, newest):
        """An interrupted checkpoint is used once."""
        # Remove those that the newest checkpoint supersedes.
        prefix = self.config.model_prefix
        for tag in checkpoint.listing(prefix):
            if tag.interrupted and tag.order() < newest.order():
                checkpoint.remove(prefix, tag)

    def _after_training(self, ended=False):
        when = (
            "after the run ended" if ended else f"after the last epoch ({self.config.num_epochs})"
        )
        if self.config.model_prefix:
            return f"{when}; {Tag(self.config.num_epochs).stem(self.config.model_prefix)} is saved"
        return f"{when}; nothing was to be saved"

    # Checks.

    def _check_data(self, digests):
        """Refuse to go on with an epoch begun on other data."""
        # Its order of batches would not be the same.
        self.digests = digests
        state = self.resumed
        if self.start.tag is None or not self.start.tag.interrupted or state is None:
            return
        if state.data != digests:
            changed = [
                name for name in FILES if (state.data or {}).get(name) != (digests or {}).get(name)
            ]
            stem = self.start.tag.stem(self.config.model_prefix)
            raise CheckpointError(
                f"{stem} was saved mid-epoch on other data ({', '.join(changed) or 'the files'} "
                f"differ): a mid-epoch resume needs the same files; resume from an epoch "
                f"checkpoint with --load-epoch instead"
            )

    def _check_finite(self, per_batch):
        """Raise Diverged naming the first batch whose loss is not finite, or the parameters."""
        # And the likely flag.
        config, epoch = self.config, self.epoch
        bad = np.flatnonzero(~np.isfinite(per_batch[:, 1]))
        if not len(bad) and np.isfinite(self.model.replicas[0].flat_params.sum().asscalar()):
            return
        where = f"non-finite loss in epoch {epoch}, batch {bad[0] + 1}" if len(bad) else \
            f"non-finite parameters after epoch {epoch}"
        # SGD's weight decay multiplies each weight by 1 - lr * wd per step: past 2, the weights
        # grow every step.
        if config.wd and config.lr * config.wd >= 1:
            product = config.lr * config.wd
            cause = f"--wd {config.wd} is too large for --lr {config.lr} (lr * wd = {product:g})"
        else:
            cause = f"try a smaller --lr than {config.lr:g}" + (
                " or a --clip-gradient" if not config.clip_gradient else ""
            )
        raise Diverged(
            f"training diverged: {where}; {cause}. Checkpoints already saved are untouched"
        )


# Outputs: every one checked, and checked against every other, before anything is built.

def check_outputs(config):
    """Refuse an output path that cannot be written."""
    # Or that is another output or an input of the run.
    _check_collisions(config)
    if config.metrics_file:
        files.check_file(config.metrics_file, "--metrics-file", ".lock")
        head = _first_byte(config.metrics_file)
        if head not in (b"", b"{"):
            raise OutputError(
                f"--metrics-file {config.metrics_file} holds something else than JSON lines "
                f"(it starts with {head!r}); give a new file or a metrics file"
            )
    if config.model_prefix:
        if config.model_prefix.endswith(os.sep) or os.path.isdir(config.model_prefix):
            raise OutputError(
                f"--model-prefix {config.model_prefix} is a folder; give a path and a name "
                "in it, such as runs/mlp"
            )
        files.check_file(config.model_prefix, "--model-prefix", checkpoint.longest_suffix())
    folder = report.pictures_folder(config)
    if folder:
        files.check_folder(folder, "--plot-dir" if config.plot_dir else "--model-prefix's pictures")


def _first_byte(path):
    try:
        with open(path, "rb") as f:
            return f.read(1)
    except FileNotFoundError:
        return b""
    except OSError as err:
        raise OutputError(f"cannot read {path}: {err.strerror}") from None


def _check_collisions(config):
    """Refuse two outputs of the run on one file, or an output on a file of its data."""
    from harness import plots
    named = []
    if config.metrics_file:
        named += [
            ("--metrics-file", config.metrics_file),
            ("--metrics-file's lock", config.metrics_file + ".lock"),
        ]
    folder = report.pictures_folder(config)
    if folder:
        named += [
            ("a picture", os.path.join(folder, name))
            for name in (plots.CURVES, plots.CONFUSION, plots.MISTAKES)
        ]
    if config.model_prefix:
        named += [("--model-prefix's lock", config.model_prefix + ".lock")]
    inputs = [os.path.join(config.data_dir, name + ext) for name in FILES for ext in ("", ".gz")] \
        if config.data_dir else []
    for i, (what, path) in enumerate(named):
        if (
            config.model_prefix
            and _is_checkpoint_file(path, config.model_prefix)
            and "lock" not in what
        ):
            raise OutputError(f"{what} {path} is a file of the checkpoints under --model-prefix "
                              f"{config.model_prefix}; give another path")
        for other_what, other in named[i + 1:]:
            if files.same_file(path, other):
                raise OutputError(
                    f"{what} {path} is the same file as {other_what} {other}; give another path"
                )
        for data in inputs:
            if files.same_file(path, data):
                raise OutputError(f"{what} {path} is a data file of --data-dir; give another path")


def _is_checkpoint_file(path, prefix):
    """Whether path, through links, is (or would be) a file of prefix's checkpoints."""
    folder, base = os.path.split(os.path.realpath(prefix))
    target = os.path.realpath(path)
    if os.path.dirname(target) == folder and re.fullmatch(
        re.escape(base)
        + r"-(symbol\.json|inference-symbol\.json|(\d{4,}|interrupted-\d{4,}-\d{6,})"
        r"\.(params|state\.json|state\.nd|manifest\.json))",
        os.path.basename(target),
    ):
        return True
    return (
        any(
            files.same_file(path, os.path.join(folder, name))
            for name in os.listdir(folder)
            if name.startswith(base + "-")
        )
        if os.path.isdir(folder)
        else False
    )

