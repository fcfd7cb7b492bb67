"""The run's state on disk: where a run starts, what each checkpoint holds for an exact resume, and its checks.

A fresh run never writes over checkpoints already under its prefix; a resume never writes over newer ones.
Everything read back is checked against the configuration before it is used (sidecar.py), and a problem is
one line naming the newest intact checkpoint and the command that resumes from it.
"""
import dataclasses
import os

import numpy as np

import checkpoint
import files
import interrupts
import report
import sidecar
from checkpoint import CheckpointError, Tag
from errors import Diverged, Interrupted


@dataclasses.dataclass
class Start:
    """Where training starts: tag None is epoch 1; else the checkpoint to resume from."""
    tag: object = None
    remove: tuple = ()     # with --start-over: the checkpoints to delete before the first batch
    set_aside: tuple = ()  # torn checkpoints past the resume point, to rename before the first batch


def check_outputs(config):
    """Refuse, before anything is built, an output path that is not a file or has no writable folder."""
    if config.metrics_file:
        files.check_file(config.metrics_file, "--metrics-file")
        head = _first_byte(config.metrics_file)
        if head not in (b"", b"{"):
            raise files.OutputError(f"--metrics-file {config.metrics_file} holds something else than JSON lines "
                                    f"(it starts with {head!r}); give a new file or a metrics file")
    if config.model_prefix:
        if config.model_prefix.endswith(os.sep) or os.path.isdir(config.model_prefix):
            raise files.OutputError(f"--model-prefix {config.model_prefix} is a folder; give a path and a name "
                                    "in it, such as runs/mlp")
        files.check_file(config.model_prefix + "-symbol.json", "--model-prefix")
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
        raise files.OutputError(f"cannot read {path}: {err.strerror}") from None


def plan(config, command):
    """The Start that config asks for, after checking the prefix's checkpoints: never over saved work."""
    if not config.model_prefix:
        return Start()
    prefix, tags = config.model_prefix, checkpoint.listing(config.model_prefix)
    if config.start_over:
        return Start(remove=tuple(tags) + tuple(checkpoint.leftovers(prefix)))
    if config.resume:
        interrupted = [tag for tag in tags if tag.interrupted]
        if not interrupted:
            raise CheckpointError(f"no interrupted checkpoint under {prefix}; {_newest_hint(config, command)}")
        tag = interrupted[-1]
    elif config.load_epoch:
        tag = Tag(config.load_epoch)
        if tag not in tags:
            raise CheckpointError(f"no checkpoint {tag.stem(prefix)}; {_newest_hint(config, command)}")
    else:
        if tags or checkpoint.leftovers(prefix):
            raise CheckpointError(f"{prefix} already holds checkpoints: {_newest_hint(config, command)}, "
                                  "or start over with --start-over")
        return Start()
    try:
        checkpoint.verify(prefix, tag)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {_newest_hint(config, command)}") from None
    if config.evaluate:
        return Start(tag)
    # What lies past the resume point: newer work blocks it; a torn checkpoint or the files of a save that was
    # cut short are set aside (renamed *.torn, never deleted), since this run will write those names again.
    newer = [t for t in tags if t.order() > tag.order()]
    for later in reversed(newer):
        try:
            checkpoint.verify(prefix, later)
        except CheckpointError:
            continue
        if later.epoch > tag.epoch or not later.interrupted:
            raise CheckpointError(f"{later.stem(prefix)} is newer than {tag.stem(prefix)}, and resuming from the "
                                  f"older would write over it; {_newest_hint(config, command)}")
    return Start(tag, set_aside=tuple(newer))


def _newest_hint(config, command):
    """'the newest intact checkpoint is X: resume with <command>', or that there is none."""
    for tag in reversed(checkpoint.listing(config.model_prefix)):
        try:
            checkpoint.verify(config.model_prefix, tag)
        except CheckpointError:
            continue
        stem, base = tag.stem(config.model_prefix), dataclasses.replace(config, start_over=False, evaluate=False,
                                                                       resume=False, load_epoch=0)
        if tag.interrupted:
            return f"the newest intact checkpoint is {stem}: resume with {command(dataclasses.replace(base, resume=True))}"
        if tag.epoch >= config.num_epochs:
            scored = dataclasses.replace(base, load_epoch=tag.epoch, evaluate=True)
            return (f"the newest intact checkpoint is {stem}, already at --num-epochs {config.num_epochs}: score it "
                    f"with {command(scored)}, or train on with a larger --num-epochs")
        return f"the newest intact checkpoint is {stem}: resume with {command(dataclasses.replace(base, load_epoch=tag.epoch))}"
    return f"{config.model_prefix} has no intact checkpoint"


def begin(start, config, log):
    """Just before the first batch, after every check has passed: what --start-over deletes goes, and what
    lies torn past the resume point is renamed *.torn."""
    for item in start.remove:
        checkpoint.remove(config.model_prefix, item)
    if start.remove:
        log(f"started over: removed {len(start.remove)} checkpoint file set(s) under {config.model_prefix}")
    aside = [path for tag in start.set_aside for path in checkpoint.paths(config.model_prefix, tag).values()
             if not path.endswith("-symbol.json")] + checkpoint.leftovers(config.model_prefix)
    for path in aside:
        if os.path.exists(path):
            os.replace(path, path + ".torn")
    if aside:
        log(f"set aside {len(aside)} file(s) of torn checkpoints as *.torn")


def load_weights(config, params, symbol):
    """--evaluate: the weights of --load-epoch's checkpoint into params."""
    checkpoint.load(config.model_prefix, Tag(config.load_epoch), params, symbol)


def restore(start, config, symbol, group, opt, rng, meter):
    """Load start's checkpoint into the weights, optimizer, RNG and meter; return (history, batches to skip)."""
    if start.tag is None:
        return [], 0
    prefix, tag = config.model_prefix, start.tag
    state = checkpoint.load(prefix, tag, group.params, symbol)
    ctxs = [replica.ctx for replica in group.replicas]
    saved = sidecar.check(checkpoint.paths(prefix, tag)["state"], state, config, tag, group.layout, opt, ctxs)
    opt.num_update, opt.state = saved["num_update"], saved["optimizer_state"]
    rng.set_state(saved["rng"])
    if tag.interrupted:
        meter.reset(saved["samples"], saved["stats"])
    return saved["history"], tag.batches or 0


def save_epoch(config, symbol, params, opt, rng, history):
    """After an epoch: its checkpoint, if the save period says so; retire the interrupted ones it supersedes."""
    epoch = history[-1]["epoch"]
    if not config.model_prefix or (epoch % config.save_period and epoch != config.num_epochs):
        return
    tag = Tag(epoch)
    checkpoint.save(config.model_prefix, tag, symbol, params, sidecar.state(config, history, rng.get_state(), opt))
    _retire_interrupted(config.model_prefix, tag)


def interrupt(config, command, symbol, params, opt, history, signum, rng_state, meter=None, in_epoch=None):
    """Save the state after the last completed step; return the Interrupted to raise.

    rng_state: the RNG as the epoch began; in_epoch: (epoch, batches done), or None between epochs.
    """
    where = (f"in epoch {in_epoch[0]} after batch {in_epoch[1]}" if in_epoch
             else f"after epoch {history[-1]['epoch'] if history else 0}")
    stopped = f"stopped by {interrupts.name(signum)} {where}"
    if not config.model_prefix:
        return Interrupted(f"{stopped}; nothing saved, since --model-prefix is not set")
    params.flat.wait_to_read()
    if in_epoch:
        tag = Tag(*in_epoch)
        state = sidecar.state(config, history, rng_state, opt, meter, in_epoch[1])
        resume = dataclasses.replace(config, resume=True, load_epoch=0, start_over=False)
    else:
        tag = Tag(history[-1]["epoch"])
        state = sidecar.state(config, history, rng_state, opt)
        resume = dataclasses.replace(config, load_epoch=tag.epoch, resume=False, start_over=False)
    if tag not in checkpoint.listing(config.model_prefix):
        checkpoint.save(config.model_prefix, tag, symbol, params, state)
        _retire_interrupted(config.model_prefix, tag)
    return Interrupted(f"{stopped}; saved {tag.stem(config.model_prefix)}. Resume with: {command(resume)}")


def _retire_interrupted(prefix, newest):
    """An interrupted checkpoint is used once: remove those that the newest checkpoint supersedes."""
    for tag in checkpoint.listing(prefix):
        if tag.interrupted and tag.order() < newest.order():
            checkpoint.remove(prefix, tag)


def check_finite(per_batch, flat_params, epoch, config):
    """Raise Diverged naming the first batch whose loss is not finite, or the parameters, and the likely flag."""
    bad = np.flatnonzero(~np.isfinite(per_batch[:, 1]))
    if not len(bad) and np.isfinite(flat_params.sum().asscalar()):
        return
    where = f"non-finite loss in epoch {epoch}, batch {bad[0] + 1}" if len(bad) else \
        f"non-finite parameters after epoch {epoch}"
    # SGD's weight decay multiplies each weight by 1 - lr * wd per step: past 2, the weights grow every step.
    if config.wd and config.lr * config.wd >= 1:
        cause = f"--wd {config.wd} is too large for --lr {config.lr} (lr * wd = {config.lr * config.wd:g})"
    else:
        cause = f"try a smaller --lr than {config.lr:g}" + (" or a --clip-gradient" if not config.clip_gradient else "")
    raise Diverged(f"training diverged: {where}; {cause}. Checkpoints already saved are untouched")
