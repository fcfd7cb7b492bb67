"""Saving and restoring a run: a checkpoint's state into and out of model, optimizer, RNG, meter.

restore() takes the plan's checkpoint over as the run starts: for a resume, its weights, optimizer
state, RNG and (mid-epoch) the metrics of the batches done; for a warm start, its weights alone.
Before that it refuses symbol files under the prefix that hold another network than this run's,
which its saves would write over. check_data() refuses, before the first step, data that differs
between the workers, or from the data a mid-epoch checkpoint was trained on. begin() does, once the
first step has run, what the plan deferred; save() writes a checkpoint and retires the interrupted
ones it supersedes, and interrupt() saves the step a signal stopped and says how to resume it.
Each function takes the Run whose life this is.
"""
import dataclasses
import hashlib
import os

from harness import checkpoint, files, plan, sidecar, signals
from harness.datasets import FILES
from harness.errors import CheckpointError, DataError, Interrupted


def restore(run, symbols):
    """Take the plan's checkpoint over into run's model, opt, rng and meter; return its State.

    None for a fresh start or a warm start, which keeps no state. symbols: (the network, its
    inference graph) that this run's checkpoints hold.
    """
    plan, prefix = run.plan, run.config.model_prefix
    if prefix:
        _check_symbols(run, symbols)
    if plan.start == "fresh":
        return None
    if plan.start == "warm":
        _copy(run.model.arg_params, _weights(run))
        kind = "MXNet's own checkpoint" if plan.foreign else "its weights alone"
        run.log(f"warm start from {plan.tag.stem(prefix)} ({kind}): the optimizer and the RNG "
                f"start afresh, training epochs {plan.first_epoch} to {run.config.num_epochs}")
        return None
    if plan.start in ("epoch", "interrupted"):
        return _resume(run)
    raise ValueError(f"unknown start {plan.start!r}")


def _resume(run):
    """Restore the plan's checkpoint in full: weights, state checked field by field, arrays."""
    prefix, tag, model, opt = run.config.model_prefix, run.plan.tag, run.model, run.opt
    where = checkpoint.paths(prefix, tag)
    values = run.disk.state(tag)
    _copy(model.arg_params, _weights(run))
    count = len(opt.new_state(model.arg_params[model.layout.names[0]]))
    reader = sidecar.Reader((where["state"], where["arrays"]), run.config, tag,
                            model.layout.shapes, count)
    state = reader.read(
        values,
        lambda: checkpoint.load_arrays(prefix, tag, _arrays_limit(run, count, tag)),
        run.sync.num_workers,
        len(run.contexts),
    )
    opt.num_update = state.num_update
    opt.state = model.optimizer_state({
        name: [array.as_in_context(run.contexts[0]) for array in arrays]
        for name, arrays in state.optimizer.items()
    })
    run.rng.set_state(state.rng)
    if tag.interrupted:
        run.meter.reset(state.samples, [array.as_in_context(ctx) for array, ctx in
                                        zip(state.stats[run.rank], run.contexts)])
    return state


def _weights(run):
    """The plan's checkpoint's weights, checked against this run's network: name -> NDArray."""
    path = checkpoint.paths(run.config.model_prefix, run.plan.tag)["params"]
    return checkpoint.load_weights(path, run.model.layout.shapes)


def _copy(params, weights):
    """Copy weights (name -> NDArray) into params, the model's own arrays."""
    for name, array in params.items():
        array[:] = weights[name]


def _check_symbols(run, symbols):
    """Refuse symbol files under the prefix that hold another network, unless starting over.

    Every checkpoint of a prefix shares them: a save would write over them.
    """
    config = run.config
    for kind, symbol in zip(("symbol", "inference"), symbols):
        path = checkpoint.shared_paths(config.model_prefix)[kind]
        if not os.path.lexists(path) or config.start_over:
            continue
        if checkpoint.read_symbol(config.model_prefix, kind) != symbol.tojson().encode():
            raise CheckpointError(f"{path} holds another network than this run's --network and "
                                  f"--num-hidden{_held(run)}; give another --model-prefix, or "
                                  "start over with --start-over")


def _held(run):
    """' (the checkpoint's: --network lenet ...)', from the plan's checkpoint's state, or ''."""
    if run.plan.tag is None or run.plan.foreign:
        return ""
    try:
        saved = run.disk.state(run.plan.tag)["config"]
        widths = ",".join(str(width) for width in saved["num_hidden"])
        return f" (the checkpoint's: --network {saved['network']} --num-hidden {widths})"
    except (CheckpointError, TypeError, KeyError):
        return ""


def _arrays_limit(run, count, tag):
    """The most bytes a checkpoint's state arrays take for this configuration: refused past it."""
    layout, workers, devices = run.model.layout, run.sync.num_workers, len(run.contexts)
    stats = 8 * (tag.batches or 0) * workers * devices
    return 4 * layout.size * count + stats + 256 * (len(layout.names) * count + workers * devices) \
        + 1024


def check_data(run, digests):
    """Refuse, before the first step, data that the run cannot train on as it must.

    That is data that differs between the workers, or, resuming mid-epoch, from the data the
    checkpoint was trained on: its batches would not be the same. digests: data file name -> the
    SHA-256 of its content (None for data given as iterators), kept for the checkpoints.
    """
    run.digests = digests
    if run.sync.num_workers > 1:
        _check_workers_agree(run, digests)
    state, tag = run.resumed, run.plan.tag
    if tag is None or not tag.interrupted or state is None or state.data == digests:
        return
    changed = [name for name in FILES if (state.data or {}).get(name) != (digests or {}).get(name)]
    raise CheckpointError(
        f"{tag.stem(run.config.model_prefix)} was saved mid-epoch on other data "
        f"({', '.join(changed) or 'the files'} differ): a mid-epoch resume needs the same files; "
        "resume from an epoch checkpoint with --load-epoch instead"
    )


def _check_workers_agree(run, digests):
    """Refuse data files that are not the same on every worker: they would train apart.

    Every worker takes part (the same collective call), and every one refuses alike.
    """
    import numpy as np
    # Eight 16-bit words of each file's digest: floats that every kvstore sums exactly.
    words = [np.frombuffer(hashlib.sha256(str((digests or {}).get(name)).encode()).digest()[:16],
                           ">u2") for name in FILES]
    every = run.sync.gather_values(np.concatenate(words).astype(np.float32))
    rows = [np.split(row, len(FILES)) for row in every]
    for worker, row in enumerate(rows):
        differ = [name for name, ours, theirs in zip(FILES, rows[0], row)
                  if not np.array_equal(ours, theirs)]
        if differ:
            raise DataError(
                f"worker {worker}'s data differs from worker 0's ({', '.join(differ)}): every "
                "worker must train on the same files; give each the same --data-dir"
            )


def begin(run):
    """Do, after the first step, what the plan deferred: nothing is lost before the run starts.

    What --start-over deletes goes, what lies torn is set aside, and the metrics file is made to
    hold the resumed checkpoint's records once.
    """
    plan, prefix = run.plan, run.config.model_prefix
    for tag in plan.remove:
        checkpoint.remove(prefix, tag)
    if plan.remove:
        run.log(f"started over: removed {len(plan.remove)} checkpoint(s) under {prefix}")
    aside = [files.set_aside(path) for path in plan.set_aside if os.path.exists(path)]
    if aside:
        run.log(f"set aside {len(aside)} file(s) of torn checkpoints as *.torn")
    state, metrics = run.resumed, run.metrics
    if metrics and state is not None and state.metrics is not None:
        line = metrics.resume(state.metrics, run.history, run.first_epoch)
        if line:
            run.log(line)
    elif metrics:
        metrics.at["records"] = len(run.history)


def save(run, tag, rng_state, in_epoch=None, stats=None):
    """Save run's state after its last step as checkpoint tag; remove the interrupted ones before.

    rng_state: the RNG's state to resume with; in_epoch: the batches done of the epoch for a
    mid-epoch checkpoint, whose stats are every worker's per-device metrics of them.
    """
    state = sidecar.State(
        config=dataclasses.asdict(run.config),
        history=list(run.history),
        rng=rng_state,
        num_update=run.opt.num_update,
        optimizer=run.model.saved_state(run.opt.state),
        first_epoch=run.first_epoch,
        data=run.digests,
        metrics=dict(run.metrics.at) if run.metrics else None,
    )
    if in_epoch:
        state.samples, state.stats = run.meter.samples[:in_epoch], stats
    values, arrays = sidecar.encode(state)
    prefix = run.config.model_prefix
    checkpoint.save(prefix, tag, run.symbols, run.model.arg_params, values, arrays)
    # An interrupted checkpoint is used once: the newer one supersedes it.
    for older in checkpoint.listing(prefix):
        if older.interrupted and older.order() < tag.order():
            checkpoint.remove(prefix, older)


def interrupt(run, signum, in_epoch=None):
    """Save run's state after its last completed step; return the Interrupted to raise.

    in_epoch: the batches done of the current epoch, or None between epochs. With workers, every
    worker takes part in gathering the epoch's metrics; rank 0 alone saves, and alone says so: the
    job ends with one line.
    """
    config, epoch = run.config, run.epoch
    cause = signals.name(signum) if signum else "a signal to another worker"
    where = f"in epoch {epoch} after batch {in_epoch}" if in_epoch else f"after epoch {epoch}"
    stopped = f"stopped by {cause} {where}"
    stats = _gathered_stats(run, in_epoch) if in_epoch else None
    if run.rank > 0:
        return Interrupted(stopped, signum, quiet=True)
    if not config.model_prefix:
        return Interrupted(f"{stopped}; nothing saved, since --model-prefix is not set", signum)
    if not run.plan.saves:
        return Interrupted(f"{stopped}; nothing saved (a dry run)", signum)
    run.model.arg_params[run.model.layout.names[0]].wait_to_read()
    tag = checkpoint.Tag(epoch, in_epoch) if in_epoch else checkpoint.Tag(epoch)
    if tag not in checkpoint.listing(config.model_prefix):
        save(run, tag, run.epoch_rng if in_epoch else run.rng.get_state(), in_epoch, stats)
    stem = tag.stem(config.model_prefix)
    if not in_epoch and epoch >= config.num_epochs:
        return Interrupted(f"{stopped}, the last; saved {stem}: nothing is left to train", signum)
    advice = plan.Advice(config, run.disk, run.script, plan.launcher())
    again = advice.command(config, resume=True) if in_epoch else \
        advice.command(config, load_epoch=epoch)
    return Interrupted(f"{stopped}; saved {stem}. Resume with: {again}", signum)


def _gathered_stats(run, batches):
    """Every worker's per-device metrics of the epoch's first batches, [worker][device]."""
    import mxnet as mx
    mine = mx.nd.stack(*[mx.nd.stack(*slots[:batches]) for slots in run.meter.stats])
    every = run.sync.gather(mine.as_in_context(mx.cpu()))
    return [[every[w][d] for d in range(every.shape[1])] for w in range(every.shape[0])]
