"""Every config value checked against what the trainer and MXNet accept, before anything is built.

Imports nothing heavy, so that main() can check the flags before MXNet loads.
"""
import dataclasses
import math
import re
import typing

from errors import ConfigError
from network import NETWORKS
from optimizer import OPTIMIZERS

MAX_CONTEXTS = 64
MAX_EPOCHS = 9999        # checkpoint names carry the epoch in four digits
MAX_WIDTH = 1 << 16      # per hidden layer; what fits in memory is estimated once the data is known
MAX_LAYERS = 16
MAX_THREADS = 1024
_FLOAT32_NORMAL = (1.1754944e-38, 3.4028235e38)


def check_config(config):
    """Raise ConfigError naming the flag of the first value that cannot work."""
    for name, kind in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if not (value is None and _default(config, name) is None or _has_type(value, kind)):
            raise ConfigError(f"{_flag(name)} must be {_type_name(kind)}, got {value!r}")
        choices = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
        if choices and value not in choices:
            raise ConfigError(f"{_flag(name)} must be one of {', '.join(choices)}, got {value!r}")
    for failed, message in _problems(config):
        if failed:
            raise ConfigError(message)


def _has_type(value, kind):
    """Whether value is of the field type kind, as Config(...) from Python may not give it (bool is no int)."""
    if typing.get_origin(kind) is typing.Literal:
        return True  # its choices are checked next, with their own message
    if typing.get_origin(kind) is tuple:
        return isinstance(value, tuple) and all(_has_type(item, typing.get_args(kind)[0]) for item in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (int, str, bool):
        return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    raise TypeError(f"Config has a field of a type that checks.py does not know: {kind}")


def _type_name(kind):
    if typing.get_origin(kind) is tuple:
        return "a tuple of integers"
    return {float: "a number", int: "an integer", str: "a string", bool: "True or False"}[kind]


def _flag(name):
    return "--" + name.replace("_", "-")


def _default(config, name):
    return next(field.default for field in dataclasses.fields(config) if field.name == name)


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def _problems(c):
    """(failed, message) pairs, in the order the flags are usually read."""
    paths = [name for name in ("data_dir", "metrics_file", "model_prefix", "plot_dir") if getattr(c, name)]
    yield from ((re.search(r"[\x00-\x1f\x7f]", getattr(c, name)) is not None,
                 f"{_flag(name)} holds a control character (a newline?): {getattr(c, name)!r}") for name in paths)
    yield not re.fullmatch(r"(\d+(,\d+)*)?", c.gpus), f"--gpus must be GPU ids such as 0 or 0,1, got {c.gpus!r}"
    yield not 0 <= c.cpus <= MAX_CONTEXTS, f"--cpus must be in 0..{MAX_CONTEXTS}, got {c.cpus}"
    yield bool(c.cpus and c.gpus), "--cpus and --gpus exclude each other"
    yield not (c.threads == "auto" or c.threads.isdigit() and 1 <= int(c.threads) <= MAX_THREADS), \
        f"--threads must be auto or a count in 1..{MAX_THREADS}, got {c.threads!r}"
    yield c.network not in NETWORKS, f"--network must be one of {', '.join(NETWORKS)}, got {c.network!r}"
    yield not (1 <= len(c.num_hidden) <= MAX_LAYERS and all(1 <= w <= MAX_WIDTH for w in c.num_hidden)), \
        f"--num-hidden must be 1 to {MAX_LAYERS} widths in 1..{MAX_WIDTH} such as 128,64, got {_typed(c.num_hidden)}"
    yield c.network != "mlp" and c.num_hidden != _default(c, "num_hidden"), \
        f"--num-hidden sets the MLP's widths; {c.network} has its own"
    yield not 1 <= c.batch_size <= 1_000_000, f"--batch-size must be in 1..1000000, got {c.batch_size}"
    yield not 1 <= c.num_epochs <= MAX_EPOCHS, f"--num-epochs must be in 1..{MAX_EPOCHS}, got {c.num_epochs}"
    yield c.optimizer not in OPTIMIZERS, \
        f"--optimizer must be one of {', '.join(sorted(OPTIMIZERS))}, got {c.optimizer!r}"
    yield not (c.lr is None or _finite(c.lr) and c.lr > 0), f"--lr must be a number > 0, got {c.lr}"
    scale = (c.lr or 0.1) / c.batch_size
    yield c.lr is not None and not _FLOAT32_NORMAL[0] <= scale <= _FLOAT32_NORMAL[1], \
        f"--lr {c.lr} over --batch-size {c.batch_size} is {scale:g}, outside float32's normal range"
    yield not (_finite(c.mom) and 0 <= c.mom < 1), f"--mom must be in [0, 1), got {c.mom}"
    yield c.optimizer == "adam" and c.mom > 0, "--mom does not apply to adam, which keeps its own moments"
    yield not (_finite(c.wd) and c.wd >= 0), f"--wd must be a number >= 0, got {c.wd}"
    yield not (_finite(c.clip_gradient) and c.clip_gradient >= 0), \
        f"--clip-gradient must be a number >= 0 (0: no clipping), got {c.clip_gradient}"
    yield c.lr_scheduler == "step" and not c.lr_step_epochs, "--lr-scheduler step needs --lr-step-epochs"
    yield not all(1 <= e < c.num_epochs for e in c.lr_step_epochs), \
        f"--lr-step-epochs must lie in 1..{c.num_epochs - 1} (inside --num-epochs), got {_typed(c.lr_step_epochs)}"
    yield not (_finite(c.lr_factor) and 0 < c.lr_factor <= 1), f"--lr-factor must be in (0, 1], got {c.lr_factor}"
    yield not 0 <= c.seed < 2 ** 32, f"--seed must be in 0..{2 ** 32 - 1}, got {c.seed}"
    yield not 1 <= c.save_period <= MAX_EPOCHS, f"--save-period must be in 1..{MAX_EPOCHS}, got {c.save_period}"
    yield not 0 <= c.load_epoch <= MAX_EPOCHS, f"--load-epoch must be in 0..{MAX_EPOCHS}, got {c.load_epoch}"
    yield c.disp_batches < 0, f"--disp-batches must be >= 0, got {c.disp_batches}"
    yield c.load_epoch > 0 and not c.model_prefix, "--load-epoch needs --model-prefix"
    yield c.resume and not c.model_prefix, "--resume needs --model-prefix"
    yield c.start_over and not c.model_prefix, "--start-over needs --model-prefix"
    yield sum(map(bool, (c.resume, c.load_epoch, c.start_over))) > 1, \
        "--resume, --load-epoch and --start-over exclude each other"
    yield c.evaluate and not c.load_epoch, "--evaluate needs --load-epoch (and --model-prefix)"
    yield c.load_epoch >= c.num_epochs and not c.evaluate, \
        f"--load-epoch {c.load_epoch} leaves nothing to train with --num-epochs {c.num_epochs}"


def check_batch(batch_size, num_samples, num_parts):
    """Raise ConfigError unless every device of every worker gets at least one sample of every batch."""
    if batch_size > num_samples:
        raise ConfigError(f"--batch-size {batch_size} is larger than the {num_samples} training samples")
    tail = num_samples % batch_size
    if batch_size < num_parts or 0 < tail < num_parts:
        raise ConfigError(f"--batch-size {batch_size} leaves a batch of {min(batch_size, tail or batch_size)} "
                          f"samples for {num_parts} devices in all; every device needs at least one")


def _typed(widths):
    return ",".join(map(str, widths)) or "nothing"


def resolved(config, **changes):
    """config with its derived defaults filled in (the optimizer's own learning rate), and changes."""
    if config.lr is None:
        changes.setdefault("lr", OPTIMIZERS[config.optimizer].default_learning_rate)
    return dataclasses.replace(config, **changes)
