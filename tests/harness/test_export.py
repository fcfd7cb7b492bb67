"""--export-onnx and --predict (harness/export.py): ONNX models checked against MXNet; images."""
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

import train_mnist
from helpers import (
    NO_ONNX,
    ROOT,
    config,
    importable,
    load_mnist,
    need_onnx,
    run_cli,
    synthetic_arrays,
    tree_bytes,
    write_mnist,
)

needs_onnx = pytest.mark.skipif(not importable("onnx", "onnxruntime"), reason=NO_ONNX)
needs_pillow = pytest.mark.skipif(not importable("PIL"), reason="Pillow is not installed")

_LINE = re.compile(
    r"onnx: wrote (.+) \(opset 13\); test accuracy (\d\.\d{4}) in ONNX Runtime, (\d\.\d{4}) in "
    r"MXNet; largest difference in probabilities (\S+)"
)
_VERDICT = re.compile(r"(\d) \(\d+\.\d%\), next (\d) \(\d+\.\d%\)")
# (network, --num-hidden): the MLP at two widths, and LeNet, which takes the default widths.
_NETWORKS = [("mlp", (32, 16)), ("mlp", (48,)), ("lenet", (128, 64))]


def _train_checkpoint(folder, prefix, network="mlp", hidden=(32, 16), epochs=1):
    """Train network in this process on folder for epochs, saving under prefix; return prefix."""
    train_mnist.train(config(folder, network=network, num_hidden=hidden, num_epochs=epochs,
                             model_prefix=prefix))
    return prefix


def _flags(folder, prefix, network="mlp", hidden=(32, 16), epoch=1):
    """The flags that read checkpoint prefix-epoch as it was trained."""
    widths = ",".join(map(str, hidden))
    return ["--data-dir", folder, "--network", network, "--num-hidden", widths,
            "--model-prefix", prefix, "--load-epoch", str(epoch)]


def _params(prefix, epoch):
    """The weights of a checkpoint, name -> NDArray, as the network names them."""
    import mxnet as mx
    return {key.split(":", 1)[1]: array
            for key, array in mx.nd.load(f"{prefix}-{epoch:04d}.params").items()}


def _mxnet_probs(network, hidden, params, images):
    """The inference graph's probabilities for float images, bound on the CPU."""
    import mxnet as mx

    import network as networks
    graph = networks.inference_graph(networks.get_symbol(network, hidden))
    shape = networks.sample_shape(network)
    args = dict(params, data=mx.nd.array(images.reshape(-1, *shape)))
    return graph.bind(mx.cpu(), args=args, grad_req="null").forward()[0].asnumpy()


def _synthetic_test_set():
    """The synthetic test set as the trainer reads it: (float32 images (N, 784), labels)."""
    import data
    _, _, images, labels = synthetic_arrays()
    return data.to_floats(images.reshape(len(images), -1)), labels.astype(np.int64)


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory):
    """(data folder, prefix) of an MLP (32, 16) trained for an epoch on the synthetic set."""
    root = tmp_path_factory.mktemp("synthetic_checkpoint")
    folder = root / "mnist"
    folder.mkdir()
    write_mnist(str(folder))
    return str(folder), _train_checkpoint(str(folder), str(root / "mlp"))


# --export-onnx

@needs_onnx
@pytest.mark.parametrize("network, hidden", _NETWORKS)
def test_export_agrees_with_mxnet(synthetic_dir, tmp_path, capsys, network, hidden):
    import onnx
    import onnxruntime as ort
    prefix = _train_checkpoint(synthetic_dir, str(tmp_path / network), network, hidden)
    target = str(tmp_path / "model.onnx")
    code, out, err = run_cli(capsys, *_flags(synthetic_dir, prefix, network, hidden),
                             "--export-onnx", target)
    assert code == 0 and err == "", err
    lines = [line for line in out.splitlines() if line.startswith("onnx: ")]
    assert len(lines) == 1, out
    written, onnx_acc, mxnet_acc, difference = _LINE.fullmatch(lines[0]).groups()
    assert written == target and onnx_acc == mxnet_acc and float(difference) <= 1e-5

    model = onnx.load(target)
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert [value.name for value in model.graph.input] == ["data"]
    initializers = {tensor.name for tensor in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    assert initializers <= used and all(name in initializers for name in _params(prefix, 1))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch" and not batch.dim_value

    images, labels = _synthetic_test_set()
    expected = _mxnet_probs(network, hidden, _params(prefix, 1), images)
    session = ort.InferenceSession(target, providers=["CPUExecutionProvider"])
    shape = (1, 28, 28) if network == "lenet" else (784,)
    for rows in (7, 230):
        got = session.run(None, {"data": images[:rows].reshape(-1, *shape)})[0]
        assert got.shape == (rows, 10)
        np.testing.assert_allclose(got, expected[:rows], rtol=0, atol=1e-5)
    assert f"{(expected.argmax(axis=1) == labels).mean():.4f}" == onnx_acc


@needs_onnx
def test_export_accuracy_is_the_evaluated_one(synthetic_checkpoint, tmp_path, capsys):
    folder, prefix = synthetic_checkpoint
    code, out, _ = run_cli(capsys, *_flags(folder, prefix), "--evaluate")
    assert code == 0
    evaluated = re.search(r"acc (\d\.\d{4})", out).group(1)
    code, out, err = run_cli(capsys, *_flags(folder, prefix),
                             "--export-onnx", str(tmp_path / "m.onnx"))
    assert code == 0 and err == ""
    assert _LINE.search(out).group(3) == evaluated


@needs_onnx
def test_mxnets_own_checkpoint_exports_and_is_named_as_such(synthetic_checkpoint, tmp_path, capsys):
    """A checkpoint that mx.model.save_checkpoint wrote, as Module.save_checkpoint does."""
    import mxnet as mx

    import network
    folder, prefix = synthetic_checkpoint
    own = str(tmp_path / "module")
    symbol = network.get_symbol("mlp", (32, 16))
    mx.model.save_checkpoint(own, 1, symbol, _params(prefix, 1), {})
    code, out, err = run_cli(capsys, *_flags(folder, own), "--export-onnx", own + ".onnx")
    assert code == 0 and err == "", err
    assert "module-0001 is MXNet's own checkpoint" in out and _LINE.search(out)


@pytest.mark.parametrize("where", ["onnx missing", "a folder", "a missing folder", "a checkpoint"])
def test_an_export_that_cannot_be_written_is_one_line_exit_2_and_changes_nothing(
    synthetic_checkpoint, tmp_path, capsys, monkeypatch, where
):
    folder, prefix = synthetic_checkpoint
    target = {"onnx missing": str(tmp_path / "m.onnx"), "a folder": str(tmp_path),
              "a missing folder": str(tmp_path / "nowhere" / "m.onnx"),
              "a checkpoint": prefix + "-0001.params"}[where]
    expected = {"onnx missing": "pip install --no-deps -r requirements-onnx.txt",
                "a folder": "is a folder",
                "a missing folder": "does not exist", "a checkpoint": "a file of the checkpoints"}
    if where == "onnx missing":
        monkeypatch.setitem(sys.modules, "onnx", None)
    else:
        need_onnx()
    before = tree_bytes(tmp_path), tree_bytes(os.path.dirname(prefix))
    code, _, err = run_cli(capsys, *_flags(folder, prefix), "--export-onnx", target)
    assert code == 2 and len(err.splitlines()) == 1 and expected[where] in err, err
    assert (tree_bytes(tmp_path), tree_bytes(os.path.dirname(prefix))) == before


def test_import_loads_nothing_heavy():
    code = ("import sys; import harness.export; "
            "print([m for m in ('mxnet', 'numpy', 'onnx', 'onnxruntime', 'PIL') "
            "if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


# --predict

def _png(path, pixels):
    from PIL import Image
    Image.fromarray(pixels).save(path)
    return str(path)


def _bytes_of(images):
    """Float images in [0, 1] -> 28x28 uint8 pictures, white digit on black as MNIST's."""
    return [np.round(image.reshape(28, 28) * 255).astype(np.uint8) for image in images]


def _huge_header_png(path, side=60000):
    """A PNG whose header claims side x side grey pixels, and holds none."""
    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return str(path)


def _predicted(out, paths):
    """path -> the class its line names (None for a line that does not classify)."""
    found = {}
    for path in paths:
        lines = [line for line in out.splitlines() if line.startswith(path + ": ")]
        assert len(lines) == 1, (path, out)
        verdict = _VERDICT.fullmatch(lines[0][len(path) + 2:])
        found[path] = int(verdict.group(1)) if verdict else lines[0][len(path) + 2:]
    return found


@needs_pillow
def test_predict_failures_each_one_line(synthetic_checkpoint, tmp_path, capsys):
    from PIL import Image
    folder, prefix = synthetic_checkpoint
    digits = _bytes_of(_synthetic_test_set()[0][:2])
    good = [_png(tmp_path / "first.png", digits[0]), _png(tmp_path / "second.png", digits[1])]
    (tmp_path / "notes.txt").write_text("not a picture\n")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("L", (8000, 8000), 255).save(tmp_path / "8000x8000.png")
    cut = (tmp_path / "first.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(cut[: len(cut) // 2])
    # Sparse: 25 MB that take no room.
    (tmp_path / "25mb.png").touch()
    os.truncate(tmp_path / "25mb.png", 25 << 20)
    _png(tmp_path / "flat.png", np.full((40, 40), 200, np.uint8))
    (tmp_path / "folder").mkdir()
    bad = {
        "notes.txt": "not an image Pillow can read",
        "empty.png": "an empty file",
        "header.png": "an image of 3,600 megapixels, more than the 50 megapixels",
        "8000x8000.png": "an image of 64 megapixels, more than the 50 megapixels",
        "cut.png": "a damaged image",
        "25mb.png": "larger than 20 MB",
        "flat.png": "no digit in it",
        "folder": "a folder, not an image file",
        "missing.png": "no such file",
    }
    _huge_header_png(tmp_path / "header.png")
    paths = [good[0]] + [str(tmp_path / name) for name in bad] + [good[1]]
    code, out, err = run_cli(capsys, *_flags(folder, prefix), "--predict", *paths)
    assert code == 2
    assert err.splitlines() == [f"train_mnist.py: error: {len(bad)} of {len(paths)} files could "
                                "not be classified"]
    found = _predicted(out, paths)
    assert all(isinstance(found[path], int) for path in good)
    for name, reason in bad.items():
        assert str(found[str(tmp_path / name)]).startswith(reason), found


@needs_pillow
def test_predict_classifies_with_a_lenet_and_with_mxnets_own_checkpoint(
    synthetic_checkpoint, tmp_path, capsys
):
    import mxnet as mx

    import network
    folder, prefix = synthetic_checkpoint
    digits = _bytes_of(_synthetic_test_set()[0][:2])
    paths = [_png(tmp_path / f"{i}.png", digit) for i, digit in enumerate(digits)]
    lenet = _train_checkpoint(folder, str(tmp_path / "lenet"), "lenet", (128, 64))
    code, out, err = run_cli(capsys, *_flags(folder, lenet, "lenet", (128, 64)),
                             "--predict", *paths)
    assert code == 0 and err == "", err
    assert all(isinstance(label, int) for label in _predicted(out, paths).values())
    own = str(tmp_path / "module")
    mx.model.save_checkpoint(own, 1, network.get_symbol("mlp", (32, 16)), _params(prefix, 1), {})
    code, out, err = run_cli(capsys, *_flags(folder, own), "--predict", *paths)
    assert code == 0 and err == "" and "MXNet's own checkpoint" in out


def test_predict_without_pillow_is_one_line_exit_2_that_names_pillow(
    synthetic_checkpoint, tmp_path, capsys, monkeypatch
):
    folder, prefix = synthetic_checkpoint
    monkeypatch.setitem(sys.modules, "PIL", None)
    code, _, err = run_cli(capsys, *_flags(folder, prefix), "--predict", str(tmp_path / "a.png"))
    assert code == 2 and len(err.splitlines()) == 1 and "needs Pillow" in err, err


@needs_pillow
def test_field_is_prepared_as_mnist(tmp_path):
    """A dark bar on light paper, anywhere and of any size: light on black, 20 pixels, centred."""
    from PIL import Image

    from harness import export
    for size, (top, left, height, width) in (((300, 200), (40, 120, 150, 30)),
                                             ((50, 90), (5, 10, 20, 60))):
        paper = np.full(size, 230.0)
        paper[top:top + height, left:left + width] = 20
        field = export._field(Image, paper / 255).astype(np.float64)
        rows, cols = np.flatnonzero(field.any(axis=1)), np.flatnonzero(field.any(axis=0))
        assert max(len(rows), len(cols)) in (20, 21) and field.max() == 255
        mass = field.sum()
        centre = ((field.sum(axis=1) * np.arange(28)).sum() / mass,
                  (field.sum(axis=0) * np.arange(28)).sum() / mass)
        assert np.allclose(centre, 14, atol=0.5), centre


@pytest.fixture(scope="module")
def real_checkpoint(real_mnist, tmp_path_factory):
    """(real MNIST's folder, the prefix of an MLP (128, 64) trained on it for 3 epochs)."""
    root = tmp_path_factory.mktemp("real_checkpoint")
    return real_mnist, _train_checkpoint(real_mnist, str(root / "mlp"), hidden=(128, 64), epochs=3)


def _variants(digit, index):
    """name -> (the digit at another size, place and colours, the file's suffix)."""
    from PIL import Image
    picture = Image.fromarray(digit)

    def placed(canvas, side, where, dark_on_light):
        image = Image.new("L", canvas, 0)
        image.paste(picture.resize((side, side), Image.Resampling.BICUBIC), where)
        return Image.eval(image, lambda v: 255 - v) if dark_on_light else image
    return {
        # White on black, as MNIST is, twice the size.
        "56x56": (placed((56, 56), 56, (0, 0), False), ".png"),
        # Black on white, off centre in a wider field.
        "100x80": (placed((100, 80), 80, (25, 0), True), ".png"),
        # Either colours, by the digit's index, small in a large field.
        "200x200": (placed((200, 200), 140, (40, 20), index % 2 == 1), ".png"),
        # Black on white, as a JPEG and its noise.
        "120x120 jpeg": (placed((120, 120), 112, (4, 4), True), ".jpg"),
    }


@pytest.mark.slow
@needs_pillow
def test_predict_round_trip_of_mnist_digits(real_checkpoint, tmp_path, capsys):
    """Of 300 test digits classified right as they are, at least 95% still are as image files."""
    real_mnist, real_checkpoint = real_checkpoint
    _, _, images, labels = load_mnist(real_mnist)
    images, labels = images[:300], labels[:300]
    right = _mxnet_probs("mlp", (128, 64), _params(real_checkpoint, 3), images).argmax(1) == labels
    paths, truth = [], []
    for index in np.flatnonzero(right):
        for name, (picture, suffix) in _variants(_bytes_of(images[index:index + 1])[0],
                                                 index).items():
            path = str(tmp_path / f"{index}-{name.replace(' ', '-')}{suffix}")
            picture.save(path, **({"quality": 90} if suffix == ".jpg" else {}))
            paths.append(path)
            truth.append((name, int(labels[index])))
    code, out, err = run_cli(capsys, "--data-dir", real_mnist, "--num-hidden", "128,64",
                             "--model-prefix", real_checkpoint, "--load-epoch", "3",
                             "--predict", *paths)
    assert code == 0 and err == "", err
    found = _predicted(out, paths)
    for variant in _variants(np.zeros((28, 28), np.uint8), 0):
        kept = [found[path] == label for path, (name, label) in zip(paths, truth)
                if name == variant]
        assert np.mean(kept) >= 0.95, (variant, np.mean(kept))
    assert right.sum() >= 285


@needs_pillow
def test_transparent_background_takes_the_contrasting_colour():
    """Strokes on a transparent background, white or black: the field of white on black."""
    from PIL import Image, ImageDraw

    from harness import export
    modules = export._pillow()
    plain = Image.new("L", (60, 90), 0)
    ImageDraw.Draw(plain).line([(10, 10), (45, 80)], fill=255, width=7)
    expected = export._field(Image, export._grey(modules, plain))
    for colour in (255, 0):
        image = Image.new("RGBA", plain.size, (0, 0, 0, 0))
        image.paste((colour, colour, colour, 255), mask=plain)
        np.testing.assert_array_equal(export._field(Image, export._grey(modules, image)), expected)
