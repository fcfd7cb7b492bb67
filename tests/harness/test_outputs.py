"""harness/outputs.py: every output a run writes, checked once against the disk before it starts.

Each refusal asserts its one line and that nothing on disk changed; the accepted cases show that the
check refuses by kind, not by name alone.
"""
import json
import os

import pytest

from harness import outputs
from harness.checkpoint import Tag
from harness.datasets import FILES
from harness.errors import OutputError
from helpers import (
    config,
    drawn,
    fake_checkpoint,
    fifo,
    make_folder,
    need_onnx,
    nothing,
    run_cli,
    symlink,
    tree_bytes,
    write_file,
    write_mnist,
)

_PNG = b"\x89PNG\r\n\x1a\n"


def _other_run(prefix="b2"):
    """Another run's checkpoints, of epochs 1 and 2, under d/PREFIX."""
    def setup(d):
        for epoch in (1, 2):
            fake_checkpoint(str(d / prefix), Tag(epoch), {"first_epoch": 1})
    return setup


def _hard_linked(name, payload):
    def setup(d):
        (d / name).write_bytes(payload)
        os.link(d / name, d / "elsewhere")
    return setup


def _state_copy(d):
    """A checkpoint's state under a name of no checkpoint: one JSON line."""
    keys = ("config", "history", "first_epoch", "rng", "num_update", "data", "metrics",
            "optimizer")
    (d / "copy.json").write_text(json.dumps(dict.fromkeys(keys, 1)) + "\n")


def _data(d):
    (d / "mnist").mkdir()
    write_mnist(str(d / "mnist"))


def _cache(dataset):
    def setup(d):
        (d / "mxnet_home" / "datasets" / dataset).mkdir(parents=True)
        write_mnist(str(d / "mxnet_home" / "datasets" / dataset))
    return setup


def _all(*setups):
    def setup(d):
        for one in setups:
            one(d)
    return setup


_EXPORT = dict(load_epoch=1, export_onnx="{d}/model.onnx")
# (id, setup of the case's folder d, config settings ({d} is d), a fragment of the one line)
REFUSED = [
    # Outputs aimed at files of other runs, or at the data.
    ("metrics file at another prefix's symbol", _other_run(),
     dict(metrics_file="{d}/b2-symbol.json"),
     "--metrics-file {d}/b2-symbol.json is named as a file of the checkpoints under prefix {d}/b2"),
    ("metrics file at another prefix's next state", _other_run(),
     dict(metrics_file="{d}/b2-0003.state.json"), "under prefix {d}/b2; give another path"),
    ("metrics file linked to another prefix's manifest",
     _all(_other_run(), symlink("m.jsonl", "b2-0001.manifest.json")),
     dict(metrics_file="{d}/m.jsonl"), "is named as a file of the checkpoints under prefix {d}/b2"),
    ("metrics file that is a state under another name", _state_copy,
     dict(metrics_file="{d}/copy.json"), "holds a checkpoint's state (line 1), not metrics"),
    ("metrics file with another name (a hard link)", _hard_linked("m.jsonl", b'{"epoch": 1}\n'),
     dict(metrics_file="{d}/m.jsonl"), "has other names (hard links)"),
    ("metrics file that is a picture", write_file("m.png", _PNG + b"\0" * 40),
     dict(metrics_file="{d}/m.png"), "holds something else than JSON lines (line 1"),
    ("metrics file that is a data file", _data,
     dict(metrics_file="{d}/mnist/t10k-images-idx3-ubyte.gz", data_dir="{d}/mnist"),
     "is a data file of --data-dir"),
    ("metrics file that is a file of the kmnist cache", _cache("kmnist"),
     dict(metrics_file="{d}/mxnet_home/datasets/kmnist/train-labels-idx1-ubyte.gz"),
     "is a data file of the kmnist cache"),
    ("metrics file's lock that is someone's file", write_file("m.jsonl.lock", b"my notes\n"),
     dict(metrics_file="{d}/m.jsonl"), "--metrics-file's lock {d}/m.jsonl.lock is not a lock file"),
    ("prefix's lock that is someone's file", write_file("mlp.lock", b"# todo\n"),
     dict(model_prefix="{d}/mlp"), "--model-prefix's lock {d}/mlp.lock is not a lock file"),
    ("prefix's lock that is a lock with another name", _hard_linked("mlp.lock", b""),
     dict(model_prefix="{d}/mlp"), "has other names (hard links)"),
    ("picture that Matplotlib did not draw", write_file("pics/misclassified.png", _PNG + b"mine"),
     dict(plot_dir="{d}/pics"), "a picture {d}/pics/misclassified.png is not a picture that "
                                "Matplotlib drew"),
    ("picture linked to a data file",
     _all(_data, make_folder("pics"), symlink("pics/confusion_matrix.png",
                                          "mnist/t10k-labels-idx1-ubyte.gz")),
     dict(plot_dir="{d}/pics", data_dir="{d}/mnist"), "is a data file of --data-dir"),
    ("export onto another run's params", _all(_other_run("b3y"), _other_run("mlp")),
     dict(_EXPORT, model_prefix="{d}/mlp", export_onnx="{d}/b3y-0002.params"),
     "--export-onnx {d}/b3y-0002.params is named as a file of the checkpoints under prefix "
     "{d}/b3y"),
    ("export onto a checkpoint of the prefix it reads", _other_run("mlp"),
     dict(_EXPORT, model_prefix="{d}/mlp", export_onnx="{d}/mlp-0001.state.nd"),
     "is a file of the checkpoints under --model-prefix {d}/mlp"),
    ("export onto a metrics file", write_file("m.jsonl", b'{"epoch": 1}\n'),
     dict(_EXPORT, model_prefix="{d}/mlp", export_onnx="{d}/m.jsonl"),
     "is not an ONNX model exported by this trainer"),
    ("export onto the prefix's lock", nothing,
     dict(_EXPORT, model_prefix="{d}/mlp", export_onnx="{d}/mlp.lock"),
     "is the same file as --model-prefix's lock"),
    ("export onto a file of the mnist cache", _cache("mnist"),
     dict(_EXPORT, model_prefix="{d}/mlp",
          export_onnx="{d}/mxnet_home/datasets/mnist/t10k-labels-idx1-ubyte.gz"),
     "is a data file of the mnist cache"),
    # Outputs that could not be written at the first save.
    ("folder at the prefix's symbol", make_folder("mlp-symbol.json"), dict(model_prefix="{d}/mlp"),
     "{d}/mlp-symbol.json is a folder, where --model-prefix {d}/mlp saves its checkpoints"),
    ("dangling symlink at the prefix's inference symbol",
     symlink("mlp-inference-symbol.json", "gone/x"), dict(model_prefix="{d}/mlp"),
     "mlp-inference-symbol.json is a symlink to nothing, where --model-prefix"),
    ("FIFO at a checkpoint's params", fifo("mlp-0004.params"), dict(model_prefix="{d}/mlp"),
     "mlp-0004.params is not a regular file, where --model-prefix"),
    ("dangling symlink at the metrics file", symlink("m.jsonl", "gone/m.jsonl"),
     dict(metrics_file="{d}/m.jsonl"), "--metrics-file {d}/m.jsonl is a symlink to "),
    ("dangling symlink at the prefix's lock", symlink("mlp.lock", "gone.lock"),
     dict(model_prefix="{d}/mlp"), "--model-prefix's lock {d}/mlp.lock is a symlink to "),
    ("dangling symlink at a picture", _all(make_folder("pics"),
                                           symlink("pics/training_curves.png", "gone.png")),
     dict(plot_dir="{d}/pics"), "a picture {d}/pics/training_curves.png is a symlink to "),
    ("dangling symlink as the pictures' folder", symlink("pics", "gone"),
     dict(plot_dir="{d}/pics"), "--plot-dir {d}/pics is a symlink to "),
    ("dangling symlink at the ONNX model", symlink("model.onnx", "gone/model.onnx"),
     dict(_EXPORT, model_prefix="{d}/mlp"), "--export-onnx {d}/model.onnx is a symlink to "),
]


def _settings(d, settings):
    return {key: value.replace("{d}", str(d)) if isinstance(value, str) else value
            for key, value in settings.items()}


def _mode(settings):
    return "export" if settings.get("export_onnx") else "train"


@pytest.mark.parametrize("name, setup, settings, expected", REFUSED,
                         ids=[case[0] for case in REFUSED])
def test_an_output_that_is_not_its_own_kind_or_a_new_name_is_refused(
    tmp_path, name, setup, settings, expected
):
    setup(tmp_path)
    before = tree_bytes(tmp_path)
    settings = _settings(tmp_path, settings)
    with pytest.raises(OutputError) as refused:
        outputs.check(config(**settings), _mode(settings))
    assert expected.replace("{d}", str(tmp_path)) in str(refused.value)
    assert "\n" not in str(refused.value) and tree_bytes(tmp_path) == before


def _onnx_export(path):
    """A model with the doc string export_onnx writes: an earlier export of this trainer's."""
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["data"], ["softmax"])], "g",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("softmax", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, producer_name="mxnet",
                              doc_string="mlp of checkpoint mlp-0001")
    path.write_bytes(model.SerializeToString())


def test_outputs_of_their_own_kind_are_written_again(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"from": "an earlier run"}\n{"epoch": 1}\n\n')
    (tmp_path / "m.jsonl.lock").write_text("process 4242 (python train_mnist.py)")
    (tmp_path / "mlp.lock").write_bytes(b"")
    (tmp_path / "pics").mkdir()
    drawn(tmp_path / "pics" / "training_curves.png")
    os.symlink(tmp_path / "m.jsonl", tmp_path / "link.jsonl")
    settings = dict(metrics_file=str(tmp_path / "link.jsonl"), model_prefix=str(tmp_path / "mlp"),
                    plot_dir=str(tmp_path / "pics"))
    outputs.check(config(**settings), "train")
    fake_checkpoint(str(tmp_path / "mlp"), Tag(1))
    outputs.check(config(**settings, start_over=True), "train")


def test_an_earlier_export_is_written_again_and_an_onnx_model_of_someone_elses_is_not(tmp_path):
    need_onnx()
    _onnx_export(tmp_path / "model.onnx")
    settings = dict(_EXPORT, model_prefix=str(tmp_path / "mlp"),
                    export_onnx=str(tmp_path / "model.onnx"))
    outputs.check(config(**settings), "export")
    from onnx import helper
    model = helper.make_model(helper.make_graph([], "theirs", [], []), producer_name="pytorch")
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(OutputError, match="is not an ONNX model exported by this trainer"):
        outputs.check(config(**settings), "export")


def test_a_reading_mode_but_export_writes_nothing_and_checks_nothing(tmp_path):
    make_folder("mlp-symbol.json/inside")(tmp_path)
    settings = dict(model_prefix=str(tmp_path / "mlp"), load_epoch=1, metrics_file="/dev/null")
    for mode in ("evaluate", "predict"):
        outputs.check(config(**settings), mode)


def test_an_export_onto_mnist_dirs_data_is_refused_before_anything_is_read(
    capsys, tmp_path, monkeypatch
):
    need_onnx()
    folder = tmp_path / "mnist"
    folder.mkdir()
    write_mnist(str(folder))
    monkeypatch.setenv("MNIST_DIR", str(folder))
    prefix = str(tmp_path / "ck" / "mlp")
    os.mkdir(tmp_path / "ck")
    fake_checkpoint(prefix, Tag(1))
    before = tree_bytes(tmp_path)
    target = str(folder / (FILES[3] + ".gz"))
    code, out, err = run_cli(capsys, "--model-prefix", prefix, "--load-epoch", "1",
                             "--export-onnx", target)
    assert code == 2 and err == (f"train_mnist.py: error: --export-onnx {target} is a data file "
                                 "of MNIST_DIR; give another path\n")
    assert tree_bytes(tmp_path) == before


def test_a_metrics_file_at_another_runs_symbol_is_refused_before_anything_trains(
    capsys, synthetic_dir, tmp_path
):
    _other_run()(tmp_path)
    before = tree_bytes(tmp_path)
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-epochs", "1",
                             "--metrics-file", str(tmp_path / "b2-symbol.json"))
    assert code == 2 and err.count("\n") == 1 and "named as a file of the checkpoints" in err
    assert "epoch   1" not in out and tree_bytes(tmp_path) == before
