"""--export-onnx and --predict: a checkpoint as an ONNX model, and image files classified.

Both read the checkpoint of --model-prefix and --load-epoch as --evaluate does (a Run, then
harness/reading.py's resolve and bind), MXNet's own checkpoints too, and put its weights into the
inference graph: the network without its loss head, ending in softmax. onnx, onnxruntime, Pillow
and MXNet are imported when used, so that the trainer needs none of the first three
(requirements-onnx.txt installs them) and MXNet loads after main() has set its threads.
"""
import io
import os
import re
import stat
import sys
import warnings

from harness import files
from harness.datasets import DATA, DATASETS
from harness.errors import ConfigError, RunError

OPSET = 13
# The largest difference in probabilities between ONNX Runtime and MXNet that an export accepts.
TOLERANCE = 1e-5
# What --predict reads of one file, and the most pixels it lets Pillow decode.
MAX_IMAGE_BYTES = 20 << 20
MAX_IMAGE_PIXELS = 50_000_000
_INSTALL = "pip install --no-deps -r requirements-onnx.txt"
# Samples per forward pass over the test set: LeNet's first layer alone holds 46 KB of a sample.
_CHUNK = 1000
# MNIST's preparation: the digit's longer side scaled to 20 pixels, in a 28x28 field, its centre of
# mass at pixel (14, 14) (the test set's average, in row and column indices, is 13.99, 14.01).
_BOX, _FIELD, _CENTRE = 20, 28, 14
# Ink fainter than this part of the darkest stroke is background: specks of noise or JPEG's ringing
# would widen the digit's box.
_FLOOR = 0.05
# An exported model's doc string: what it is, and of which checkpoint.
_ABOUT = "{network} of checkpoint {checkpoint}"


def run(config, log, data, network, given=None):
    """--export-onnx or --predict, whichever config asks for; log(line) shows a line.

    data and network: the lesson's modules, handed down, as the machinery imports none of them.
    given: the config fields the command line gave (reading.resolve).
    """
    from harness import plan
    mode = plan.mode_of(config)
    if mode == "export":
        export_onnx(config, log, data, network, given)
    elif mode == "predict":
        predict(config, log, data, network, given)
    else:
        raise ValueError(f"export.run does not {mode}")


# --export-onnx

def export_onnx(config, log, data, network, given=None):
    """Write --load-epoch's checkpoint as an ONNX model, once ONNX Runtime agrees with MXNet.

    On the whole test set: the accuracies of both and their largest difference in probabilities.
    """
    import numpy as np

    from harness import reading
    from harness.run import Run
    onnx, ort = _onnx_modules()
    with Run(config.resolved(), log, script=_script(config)) as run:
        symbol = reading.resolve(run, network, given)
        _, test_iter = data.iterators(run.config, run.contexts, run.rng, log=log)
        params = _cpu_weights(reading.bind(run, test_iter, network, symbol))
        images, labels = _test_set(test_iter, data.to_floats)
        graph = network.inference_graph(symbol)
        stem = os.path.basename(run.plan.tag.stem(run.config.model_prefix))
        payload = _onnx_model(onnx, graph, params, images.shape[1:],
                              _ABOUT.format(network=run.config.network, checkpoint=stem))
        theirs = _ort_probabilities(ort, payload, images)
        ours = _mxnet_probabilities(graph, params, images)
    difference = float(np.abs(theirs - ours).max())
    path = config.export_onnx
    # Written only if it computes what MXNet computes: not <= catches a NaN too.
    if not difference <= TOLERANCE:
        raise RunError(
            f"--export-onnx: ONNX Runtime's probabilities differ from MXNet's by up to "
            f"{difference:.1e} on the test set, more than {TOLERANCE:g}; {path} was not written"
        )
    files.write_bytes(path, payload)
    accuracies = [float((probs.argmax(axis=1) == labels).mean()) for probs in (theirs, ours)]
    log(
        f"onnx: wrote {path} (opset {OPSET}); test accuracy {accuracies[0]:.4f} in ONNX Runtime, "
        f"{accuracies[1]:.4f} in MXNet; largest difference in probabilities {difference:.1e}"
    )


def is_export(payload):
    """Whether payload is an ONNX model that export_onnx wrote: its doc string says so."""
    try:
        import onnx
        model = onnx.load_model_from_string(payload)
    # A parser of any bytes a user may have put there: whatever fails, it is not ours.
    except Exception:
        return False
    about = re.escape(_ABOUT).replace(r"\{network\}", r"\w+").replace(r"\{checkpoint\}", ".+")
    return model.producer_name == "mxnet" and re.fullmatch(about, model.doc_string) is not None


def _onnx_modules():
    """(onnx, onnxruntime), or ConfigError naming what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        missing = err.name or "one of them"
        raise ConfigError(
            f"--export-onnx needs onnx and onnxruntime, and {missing} cannot be imported: "
            f"{_INSTALL}"
        ) from None
    try:
        # MXNet 1.9.1's converter reads onnx.mapping, which onnx 1.19 removed.
        import onnx.mapping  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"onnx {onnx.__version__} is installed, but MXNet 1.9.1's ONNX converter needs "
            f"onnx.mapping, which onnx 1.19 removed: {_INSTALL}"
        ) from None
    return onnx, onnxruntime


def _test_set(test_iter, to_floats):
    """Every sample of test_iter once, in numpy: (float32 images, labels).

    to_floats: the trainer's way from pixel bytes to floats.
    """
    import numpy as np
    images, labels = [], []
    test_iter.reset()
    for batch in test_iter:
        # Padding rows repeat others: left out.
        rows = batch.data[0].shape[0] - (batch.pad or 0)
        images.append(batch.data[0].asnumpy()[:rows])
        labels.append(batch.label[0].asnumpy()[:rows])
    images = np.concatenate(images)
    if images.dtype == np.uint8:
        images = to_floats(images)
    return images.astype(np.float32), np.concatenate(labels).astype(np.int64)


def _onnx_model(onnx, graph, params, sample_shape, about):
    """The serialised ONNX model of graph: opset 13, any batch size, the weights as constants."""
    import mxnet as mx
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    from onnx import TensorProto, helper

    # mx.onnx.export_model takes no opset: it stamps the installed onnx's newest, which ONNX Runtime
    # may not know yet. The converter it wraps picks each operator's translation for the opset it is
    # given.
    proto = MXNetGraph().create_onnx_graph_proto(
        graph, params, in_shapes=[(1, *sample_shape)], in_types=[TensorProto.FLOAT],
        opset_version=OPSET, dynamic=True, dynamic_input_shapes=[(None, *sample_shape)])
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(proto, opset_imports=opsets, producer_name="mxnet",
                              producer_version=mx.__version__, doc_string=about)
    # The IR version that came with opset 13, not the installed onnx's newest: older runtimes load
    # the file too.
    model.ir_version = helper.find_min_ir_version_for(opsets)
    _tidy(model.graph, graph, sample_shape)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _tidy(onnx_graph, graph, sample_shape):
    """Weights as initializers only, none unused; the batch dimension named, the others given.

    The converter lists each weight as a graph input too, which a runtime lets a caller replace
    (and then does not fold as a constant), and leaves its softmax's constants unused.
    """
    weights = {tensor.name for tensor in onnx_graph.initializer}
    inputs = [value for value in onnx_graph.input if value.name not in weights]
    del onnx_graph.input[:]
    onnx_graph.input.extend(inputs)
    used = {name for node in onnx_graph.node for name in node.input}
    used |= {value.name for value in onnx_graph.output}
    kept = [tensor for tensor in onnx_graph.initializer if tensor.name in used]
    del onnx_graph.initializer[:]
    onnx_graph.initializer.extend(kept)
    # The converter leaves the batch dimension anonymous, and the output's width unknown.
    _, out_shapes, _ = graph.infer_shape(**{DATA: (1, *sample_shape)})
    shapes = [(1, *sample_shape)] + [tuple(shape) for shape in out_shapes]
    for value, shape in zip([*onnx_graph.input, *onnx_graph.output], shapes):
        dims = value.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        for dim, size in zip(list(dims)[1:], shape[1:]):
            dim.dim_value = size


def _ort_probabilities(ort, payload, images):
    """ONNX Runtime's probabilities for images, from the serialised model, in chunks."""
    import numpy as np
    options = ort.SessionOptions()
    # As many threads as MXNet's operators were given (harness/cpu.py), not one per core.
    threads = os.environ.get("OMP_NUM_THREADS", "").split(",")[0]
    if threads.isdigit():
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {DATA: images[begin:begin + _CHUNK]})[0]
                           for begin in range(0, len(images), _CHUNK)])


# The checkpoint's weights, and MXNet's probabilities: for both jobs.

def _cpu_weights(model):
    """The model's weights by name, copied to the CPU: what both graphs are given."""
    import mxnet as mx
    return {name: array.copyto(mx.cpu()) for name, array in model.arg_params.items()}


def _mxnet_probabilities(graph, params, images):
    """MXNet's probabilities for images: the inference graph bound on the CPU, in chunks."""
    import mxnet as mx
    import numpy as np
    probs = []
    for begin in range(0, len(images), _CHUNK):
        args = dict(params, **{DATA: mx.nd.array(images[begin:begin + _CHUNK])})
        executor = graph.bind(mx.cpu(), args=args, grad_req="null")
        probs.append(executor.forward(is_train=False)[0].asnumpy())
    return np.concatenate(probs)


def _script(config):
    """The trainer's path, for the commands a Run prints: the file that defines config's class."""
    path = getattr(sys.modules.get(type(config).__module__), "__file__", None)
    return os.path.relpath(path) if path else "train_mnist.py"


# --predict

class _Unreadable(Exception):
    """Why one --predict file cannot be classified: its line says so, and the others go on."""


def predict(config, log, data, network, given=None):
    """Classify each --predict file with --load-epoch's checkpoint: a line each, in their order.

    A file that cannot be classified gets its own line; the run then ends with exit code 2.
    """
    import mxnet as mx
    import numpy as np

    from harness import reading
    from harness.run import Run
    image_modules = _pillow()
    dataset = DATASETS[config.dataset]
    with Run(config.resolved(), log, script=_script(config)) as run:
        symbol = reading.resolve(run, network, given)
        shape = network.sample_shape(run.config.network)
        fields, reasons = {}, {}
        for i, path in enumerate(config.predict):
            try:
                fields[i] = data.to_floats(_sample(image_modules, path, dataset.noun))
            except _Unreadable as why:
                reasons[i] = str(why)
        if fields:
            images = np.stack(list(fields.values())).reshape(-1, *shape)
            # No data set is read: the images themselves size the model.
            own = mx.io.NDArrayIter(images, np.zeros(len(images), np.float32), len(images))
            params = _cpu_weights(reading.bind(run, own, network, symbol))
            probs = _mxnet_probabilities(network.inference_graph(symbol), params, images)
            verdicts = dict(zip(fields, (_verdict(p, dataset.classes) for p in probs)))
    for i, path in enumerate(config.predict):
        log(f"{path}: {reasons[i] if i in reasons else verdicts[i]}")
    if reasons:
        raise RunError(f"{len(reasons)} of {len(config.predict)} files could not be classified")


def _pillow():
    """(PIL.Image, PIL.ImageOps), or ConfigError naming what to install."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ConfigError(
            "--predict needs Pillow, which cannot be imported: pip install Pillow "
            f"(or {_INSTALL})"
        ) from None
    return Image, ImageOps


def _verdict(probs, classes):
    """'7 (98.2%), next 1 (1.1%)': the likeliest class and the runner-up."""
    import numpy as np
    first, second = np.argsort(-probs, kind="stable")[:2]
    return (f"{classes[first]} ({100 * probs[first]:.1f}%), "
            f"next {classes[second]} ({100 * probs[second]:.1f}%)")


def _sample(image_modules, path, noun="digit"):
    """The image file at path prepared as MNIST's digits were: 28x28 bytes, as MNIST's files.

    noun: what one sample is (a digit), for the line of an image without one.
    """
    grey = _grey(image_modules, _decode(image_modules[0], _read(path)), noun)
    return _field(image_modules[0], grey, noun)


def _read(path):
    """The bytes of the file at path, at most MAX_IMAGE_BYTES of them.

    The file is looked at before it is opened: opening a FIFO would wait for a writer.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _Unreadable("no such file") from None
    except OSError as err:
        raise _Unreadable(f"cannot be read: {err.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise _Unreadable("a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise _Unreadable("not a regular file")
    if info.st_size == 0:
        raise _Unreadable("an empty file")
    too_large = f"larger than {MAX_IMAGE_BYTES >> 20} MB, more than --predict reads of an image"
    if info.st_size > MAX_IMAGE_BYTES:
        raise _Unreadable(too_large)
    try:
        return files.read_bounded(path, MAX_IMAGE_BYTES)
    except OSError as err:
        raise _Unreadable(f"cannot be read: {err.strerror}") from None
    except ValueError:
        # It grew, or was replaced, since it was looked at.
        raise _Unreadable(too_large) from None


def _decode(image_module, payload):
    """The decoded image of payload, with Pillow's decompression-bomb check at MAX_IMAGE_PIXELS."""
    Image = image_module
    # Pillow warns past its limit and refuses past twice it: here, past it at once, before decoding.
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(payload))
            # A large JPEG is decoded in grey at a half, a quarter or an eighth of its size, as
            # long as it keeps 1024 pixels a side: the digit ends up 20 pixels tall anyway.
            image.draft("L", (1024, 1024))
            image.load()
        return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)) / 1e6:,.0f} megapixels" if found else "too many pixels"
        raise _Unreadable(f"an image of {size}, more than the {MAX_IMAGE_PIXELS // 10**6} "
                          "megapixels --predict decodes") from None
    except Image.UnidentifiedImageError:
        raise _Unreadable("not an image Pillow can read") from None
    # Pillow's decoders raise many kinds of error on a damaged file (OSError, SyntaxError,
    # ValueError, EOFError, struct.error): each is this file's problem alone.
    except Exception as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise _Unreadable(f"a damaged image ({reason})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _grey(image_modules, image, noun="digit"):
    """image in grey, float32 of any scale (larger is lighter); transparency over a background."""
    import numpy as np
    _, ImageOps = image_modules
    try:
        # A photo's orientation, as its camera recorded it.
        image = ImageOps.exif_transpose(image)
        if image.mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        # float32, in place: a 50-megapixel image takes 200 MB a copy.
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            return np.array(image, dtype=np.float32)
        if "A" not in image.getbands() and "transparency" not in image.info:
            return np.array(image.convert("L"), dtype=np.float32)
        rgba = image.convert("RGBA")
        alpha = np.array(rgba.getchannel("A"), dtype=np.float32)
        alpha /= 255
        grey = np.array(rgba.convert("L"), dtype=np.float32)
    except (OSError, ValueError) as err:
        raise _Unreadable(f"cannot be made grey ({str(err)[:200]})") from None
    if not alpha.any():
        raise _Unreadable(f"no {noun} in it: the image is fully transparent")
    # What is transparent shows the background that sets the strokes off: white behind dark ones.
    strokes = (grey * alpha).sum(dtype=np.float64) / alpha.sum(dtype=np.float64)
    background = 255 if strokes < 128 else 0
    grey -= background
    grey *= alpha
    grey += background
    return grey


def _field(image_module, grey, noun="digit"):
    """grey as MNIST's digits were prepared: a 28x28 field of bytes, the digit light on black."""
    import numpy as np
    Image = image_module
    # The background is the border's median; the digit is what differs from it most, darker (ink on
    # paper) or lighter (chalk, or MNIST's own).
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    ink = grey - np.median(border)
    # Darker in all: what differs from the background below it outweighs what does above it.
    if ink.sum(dtype=np.float64) < 0:
        ink *= -1
    np.clip(ink, 0, None, out=ink)
    if not ink.max() > 0:
        raise _Unreadable(f"no {noun} in it: the image is one flat colour")
    ink /= ink.max()
    ink[ink < _FLOOR] = 0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    box = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # The longer side to 20 pixels, the aspect kept; Lanczos, whose support grows as it shrinks, is
    # anti-aliased.
    scale = _BOX / max(box.shape)
    width, height = (max(1, round(side * scale)) for side in (box.shape[1], box.shape[0]))
    lanczos = getattr(Image, "Resampling", Image).LANCZOS
    small = np.asarray(Image.fromarray(np.ascontiguousarray(box, np.float32))
                       .resize((width, height), lanczos))
    small = np.clip(small, 0, 1)
    # Shifted so that its centre of mass falls on (14, 14), as far as the field lets it.
    mass = small.sum()
    if not mass > 0:
        raise _Unreadable(f"no {noun} in it: its strokes vanish at 20 pixels")
    centre_row = (small.sum(axis=1) * np.arange(height)).sum() / mass
    centre_col = (small.sum(axis=0) * np.arange(width)).sum() / mass
    top = int(np.clip(round(_CENTRE - centre_row), 0, _FIELD - height))
    left = int(np.clip(round(_CENTRE - centre_col), 0, _FIELD - width))
    field = np.zeros((_FIELD, _FIELD))
    field[top:top + height, left:left + width] = small
    return np.round(field * 255).astype(np.uint8)
