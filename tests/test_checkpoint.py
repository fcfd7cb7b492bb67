"""Checkpoints: MXNet-format files, ecosystem compatibility, exact resume, safe failure."""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import pytest

import data
import train_mnist
from helpers import ROOT, run_cli, tree_bytes


@pytest.fixture
def ck(tmp_path):
    """An empty folder for checkpoints, apart from the synthetic data."""
    folder = tmp_path / "ck"
    folder.mkdir()
    return folder


def _config(folder, prefix, **overrides):
    settings = dict(data_dir=folder, num_epochs=4, num_hidden=(32, 16), model_prefix=prefix)
    settings.update(overrides)
    return train_mnist.Config(**settings)


def test_saves_every_period_and_the_last_epoch_in_mxnet_format(synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=5, save_period=2))
    assert sorted(os.listdir(ck)) == [
        "mlp-0002.params", "mlp-0002.state.json", "mlp-0004.params", "mlp-0004.state.json",
        "mlp-0005.params", "mlp-0005.state.json", "mlp-plots", "mlp-symbol.json"]
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 5)
    assert symbol.list_outputs() == ["softmax_output"] and aux_params == {}
    assert sorted(arg_params) == ["fc1_bias", "fc1_weight", "fc2_bias", "fc2_weight", "fc3_bias", "fc3_weight"]
    state = json.load(open(prefix + "-0005.state.json"))
    assert state["epoch"] == 5 and [r["epoch"] for r in state["history"]] == [1, 2, 3, 4, 5]
    assert state["config"]["num_hidden"] == [32, 16] and state["rng"][0] == "MT19937"


@pytest.mark.filterwarnings("ignore:Cannot decide type")
def test_saved_model_scores_the_same_through_module_and_gluon(synthetic_dir, ck):
    prefix = str(ck / "mlp")
    history = train_mnist.train(_config(synthetic_dir, prefix, num_epochs=2, lr=0.05))
    _, _, test_x, test_y = data.load_mnist(synthetic_dir)
    ours = train_mnist.score(_config(synthetic_dir, prefix, load_epoch=2, evaluate=True))
    assert ours["acc"] == pytest.approx(history[-1]["test_acc"], abs=1e-12)

    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 2)
    module = mx.mod.Module(symbol, context=mx.cpu())
    test_iter = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), batch_size=len(test_x))
    module.bind(test_iter.provide_data, test_iter.provide_label, for_training=False)
    module.set_params(arg_params, aux_params)
    assert dict(module.score(test_iter, "acc"))["accuracy"] == pytest.approx(ours["acc"], abs=1e-12)

    # SoftmaxOutput's label is an input of the symbol; its forward output does not depend on it.
    net = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data", "softmax_label"], prefix + "-0002.params")
    probs = net(mx.nd.array(test_x), mx.nd.zeros(len(test_x))).asnumpy()
    assert np.mean(probs.argmax(axis=1) == test_y) == pytest.approx(ours["acc"], abs=1e-12)


@pytest.mark.parametrize("settings", [
    dict(), dict(mom=0.9), dict(optimizer="nag", mom=0.9),
    dict(optimizer="adam", lr=0.001, wd=1e-4, lr_scheduler="step", lr_step_epochs=(3,)),
    dict(loss="manual", mom=0.5)], ids=["sgd", "momentum", "nag", "adam-step", "manual-loss"])
def test_resume_is_bit_identical_to_a_straight_run(synthetic_dir, ck, settings):
    straight, split = str(ck / "straight"), str(ck / "split")
    common = dict(settings, batch_size=64, plot_dir=str(ck / "pics"))
    full = train_mnist.train(_config(synthetic_dir, straight, num_epochs=5, **common))
    train_mnist.train(_config(synthetic_dir, split, num_epochs=2, **common))
    resumed = train_mnist.train(_config(synthetic_dir, split, num_epochs=5, load_epoch=2, **common))
    assert open(straight + "-0005.params", "rb").read() == open(split + "-0005.params", "rb").read()
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in resumed] == [[r[k] for k in figures] for r in full]
    saved = json.load(open(split + "-0005.state.json"))["optimizer"]
    assert saved == json.load(open(straight + "-0005.state.json"))["optimizer"] and saved["num_update"] == 5 * 17
    assert len(saved["state"].get("all", [])) == {"sgd": int(bool(settings.get("mom"))), "nag": 1,
                                                  "adam": 2}[settings.get("optimizer", "sgd")]


def test_resume_with_another_optimizer_is_refused(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=1, mom=0.9))
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix,
                           "--load-epoch", "1", "--num-epochs", "2", "--optimizer", "adam", "--lr", "0.001")
    assert code == 2 and "trained with --optimizer sgd --mom 0.9" in err and err.count("\n") == 1


def test_evaluate_only_scores(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=1))
    before = tree_bytes(ck)
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix,
                             "--load-epoch", "1", "--evaluate")
    assert code == 0 and err == "" and "epoch   1" not in out
    assert out.splitlines()[-1].startswith(f"checkpoint {prefix}-0001: test loss ")
    assert tree_bytes(ck) == before


def test_divergence_stops_with_the_epoch_and_batch_and_keeps_the_checkpoint(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=1))
    before = tree_bytes(ck)
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix,
                             "--load-epoch", "1", "--num-epochs", "3", "--lr", "1e8")
    assert code == 3 and err.count("\n") == 1
    assert "training diverged: non-finite loss in epoch 2, batch " in err and "smaller --lr" in err
    assert tree_bytes(ck) == before


def _saved_checkpoint(synthetic_dir, folder):
    prefix = str(folder / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=1))
    return prefix


@pytest.mark.parametrize("case, expected", [
    ("missing checkpoint", "no checkpoint at"),
    ("corrupt params", "is not a readable MXNet params file"),
    ("corrupt sidecar", "is not valid JSON"),
    ("other network", "but the configured network has"),
    ("unwritable folder", "is not a writable folder"),
    ("evaluate without a checkpoint", "--evaluate needs --load-epoch"),
    ("load without a prefix", "--load-epoch needs --model-prefix"),
])
def test_bad_checkpoint_input_is_one_line_exit_2_and_writes_nothing(capsys, synthetic_dir, ck, case, expected):
    prefix = _saved_checkpoint(synthetic_dir, ck)
    argv = ["--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix, "--load-epoch", "1",
            "--num-epochs", "2"]
    if case == "missing checkpoint":
        argv[argv.index("--load-epoch") + 1] = "7"
        argv[argv.index("--num-epochs") + 1] = "9"
    elif case == "corrupt params":
        with open(prefix + "-0001.params", "wb") as f:
            f.write(b"\x00garbage" * 10)
    elif case == "corrupt sidecar":
        with open(prefix + "-0001.state.json", "w") as f:
            f.write('{"epoch": 1, "hist')
    elif case == "other network":
        argv[argv.index("--num-hidden") + 1] = "64,16"
    elif case == "unwritable folder":
        argv[argv.index(prefix)] = str(ck / "missing-folder" / "mlp")
    elif case == "evaluate without a checkpoint":
        argv = ["--data-dir", synthetic_dir, "--evaluate"]
    elif case == "load without a prefix":
        argv = ["--data-dir", synthetic_dir, "--load-epoch", "1"]
    before = tree_bytes(ck)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert "epoch   2" not in out
    assert tree_bytes(ck) == before


def test_sigkill_during_saves_never_leaves_a_torn_checkpoint(synthetic_dir, ck):
    """Kill a training process at random moments while it saves every epoch; the newest checkpoint always loads."""
    prefix = str(ck / "mlp")
    command = [sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir", synthetic_dir, "--num-hidden",
               "32,16", "--batch-size", "1050", "--num-epochs", "400", "--model-prefix", prefix]
    rng = np.random.RandomState(0)
    kills = 0
    for _ in range(8):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Let it get past start-up and into saving, then kill it somewhere inside the save loop.
        deadline = time.time() + 60
        while not os.path.exists(prefix + "-0001.params") and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        epochs = sorted(int(name[4:8]) for name in os.listdir(ck) if name.endswith(".params"))
        assert epochs, "no checkpoint was written before the kill"
        newest = epochs[-1]
        symbol, arg_params, _ = mx.model.load_checkpoint(prefix, newest)
        assert arg_params["fc1_weight"].shape == (32, 784)
        state = json.load(open(f"{prefix}-{newest:04d}.state.json"))
        assert state["epoch"] == newest
        leftovers = [name for name in os.listdir(ck) if name.startswith(".")]
        assert all(name.endswith(".tmp") for name in leftovers)  # at most a killed writer's hidden temporary
        for name in os.listdir(ck):
            os.remove(ck / name)
    assert kills == 8


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_last_step_and_the_printed_resume_continues_exactly(capsys, synthetic_dir, ck, signum):
    flags = ["--data-dir", synthetic_dir, "--num-hidden", "32,16", "--batch-size", "10", "--num-epochs", "30",
             "--mom", "0.9"]
    prefix = str(ck / "mlp")
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "train_mnist.py"), *flags, "--model-prefix", prefix],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.exists(prefix + "-0002.params") and time.time() < deadline:
        time.sleep(0.005)
    finished = {name: data for name, data in tree_bytes(ck).items() if name[4:8].isdigit()}
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert f"stopped by {signal.Signals(signum).name} in epoch " in err and err.count("\n") == 1
    assert os.path.exists(prefix + "-interrupted.params") and os.path.exists(prefix + "-interrupted.state.json")
    after = tree_bytes(ck)
    assert all(after[name] == data for name, data in finished.items())  # no finished epoch overwritten
    state = json.load(open(prefix + "-interrupted.state.json"))
    assert state["in_epoch"]["epoch"] == state["epoch"] + 1 and state["in_epoch"]["batches_done"] >= 1

    command = shlex.split(err.split("Resume with: ")[1])
    assert command[:2] == ["python", "train_mnist.py"] and "--resume" in command
    code, out, _ = run_cli(capsys, *command[2:])
    assert code == 0 and out.splitlines()[1].startswith(f"epoch {state['in_epoch']['epoch']:3d}")

    straight = str(ck / "straight")
    code, _, _ = run_cli(capsys, *flags, "--model-prefix", straight)
    assert code == 0
    assert open(prefix + "-0030.params", "rb").read() == open(straight + "-0030.params", "rb").read()
    resumed, whole = (json.load(open(p + "-0030.state.json")) for p in (prefix, straight))
    assert resumed["optimizer"] == whole["optimizer"]
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in resumed["history"]] == [[r[k] for k in figures] for r in whole["history"]]
