"""The outputs: every file a run will write, checked against the disk before anything is built.

A run writes its metrics file and that file's lock, its prefix's checkpoints and lock, three
pictures, or an ONNX model. Each is checked once, before anything trains:

- its path can be written: absent or a regular file, through symlinks that lead somewhere, in a
  writable folder, its name short enough with what the trainer adds to it;
- it is a new name, or a file of this very output's kind, recognised by its content: a metrics
  file holds JSON lines of objects (none a checkpoint's state), a lock what a lock holds, a picture
  is a PNG image that Matplotlib drew, an ONNX model one that this trainer exported. A file written
  in place (the metrics file, a lock) has no other name (hard link) that the write would change;
- it is not named as a checkpoint's file of any prefix, nor is it one of this prefix's
  checkpoints through a link, nor a data file (of --data-dir, MNIST_DIR or a data set's cache),
  nor another output of the run;
- the prefix's own checkpoint names hold regular files only: a folder, a FIFO or a dangling
  symlink where a checkpoint will be saved is refused now, not after an epoch has trained.

Whether the prefix's checkpoints may be written over is the plan's to say (harness/plan.py); what
the symbol files hold, the restore's (harness/saving.py).
"""
import os

from harness import checkpoint, files, idx_files, report
from harness.datasets import DATASETS, FILES
from harness.errors import OutputError

# A picture this trainer drew: a PNG image, which Matplotlib signs in a text chunk after its header.
_PNG, _DRAWN = b"\x89PNG\r\n\x1a\n", b"tEXtSoftware\x00Matplotlib"
# The most a metrics file may hold to be read through: a line per epoch is a few hundred bytes.
_MAX_METRICS = 64 << 20
# The largest ONNX model read to recognise it: protobuf's own limit.
_MAX_ONNX = 2 << 30


def check(config, mode):
    """Raise OutputError for the first output of a run of this mode that may not be written."""
    named = _outputs(config, mode)
    trains = mode in ("train", "dry_run")
    if trains and config.model_prefix:
        _check_prefix(config.model_prefix)
    folder = report.pictures_folder(config) if trains else ""
    if folder:
        files.check_folder(folder, "--plot-dir" if config.plot_dir else "--model-prefix's pictures")
    # Exporting takes no lock, but its model must not take the name of the prefix's.
    reserved = ([("--model-prefix's lock", files.lock_path(config.model_prefix))]
                if mode == "export" and config.model_prefix else [])
    data = _data_files(config)
    for i, (what, path, kind) in enumerate(named):
        # A picture's folder may be made when the pictures are drawn: then each is a new name.
        if kind != "picture" or os.path.isdir(os.path.dirname(path)):
            files.check_file(path, what, ".lock" if kind == "metrics" else "")
        _check_names(what, path, config.model_prefix)
        for source, data_file in data:
            if files.same_file(path, data_file):
                raise OutputError(f"{what} {path} is a data file of {source}; give another path")
        for other_what, other in [(w, p) for w, p, _ in named[i + 1:]] + reserved:
            if files.same_file(path, other):
                raise OutputError(
                    f"{what} {path} is the same file as {other_what} {other}; give another path"
                )
        if os.path.exists(path):
            _check_kind(what, path, kind)


def _outputs(config, mode):
    """(what, path, kind) of each file a run of this mode writes beside its checkpoints."""
    from harness import plots
    if mode == "export":
        return [("--export-onnx", config.export_onnx, "onnx")]
    if mode not in ("train", "dry_run"):
        return []
    named = []
    if config.metrics_file:
        named += [("--metrics-file", config.metrics_file, "metrics"),
                  ("--metrics-file's lock", files.lock_path(config.metrics_file), "lock")]
    folder = report.pictures_folder(config)
    if folder:
        named += [("a picture", os.path.join(folder, name), "picture")
                  for name in (plots.CURVES, plots.CONFUSION, plots.MISTAKES)]
    if config.model_prefix:
        named += [("--model-prefix's lock", files.lock_path(config.model_prefix), "lock")]
    return named


def _check_prefix(prefix):
    """Refuse a prefix that is a folder, and all but regular files under its checkpoints' names."""
    if prefix.endswith(os.sep) or os.path.isdir(prefix):
        raise OutputError(
            f"--model-prefix {prefix} is a folder; give a path and a name in it, such as runs/mlp"
        )
    files.check_file(prefix, "--model-prefix", checkpoint.LONGEST_SUFFIX)
    for path in checkpoint.existing(prefix):
        if not os.path.isfile(path):
            kind = ("a symlink to nothing" if os.path.islink(path) and not os.path.exists(path)
                    else "a folder" if os.path.isdir(path) else "not a regular file")
            raise OutputError(
                f"{path} is {kind}, where --model-prefix {prefix} saves its checkpoints; "
                "remove it, or give another --model-prefix"
            )


def _check_names(what, path, prefix):
    """Refuse an output named as a checkpoint's file, or that is one of prefix's through a link."""
    own = os.path.realpath(prefix) if prefix else None
    for name in (path, os.path.realpath(path)):
        found = checkpoint.parse(os.path.abspath(name))
        if found and os.path.realpath(found[0]) != own:
            raise OutputError(f"{what} {path} is named as a file of the checkpoints under prefix "
                              f"{found[0]}; give another path")
        if found or prefix and any(files.same_file(name, other)
                                   for other in checkpoint.existing(prefix)):
            raise OutputError(f"{what} {path} is a file of the checkpoints under --model-prefix "
                              f"{prefix}; give another path")


def _data_files(config):
    """(where it is from, path) of every data file this run could read: the ones not to write."""
    folders = [("--data-dir", config.data_dir), ("MNIST_DIR", os.environ.get("MNIST_DIR"))]
    folders += [(f"the {name} cache", idx_files.default_cache_dir(dataset))
                for name, dataset in DATASETS.items()]
    return [(source, os.path.join(folder, name + ending))
            for source, folder in folders if folder
            for name in FILES for ending in ("", ".gz")
            if os.path.lexists(os.path.join(folder, name + ending))]


def _check_kind(what, path, kind):
    """Refuse an existing file not of this output's kind, or one that a write would reach twice."""
    if kind in ("metrics", "lock") and os.stat(path).st_nlink > 1:
        raise OutputError(f"{what} {path} has other names (hard links), which writing it in "
                          "place would change too; give another path")
    if kind == "metrics":
        problem = _metrics_problem(path)
    elif kind == "lock":
        problem = None if files.is_lock_file(path) else "is not a lock file of this trainer"
    elif kind == "picture":
        head = _head(path, 4096)
        problem = None if head.startswith(_PNG) and _DRAWN in head else \
            "is not a picture that Matplotlib drew (a PNG image it signed)"
    elif kind == "onnx":
        problem = _onnx_problem(path)
    else:
        raise ValueError(f"no check for an output of kind {kind!r}")
    if problem:
        raise OutputError(f"{what} {path} {problem}; give a new file or one of this kind")


def _metrics_problem(path):
    """Why path is not a metrics file (JSON lines, each an object, none a checkpoint's), or None."""
    from harness import sidecar
    try:
        payload = files.read_bounded(path, _MAX_METRICS)
    except ValueError as err:
        return f"is not a metrics file ({err})"
    except OSError as err:
        return f"cannot be read: {err.strerror}"
    for number, line in enumerate(payload.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = files.parse_json(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return (f"holds something else than JSON lines (line {number} starts with "
                    f"{line[:16]!r})")
        if set(sidecar.KEYS) <= set(value):
            return f"holds a checkpoint's state (line {number}), not metrics"
    return None


def _onnx_problem(path):
    """Why path is not an ONNX model that this trainer exported, or None."""
    from harness import export
    try:
        payload = files.read_bounded(path, _MAX_ONNX)
    except (OSError, ValueError) as err:
        return f"cannot be read as an ONNX model ({getattr(err, 'strerror', None) or err})"
    return None if export.is_export(payload) else "is not an ONNX model exported by this trainer"


def _head(path, size):
    """The first size bytes of path (fewer if it is shorter)."""
    with open(path, "rb") as f:
        return f.read(size)
