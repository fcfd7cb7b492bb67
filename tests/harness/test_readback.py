"""What a checkpoint holds, read back: its weights checked, its network taken from its own symbol.

The weights of a params file, this trainer's or MXNet's own, are refused in one line unless each is
a dense float32 array of its parameter's shape with finite values. --evaluate, --predict and
--export-onnx take the network and its widths from the checkpoint's symbol; a flag that
contradicts it is refused, naming what it holds.
"""
import importlib

import mxnet as mx
import numpy as np
import pytest

import network
import train_mnist
from harness import checkpoint
from harness.errors import CheckpointError
from helpers import config, need_onnx, run_cli, synthetic_arrays, tree_bytes

SHAPES = {"fc_weight": (4, 3), "fc_bias": (4,)}


def _arrays(weight=None, bias=None):
    """SHAPES' arrays, float32, with weight or bias replaced."""
    return {"fc_weight": np.ones((4, 3), np.float32) if weight is None else weight,
            "fc_bias": np.zeros(4, np.float32) if bias is None else bias}


def _dense(values):
    return {f"arg:{name}": mx.nd.array(value, dtype=value.dtype) for name, value in values.items()}


_NAN = np.full(4, np.nan, np.float32)
# (id, what mx.nd.save writes, a fragment of the one line)
BAD_WEIGHTS = [
    ("row_sparse", dict(_dense(_arrays()),
                        **{"arg:fc_weight": mx.nd.sparse.row_sparse_array(np.ones((4, 3)))}),
     "fc_weight is a row_sparse array; this trainer reads dense (default storage) weights"),
    ("csr", dict(_dense(_arrays()), **{"arg:fc_weight": mx.nd.sparse.csr_matrix(np.eye(4, 3))}),
     "fc_weight is a csr array"),
    ("float16", _dense(_arrays(np.ones((4, 3), np.float16))), "fc_weight is of dtype float16"),
    ("float64", _dense(_arrays(bias=np.zeros(4))), "fc_bias is of dtype float64"),
    ("int32", _dense(_arrays(np.ones((4, 3), np.int32))), "fc_weight is of dtype int32"),
    ("uint8", _dense(_arrays(np.ones((4, 3), np.uint8))), "fc_weight is of dtype uint8"),
    ("NaN", _dense(_arrays(bias=_NAN)), "fc_bias holds values that are not finite"),
    ("infinity", _dense(_arrays(np.full((4, 3), np.inf, np.float32))),
     "fc_weight holds values that are not finite"),
    ("another shape", _dense(_arrays(np.ones((3, 4), np.float32))),
     "holds fc_bias (4,), fc_weight (3, 4), but the network has fc_bias (4,), fc_weight (4, 3)"),
    ("a name short", {"arg:fc_weight": mx.nd.ones((4, 3))}, "holds fc_weight (4, 3), but"),
    ("an auxiliary state", dict(_dense(_arrays()), **{"aux:fc_mean": mx.nd.ones(4)}),
     "holds fc_bias (4,), fc_weight (4, 3), aux:fc_mean (4,), but"),
    ("unnamed", [mx.nd.ones((4, 3)), mx.nd.zeros(4)], "holds unnamed arrays, not a dict of them"),
]


@pytest.mark.parametrize("name, saved, expected", BAD_WEIGHTS, ids=[c[0] for c in BAD_WEIGHTS])
def test_weights_read_back_must_be_dense_float32_finite_and_of_the_networks_names(
    tmp_path, name, saved, expected
):
    path = str(tmp_path / "m-0001.params")
    mx.nd.save(path, saved)
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load_weights(path, SHAPES)
    assert str(refused.value).startswith(path) and expected in str(refused.value)


def test_weights_that_pass_are_returned_by_name(tmp_path):
    path = str(tmp_path / "m-0001.params")
    mx.nd.save(path, _dense(_arrays()))
    weights = checkpoint.load_weights(path, SHAPES)
    assert sorted(weights) == ["fc_bias", "fc_weight"] and weights["fc_weight"].sum() == 12


def test_a_params_file_larger_than_the_network_needs_is_not_read(tmp_path):
    path = str(tmp_path / "m-0001.params")
    mx.nd.save(path, dict(_dense(_arrays()), **{"arg:padding": mx.nd.zeros(10_000)}))
    with pytest.raises(CheckpointError, match="holds more than this configuration needs"):
        checkpoint.load_weights(path, SHAPES)
    (tmp_path / "m-0002.params").write_bytes(b"\x00garbage" * 4)
    with pytest.raises(CheckpointError, match="is not a readable MXNet params file"):
        checkpoint.load_weights(str(tmp_path / "m-0002.params"), SHAPES)


def _mxnets_own(prefix, epoch, convert):
    """An MXNet checkpoint of the MLP 32,16 (symbol and params) whose weights are convert(array)."""
    symbol = network.get_symbol("mlp", (32, 16))
    shapes = symbol.infer_shape(data=(1, 784), softmax_label=(1,))[0]
    rng = np.random.RandomState(0)
    weights = {name: convert(rng.uniform(-0.1, 0.1, shape).astype(np.float32))
               for name, shape in zip(symbol.list_arguments(), shapes)
               if name not in ("data", "softmax_label")}
    symbol.save(f"{prefix}-symbol.json")
    mx.nd.save(f"{prefix}-{epoch:04d}.params",
               {f"arg:{name}": value for name, value in weights.items()})


_CONVERSIONS = {
    "row_sparse": (lambda a: mx.nd.sparse.row_sparse_array(a), "is a row_sparse array"),
    "float16": (lambda a: mx.nd.array(a, dtype=np.float16), "is of dtype float16"),
    "int32": (lambda a: mx.nd.array(np.round(a * 10), dtype=np.int32), "is of dtype int32"),
    "NaN": (lambda a: mx.nd.array(np.where(a > 0.09, np.nan, a)), "not finite (NaN or inf)"),
}


@pytest.mark.parametrize("kind", _CONVERSIONS)
@pytest.mark.parametrize("use", ["--evaluate", "--warm-start"])
def test_mxnets_own_weights_of_another_kind_are_one_line_under_evaluate_and_warm_start(
    capsys, synthetic_dir, tmp_path, kind, use
):
    prefix = str(tmp_path / "m")
    convert, expected = _CONVERSIONS[kind]
    _mxnets_own(prefix, 3, convert)
    before = tree_bytes(tmp_path)
    extra = ["--evaluate"] if use == "--evaluate" else ["--warm-start", "--num-epochs", "4"]
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16",
                             "--model-prefix", prefix, "--load-epoch", "3", *extra)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{prefix}-0003.params: fc" in err and expected in err
    assert "epoch   4" not in out and tree_bytes(tmp_path) == before


# A checkpoint says what it holds.

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data folder, {name: prefix}) of an MLP 32,16 and a LeNet trained an epoch each."""
    from helpers import write_mnist
    root = tmp_path_factory.mktemp("trained")
    (root / "mnist").mkdir()
    write_mnist(str(root / "mnist"))
    prefixes = {"mlp": str(root / "mlp"), "lenet": str(root / "lenet")}
    for name, hidden in (("mlp", (32, 16)), ("lenet", (128, 64))):
        train_mnist.train(config(str(root / "mnist"), network=name, num_hidden=hidden,
                                 num_epochs=1, model_prefix=prefixes[name]))
    return str(root / "mnist"), prefixes


def test_evaluate_takes_the_network_and_widths_from_the_checkpoint(trained, capsys):
    folder, prefixes = trained
    for name in ("mlp", "lenet"):
        code, out, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", prefixes[name],
                                 "--load-epoch", "1", "--evaluate")
        assert code == 0 and err == "", err
        held = "--network mlp --num-hidden 32,16" if name == "mlp" else "--network lenet"
        assert f"checkpoint {prefixes[name]}-0001 holds {held}" in out
        assert out.splitlines()[-1].startswith(f"checkpoint {prefixes[name]}-0001: test loss ")


def test_score_from_python_reads_the_checkpoints_own_network(trained):
    folder, prefixes = trained
    # From Python, the fields left at their defaults say nothing of the network.
    scored = train_mnist.score(config(folder, num_hidden=(128, 64), model_prefix=prefixes["lenet"],
                                      load_epoch=1, evaluate=True))
    assert 0 <= scored["acc"] <= 1


@pytest.mark.parametrize("name, flags, expected", [
    ("lenet", ["--network", "mlp"],
     "--network mlp contradicts checkpoint {p}-0001, which holds --network lenet: leave --network "
     "out"),
    ("lenet", ["--num-hidden", "32,16"],
     "--num-hidden 32,16 contradicts checkpoint {p}-0001, which holds --network lenet"),
    ("mlp", ["--num-hidden", "128,64"],
     "--num-hidden 128,64 contradicts checkpoint {p}-0001, which holds --network mlp --num-hidden "
     "32,16"),
    ("mlp", ["--network", "lenet"], "--network lenet contradicts checkpoint {p}-0001"),
])
@pytest.mark.parametrize("use", ["--evaluate", "--predict"])
def test_a_flag_that_contradicts_the_checkpoint_is_refused_naming_what_it_holds(
    trained, capsys, tmp_path, name, flags, expected, use
):
    folder, prefixes = trained
    extra = ["--predict", str(tmp_path / "a.png")] if use == "--predict" else [use]
    code, out, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", prefixes[name],
                             "--load-epoch", "1", *flags, *extra)
    assert code == 2 and err.count("\n") == 1
    assert expected.replace("{p}", prefixes[name]) in err


@pytest.mark.skipif(importlib.util.find_spec("PIL") is None, reason="Pillow is not installed")
def test_predict_on_a_lenet_checkpoint_needs_no_network_flag(trained, capsys, tmp_path):
    from PIL import Image
    folder, prefixes = trained
    digit = synthetic_arrays()[2][0]
    Image.fromarray(digit).save(tmp_path / "digit.png")
    code, out, err = run_cli(capsys, "--model-prefix", prefixes["lenet"], "--load-epoch", "1",
                             "--predict", str(tmp_path / "digit.png"))
    assert code == 0 and err == "", err
    assert out.splitlines()[-1].startswith(f"{tmp_path / 'digit.png'}: ")


def test_a_symbol_of_no_network_this_trainer_builds_is_refused(trained, capsys, tmp_path):
    folder, _ = trained
    prefix = str(tmp_path / "m")
    data = mx.sym.var("data")
    other = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(mx.sym.Activation(
        mx.sym.FullyConnected(data, num_hidden=8, name="fc1"), act_type="sigmoid"),
        num_hidden=10, name="fc2"), name="softmax")
    other.save(prefix + "-symbol.json")
    mx.nd.save(prefix + "-0001.params", {"arg:fc1_weight": mx.nd.ones((8, 784))})
    code, _, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", prefix,
                           "--load-epoch", "1", "--evaluate")
    assert code == 2 and err.count("\n") == 1
    assert f"{prefix}-symbol.json holds a network that this trainer does not build" in err


def test_export_of_a_lenet_checkpoint_needs_no_network_flag_and_writes_its_own_file_again(
    trained, capsys, tmp_path
):
    need_onnx()
    folder, prefixes = trained
    target = str(tmp_path / "lenet.onnx")
    for _ in range(2):
        code, out, err = run_cli(capsys, "--data-dir", folder, "--model-prefix", prefixes["lenet"],
                                 "--load-epoch", "1", "--export-onnx", target)
        assert code == 0 and err == "" and f"onnx: wrote {target} (opset 13)" in out, err
