"""The plan: where a run starts and what it is for, decided once from its config and the disk.

The flags stay as MXNet's users know them: --load-epoch, --resume, --start-over and --warm-start
say where to start; --evaluate, --export-onnx, --predict and --dry-run what to do. make() resolves
them, against the checkpoints the prefix holds, into one start (fresh, epoch, interrupted, warm)
and one mode (train, evaluate, export, predict, dry_run), or refuses in one line that names the
newest intact checkpoint and the command that goes on from it. It never writes over saved work: a
fresh run stops on a prefix that holds checkpoints, a resume on newer ones. What it defers to the
first step (the removals of --start-over, the set-asides of torn checkpoints) it lists.

make() is a pure function of the config and a Disk, the snapshot of what a prefix holds, which
reads the checkpoints as it is asked (their manifests, their states) and never loads MXNet.
"""
import dataclasses
import os
import shlex

from harness import checkpoint
from harness.checkpoint import Tag
from harness.errors import CheckpointError

# The flag that asks for each mode but training; at most one is set (checks.py).
MODE_FLAGS = {"evaluate": "evaluate", "export_onnx": "export", "predict": "predict",
              "dry_run": "dry_run"}
MODES = ("train", *MODE_FLAGS.values())
STARTS = ("fresh", "epoch", "interrupted", "warm")
# Set by harness.launch: the launcher's own words, which a command that resumes must start with.
LAUNCHER_ENV = "HARNESS_LAUNCHER"
# The modes that only read a checkpoint.
READS = ("evaluate", "export", "predict")
# The flags of the checkpoint's own config that a command going on from it resets.
_PLAIN = dict(resume=False, load_epoch=0, start_over=False, warm_start=False, evaluate=False,
              export_onnx="", predict=(), dry_run=False)
# What a command made from a checkpoint's config takes from this run: where things are.
_PLACES = ("data_dir", "metrics_file", "model_prefix", "plot_dir")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run is for (mode) and where it starts (start), with what that takes.

    tag: the checkpoint it resumes, warm-starts from or reads (None for a fresh start); foreign:
    that checkpoint is MXNet's own, weights alone; first_epoch: the first epoch of the schedule
    (after a warm start, the one after its checkpoint); remove: with --start-over, the checkpoints
    to delete once the first step has run; set_aside: the files of torn checkpoints past the resume
    point, to rename *.torn then.
    """

    mode: str
    start: str = "fresh"
    tag: object = None
    foreign: bool = False
    first_epoch: int = 1
    remove: tuple = ()
    set_aside: tuple = ()

    def __post_init__(self):
        if self.mode not in MODES or self.start not in STARTS:
            raise ValueError(f"no plan has mode {self.mode!r} and start {self.start!r}")

    @property
    def trains(self):
        """Whether the run trains (a dry run takes one step)."""
        return self.mode in ("train", "dry_run")

    @property
    def saves(self):
        """Whether the run writes its checkpoints, metrics and pictures."""
        return self.mode == "train"


def asked(config):
    """The mode flags config sets, in MODE_FLAGS' order."""
    return [name for name in MODE_FLAGS if getattr(config, name)]


def mode_of(config):
    """What config asks the run to do: one of MODES."""
    names = asked(config)
    return MODE_FLAGS[names[0]] if names else "train"


def launcher():
    """The words of the launcher a job's commands start with: none outside harness.launch."""
    return shlex.split(os.environ.get(LAUNCHER_ENV, ""))


class Disk:
    """What a checkpoint prefix holds, as one plan sees it; each file is read once, when asked."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.tags = checkpoint.listing(prefix) if prefix else []
        self.foreign = checkpoint.foreign(prefix) if prefix else []
        self.leftovers = checkpoint.leftovers(prefix) if prefix else []
        self._problems, self._states = {}, {}

    def problem(self, tag):
        """Why tag cannot be loaded (its manifest, its files), or None if it is intact."""
        if tag not in self._problems:
            try:
                checkpoint.verify(self.prefix, tag)
                self._problems[tag] = None
            except CheckpointError as err:
                self._problems[tag] = str(err)
        return self._problems[tag]

    def state(self, tag):
        """tag's state's JSON values; CheckpointError if they cannot be read."""
        if tag not in self._states:
            try:
                self._states[tag] = checkpoint.read_state(self.prefix, tag)
            except CheckpointError as err:
                self._states[tag] = err
        if isinstance(self._states[tag], CheckpointError):
            raise self._states[tag]
        return self._states[tag]


def make(config, disk, script="train_mnist.py", launcher=()):
    """The Plan of config on disk; CheckpointError, naming the way on, where the run cannot start.

    script and launcher: the words of the commands the refusals print.
    """
    mode, advice = mode_of(config), Advice(config, disk, script, launcher)
    if not config.model_prefix:
        return Plan(mode)
    if mode in READS:
        return _read(config, disk, advice, mode)
    if config.start_over:
        return _start_over(config, disk, mode)
    if config.resume:
        tag = next((tag for tag in reversed(disk.tags)
                    if tag.interrupted and not disk.problem(tag)), None)
        if tag is None:
            raise CheckpointError(
                f"no intact interrupted checkpoint under {config.model_prefix}; {advice.hint()}"
            )
        return _resume(config, disk, advice, mode, tag)
    if config.load_epoch:
        return _load(config, disk, advice, mode)
    if disk.tags or disk.leftovers or disk.foreign:
        raise CheckpointError(f"{config.model_prefix} already holds checkpoints: "
                              f"{advice.hint()}, or start over with --start-over")
    return Plan(mode)


def _read(config, disk, advice, mode):
    """The plan of --evaluate, --export-onnx or --predict: the checkpoint read, ours or MXNet's."""
    tag, prefix = Tag(config.load_epoch), config.model_prefix
    if tag in disk.tags:
        advice.check_intact(tag)
        return Plan(mode, "epoch", tag)
    if tag.epoch in disk.foreign:
        return Plan(mode, "epoch", tag, foreign=True)
    raise CheckpointError(f"no checkpoint {tag.stem(prefix)}; {advice.hint()}")


def _start_over(config, disk, mode):
    """Epoch 1, with every checkpoint to remove and every leftover to set aside after a step."""
    if disk.foreign:
        stem = Tag(disk.foreign[-1]).stem(config.model_prefix)
        raise CheckpointError(
            f"{config.model_prefix} holds MXNet's own checkpoint {stem}, which --start-over would "
            "write over; give another --model-prefix"
        )
    return Plan(mode, remove=tuple(disk.tags), set_aside=tuple(disk.leftovers))


def _load(config, disk, advice, mode):
    """--load-epoch: a resume from that epoch's checkpoint, or a warm start from its weights."""
    tag, prefix = Tag(config.load_epoch), config.model_prefix
    if tag not in disk.tags and tag.epoch in disk.foreign:
        if not config.warm_start:
            raise CheckpointError(
                f"{tag.stem(prefix)} is MXNet's own checkpoint ({tag.stem(prefix)}.params, "
                "without this trainer's state and manifest): it holds no optimizer state or "
                "RNG to resume exactly; --warm-start trains on from its weights, with the "
                "optimizer and the RNG afresh"
            )
        return _warm(config, disk, advice, mode, tag)
    if tag not in disk.tags:
        raise CheckpointError(f"no checkpoint {tag.stem(prefix)}; {advice.hint()}")
    advice.check_intact(tag)
    if config.warm_start:
        return _warm(config, disk, advice, mode, tag)
    return _resume(config, disk, advice, mode, tag)


def _warm(config, disk, advice, mode, tag):
    """A warm start from tag's weights: the epochs after it, the optimizer and the RNG afresh."""
    _refuse_foreign_ahead(config, disk, tag.epoch)
    if any(t.epoch > tag.epoch for t in disk.tags):
        raise CheckpointError(
            f"{config.model_prefix} holds checkpoints after epoch {tag.epoch}, which a warm start "
            f"would write over; {advice.hint()}"
        )
    foreign = tag not in disk.tags
    return Plan(mode, "warm", tag, foreign=foreign, first_epoch=tag.epoch + 1)


def _resume(config, disk, advice, mode, tag):
    """A resume from tag, never over newer intact work; what lies torn past it is set aside.

    The files of a torn checkpoint past tag, or of a save cut short, are renamed *.torn once the
    first step has run (never deleted), since this run will write those names again.
    """
    prefix = config.model_prefix
    newer = [t for t in disk.tags if t.order() > tag.order()]
    for later in newer:
        if not disk.problem(later):
            raise CheckpointError(
                f"{later.stem(prefix)} is newer than {tag.stem(prefix)}, and resuming from "
                f"the older would write over it; {advice.hint()}"
            )
    _refuse_foreign_ahead(config, disk, tag.epoch)
    aside = [path for later in newer for kind, path in checkpoint.paths(prefix, later).items()
             if kind not in ("symbol", "inference")] + disk.leftovers
    start = "interrupted" if tag.interrupted else "epoch"
    return Plan(mode, start, tag, first_epoch=_first_epoch(disk, tag), set_aside=tuple(aside))


def _first_epoch(disk, tag):
    """The first epoch the run that saved tag trained (after a warm start, not 1).

    Read leniently: the state is checked in full when it is restored.
    """
    try:
        first = disk.state(tag)["first_epoch"]
    except (CheckpointError, TypeError, KeyError):
        return 1
    return first if type(first) is int and 1 <= first <= tag.epoch else 1


def _refuse_foreign_ahead(config, disk, epoch):
    """Refuse a start that would write over a later checkpoint of MXNet's own."""
    ahead = [e for e in disk.foreign if e > epoch]
    if ahead:
        raise CheckpointError(
            f"{Tag(ahead[0]).stem(config.model_prefix)}.params is MXNet's own "
            "checkpoint, which this run would write over; give another --model-prefix"
        )


class Advice:
    """The way on from a prefix's checkpoints: the newest intact one, and the command that goes on.

    script and launcher: the trainer's path and the launcher's words a command starts with.
    """

    def __init__(self, config, disk, script="train_mnist.py", launcher=()):
        self.config, self.disk, self.script, self.launcher = config, disk, script, launcher

    def check_intact(self, tag):
        """Raise CheckpointError if tag is torn, with the way on from the newest intact one."""
        problem = self.disk.problem(tag)
        if problem:
            raise CheckpointError(f"{problem}; {self.hint()}")

    def hint(self):
        """'the newest intact checkpoint is X: resume with <command>', or that there is none."""
        prefix = self.config.model_prefix
        tag = next((tag for tag in reversed(self.disk.tags) if not self.disk.problem(tag)), None)
        if tag is None:
            return f"{prefix} has no intact checkpoint"
        stem, base = tag.stem(prefix), self.saved_config(tag)
        if tag.interrupted:
            return f"the newest intact checkpoint is {stem}: resume with " + self.command(
                base, resume=True)
        if tag.epoch >= base.num_epochs:
            scored = self.command(base, load_epoch=tag.epoch, evaluate=True)
            return (f"the newest intact checkpoint is {stem}, already at --num-epochs "
                    f"{base.num_epochs}: score it with {scored}, or train on with a larger "
                    "--num-epochs")
        again = self.command(base, load_epoch=tag.epoch)
        return f"the newest intact checkpoint is {stem}: resume with {again}"

    def saved_config(self, tag):
        """The config tag was trained with, as far as it can be read, in this run's places.

        A resume must train as the checkpoint did; its data, outputs and prefix are where this run
        finds and puts them, and its --num-epochs the larger of the two.
        """
        config = self.config
        try:
            values = self.disk.state(tag)["config"]
            saved = dict(values, **{name: getattr(config, name) for name in _PLACES})
            saved = type(config)(**{key: tuple(value) if isinstance(value, list) else value
                                    for key, value in saved.items()})
        except (CheckpointError, ValueError, TypeError, KeyError):
            saved = config
        return dataclasses.replace(saved, num_epochs=max(saved.num_epochs, config.num_epochs))

    def command(self, config, **changes):
        """The command that runs config with changes (its mode flags reset), under the launcher."""
        from harness import cli
        plain = dataclasses.replace(config, **{**_PLAIN, **changes})
        return cli.command_line(plain, self.script, self.launcher)
