"""Every config value, and every environment variable MXNet reads, checked once, up front.

Imports nothing heavy, so that main() can check the flags before MXNet loads. What passes here,
the other modules trust: an enum of Config (a Literal) is checked here alone.
"""
import dataclasses
import math
import os
import re
import typing

from harness import plan
from harness.datasets import DATASETS
from harness.errors import ConfigError

MAX_CONTEXTS = 64
# Checkpoint names carry the epoch in four digits.
MAX_EPOCHS = 9999
# Per hidden layer; what fits in memory is estimated once the data is known.
MAX_WIDTH = 1 << 16
MAX_LAYERS = 16
MAX_BATCH = 1_000_000
_FLOAT32_NORMAL = (1.1754944e-38, 3.4028235e38)
_PATHS = ("data_dir", "metrics_file", "model_prefix", "plot_dir", "export_onnx")
def check_config(config, networks, optimizers):
    """Raise ConfigError naming the flag of the first value that cannot work.

    networks and optimizers: the registries of network.py and optimizer.py, by name. A list given
    from Python for a tuple field becomes that tuple.
    """
    for name, kind in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if typing.get_origin(kind) is tuple and isinstance(value, list):
            # A frozen dataclass's own value, made the type it declares: any sequence reads as a
            # tuple.
            object.__setattr__(config, name, tuple(value))
        value = getattr(config, name)
        if not (value is None and _default(config, name) is None or _has_type(value, kind)):
            raise ConfigError(f"{flag(name)} must be {_type_name(kind)}, got {value!r}")
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        if choices and value not in choices:
            raise ConfigError(f"{flag(name)} must be one of {', '.join(choices)}, got {value!r}")
    problems = (_path_problems(config), _value_problems(config, networks, optimizers),
                _schedule_problems(config), _start_problems(config))
    for group in problems:
        for failed, message in group:
            if failed:
                raise ConfigError(message)


def check_environment(environ=None, cores=None):
    """Refuse what MXNet, OpenMP or matplotlib would choke on in the environment; quiet the rest.

    Before MXNet loads: raise ConfigError naming the first variable that would crash MXNet, give a
    traceback or print on stderr; then make quiet what the trainer does not depend on
    (harness/environment.py). environ is os.environ by default; cores, this process's CPUs.
    """
    from harness import environment
    environ = os.environ if environ is None else environ
    environment.check(environ, cores or len(os.sched_getaffinity(0)))
    environment.settle(environ)


def check_batch(batch_size, num_samples, num_parts):
    """Raise ConfigError unless every device of every worker gets a sample of every batch."""
    if batch_size > num_samples:
        raise ConfigError(
            f"--batch-size {batch_size} is larger than the {num_samples} training samples"
        )
    tail = num_samples % batch_size
    if batch_size < num_parts or 0 < tail < num_parts:
        raise ConfigError(
            f"--batch-size {batch_size} leaves a batch of {min(batch_size, tail or batch_size)} "
            f"samples for {num_parts} devices in all; every device needs at least one"
        )


def resolved(config, optimizers, **changes):
    """config with its derived defaults filled in, and changes.

    The learning rate becomes the optimizer's own if not given, and --lr-step-epochs without a
    schedule means the step schedule, as in MXNet's fit.py.
    """
    if config.lr is None:
        changes.setdefault("lr", optimizers[config.optimizer].default_learning_rate)
    if config.lr_step_epochs and config.lr_scheduler == "none":
        changes.setdefault("lr_scheduler", "step")
    return dataclasses.replace(config, **changes)


def flag(name):
    """The command-line flag of a config field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def _has_type(value, kind):
    """Whether value is of the field type kind, which Config(...) from Python may not give it.

    bool is no int here.
    """
    if typing.get_origin(kind) is typing.Literal:
        # Its choices are checked next, with their own message.
        return True
    if typing.get_origin(kind) is tuple:
        return isinstance(value, tuple) and all(
            _has_type(item, typing.get_args(kind)[0]) for item in value
        )
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (int, str, bool):
        return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    raise TypeError(f"Config has a field of a type that checks.py does not know: {kind}")


def _type_name(kind):
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return "a sequence of integers" if item is int else "a sequence of strings"
    return {float: "a number", int: "an integer", str: "a string", bool: "True or False"}[kind]


def _default(config, name):
    return next(field.default for field in dataclasses.fields(config) if field.name == name)


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _typed(widths):
    return ",".join(map(str, widths)) or "nothing"


def _path_problems(c):
    for name in _PATHS:
        value = getattr(c, name)
        yield (re.search(r"[\x00-\x1f\x7f]", value) is not None,
               f"{flag(name)} holds a control character (a newline?): {value!r}")
        yield not _encodable(value), f"{flag(name)} holds bytes that are not UTF-8: {ascii(value)}"
    for path in c.predict:
        yield not _encodable(path) or "\0" in path, f"--predict {ascii(path)} is not a file name"


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _value_problems(c, networks, optimizers):
    """(failed, message) pairs of each value alone, in the order the flags are usually read."""
    cores = len(os.sched_getaffinity(0))
    yield (
        c.dataset not in DATASETS,
        f"--dataset must be one of {', '.join(DATASETS)}, got {c.dataset!r}",
    )
    yield (
        not re.fullmatch(r"(\d+(,\d+)*)?", c.gpus),
        f"--gpus must be GPU ids such as 0 or 0,1, got {c.gpus!r}",
    )
    yield not 0 <= c.cpus <= MAX_CONTEXTS, f"--cpus must be in 0..{MAX_CONTEXTS}, got {c.cpus}"
    yield bool(c.cpus and c.gpus), "--cpus and --gpus exclude each other"
    yield not (c.threads == "auto" or c.threads.isascii() and c.threads.isdigit()
               and 1 <= int(c.threads) <= cores), \
        f"--threads must be auto or a count in 1..{cores} ({cores} cores here), got {c.threads!r}"
    yield (
        c.network not in networks,
        f"--network must be one of {', '.join(networks)}, got {c.network!r}",
    )
    yield (
        not (
            1 <= len(c.num_hidden) <= MAX_LAYERS and all(1 <= w <= MAX_WIDTH for w in c.num_hidden)
        ),
        f"--num-hidden must be 1 to {MAX_LAYERS} widths in 1..{MAX_WIDTH} such as 128,64, got "
        f"{_typed(c.num_hidden)}",
    )
    yield c.network != "mlp" and c.num_hidden != _default(c, "num_hidden"), \
        f"--num-hidden sets the MLP's widths; {c.network} has its own"
    yield (
        not 1 <= c.batch_size <= MAX_BATCH,
        f"--batch-size must be in 1..{MAX_BATCH}, got {c.batch_size}",
    )
    yield (
        not 1 <= c.num_epochs <= MAX_EPOCHS,
        f"--num-epochs must be in 1..{MAX_EPOCHS}, got {c.num_epochs}",
    )
    yield c.optimizer not in optimizers, \
        f"--optimizer must be one of {', '.join(sorted(optimizers))}, got {c.optimizer!r}"
    yield not (c.lr is None or _finite(c.lr) and c.lr > 0), f"--lr must be a number > 0, got {c.lr}"
    scale = (c.lr or 0.1) / c.batch_size
    yield c.lr is not None and not _FLOAT32_NORMAL[0] <= scale <= _FLOAT32_NORMAL[1], \
        f"--lr {c.lr} over --batch-size {c.batch_size} is {scale:g}, outside float32's normal range"
    yield not (_finite(c.mom) and 0 <= c.mom < 1), f"--mom must be in [0, 1), got {c.mom}"
    yield (
        c.optimizer == "adam" and c.mom > 0,
        "--mom does not apply to adam, which keeps its own moments",
    )
    yield not (_finite(c.wd) and c.wd >= 0), f"--wd must be a number >= 0, got {c.wd}"
    yield not (_finite(c.clip_gradient) and c.clip_gradient >= 0), \
        f"--clip-gradient must be a number >= 0 (0: no clipping), got {c.clip_gradient}"
    yield not 0 <= c.seed < 2 ** 32, f"--seed must be in 0..{2 ** 32 - 1}, got {c.seed}"
    yield c.disp_batches < 0, f"--disp-batches must be >= 0, got {c.disp_batches}"


def _schedule_problems(c):
    """(failed, message) pairs of the learning-rate schedule's flags.

    A step lowers the rate after its epoch, for the epochs that follow: it must lie before the last
    epoch, and a single epoch leaves none to step.
    """
    yield (
        c.lr_scheduler == "step" and not c.lr_step_epochs,
        "--lr-scheduler step needs --lr-step-epochs",
    )
    yield c.lr_scheduler == "cosine" and bool(c.lr_step_epochs), \
        "--lr-step-epochs sets the step schedule's epochs; the cosine schedule takes none"
    yield bool(c.lr_step_epochs) and c.num_epochs == 1, (
        f"--lr-step-epochs {_typed(c.lr_step_epochs)}: a step lowers the rate for the epochs after "
        "it, and --num-epochs 1 leaves none; give more epochs, or no --lr-step-epochs"
    )
    yield (
        not all(1 <= e < c.num_epochs for e in c.lr_step_epochs),
        f"--lr-step-epochs must lie in 1..{c.num_epochs - 1} (a step lowers the rate for the "
        f"epochs after it, up to --num-epochs {c.num_epochs}), got {_typed(c.lr_step_epochs)}",
    )
    yield (
        not (_finite(c.lr_factor) and 0 < c.lr_factor <= 1),
        f"--lr-factor must be in (0, 1], got {c.lr_factor}",
    )


def _start_problems(c):
    """(failed, message) pairs of where the run starts and what it is for.

    These flags exclude or need each other; the plan (harness/plan.py) resolves the ones that pass.
    """
    yield (
        not 1 <= c.save_period <= MAX_EPOCHS,
        f"--save-period must be in 1..{MAX_EPOCHS}, got {c.save_period}",
    )
    yield (
        not 0 <= c.load_epoch <= MAX_EPOCHS,
        f"--load-epoch must be in 0..{MAX_EPOCHS}, got {c.load_epoch}",
    )
    yield c.load_epoch > 0 and not c.model_prefix, "--load-epoch needs --model-prefix"
    yield c.resume and not c.model_prefix, "--resume needs --model-prefix"
    yield c.start_over and not c.model_prefix, "--start-over needs --model-prefix"
    yield sum(map(bool, (c.resume, c.load_epoch, c.start_over))) > 1, \
        "--resume, --load-epoch and --start-over exclude each other"
    yield c.warm_start and not c.load_epoch, "--warm-start needs --load-epoch (and --model-prefix)"
    uses = plan.asked(c)
    yield len(uses) > 1, f"{' and '.join(map(flag, uses))} exclude each other"
    reads = [name for name in uses if plan.MODE_FLAGS[name] in plan.READS]
    yield (
        bool(uses) and c.warm_start,
        f"--warm-start trains; {flag(uses[0]) if uses else ''} does not",
    )
    for name in reads:
        yield not c.load_epoch, f"{flag(name)} needs --load-epoch (and --model-prefix): the " \
            "checkpoint to use"
    yield c.load_epoch >= c.num_epochs and not uses, \
        f"--load-epoch {c.load_epoch} leaves nothing to train with --num-epochs {c.num_epochs}"
