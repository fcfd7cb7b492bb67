"""Checkpoints: MXNet-format files as one unit, ecosystem compatibility, exact resume, safe failure."""
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
        "mlp-0002.manifest.json", "mlp-0002.params", "mlp-0002.state.json",
        "mlp-0004.manifest.json", "mlp-0004.params", "mlp-0004.state.json",
        "mlp-0005.manifest.json", "mlp-0005.params", "mlp-0005.state.json", "mlp-plots", "mlp-symbol.json"]
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 5)
    assert symbol.list_outputs() == ["softmax_output"] and aux_params == {}
    assert sorted(arg_params) == ["fc1_bias", "fc1_weight", "fc2_bias", "fc2_weight", "fc3_bias", "fc3_weight"]
    state = json.load(open(prefix + "-0005.state.json"))
    assert state["epoch"] == 5 and [r["epoch"] for r in state["history"]] == [1, 2, 3, 4, 5]
    assert state["config"]["num_hidden"] == [32, 16] and state["rng"][0] == "MT19937"
    manifest = json.load(open(prefix + "-0005.manifest.json"))
    assert {entry["name"] for entry in manifest["files"].values()} == {
        "mlp-symbol.json", "mlp-0005.params", "mlp-0005.state.json"}


@pytest.mark.filterwarnings("ignore:Cannot decide type")
def test_saved_model_scores_the_same_through_module_and_gluon(synthetic_dir, ck):
    prefix = str(ck / "mlp")
    history = train_mnist.train(_config(synthetic_dir, prefix, num_epochs=2, lr=0.05))
    _, _, test_x, test_y = data.load_mnist(synthetic_dir)
    ours, = train_mnist.train(_config(synthetic_dir, prefix, load_epoch=2, evaluate=True))
    assert ours["test_acc"] == pytest.approx(history[-1]["test_acc"], abs=1e-12)

    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 2)
    module = mx.mod.Module(symbol, context=mx.cpu())
    test_iter = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), batch_size=len(test_x))
    module.bind(test_iter.provide_data, test_iter.provide_label, for_training=False)
    module.set_params(arg_params, aux_params)
    assert dict(module.score(test_iter, "acc"))["accuracy"] == pytest.approx(ours["test_acc"], abs=1e-12)

    # SoftmaxOutput's label is an input of the symbol; its forward output does not depend on it.
    net = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data", "softmax_label"], prefix + "-0002.params")
    probs = net(mx.nd.array(test_x), mx.nd.zeros(len(test_x))).asnumpy()
    assert np.mean(probs.argmax(axis=1) == test_y) == pytest.approx(ours["test_acc"], abs=1e-12)


@pytest.mark.parametrize("settings", [
    dict(), dict(mom=0.9), dict(optimizer="nag", mom=0.9, wd=1e-3),
    dict(optimizer="adam", wd=1e-4, lr_scheduler="step", lr_step_epochs=(1,)),
    dict(loss="manual", mom=0.5), dict(fast=False, mom=0.9), dict(clip_gradient=0.05, mom=0.9)],
    ids=["sgd", "momentum", "nag", "adam-step", "manual-loss", "plain", "clip"])
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
    expected = {"sgd": int(bool(settings.get("mom"))), "nag": 1, "adam": 2}[settings.get("optimizer", "sgd")]
    assert {len(arrays) for arrays in saved["state"].values()} == {expected}
    assert sorted(saved["state"]) == ["fc1_bias", "fc1_weight", "fc2_bias", "fc2_weight", "fc3_bias", "fc3_weight"]


def test_a_checkpoint_of_the_fast_path_resumes_on_the_plain_one(synthetic_dir, ck):
    # The optimizer's state is saved by parameter name on both paths, so a checkpoint serves either.
    straight, split = str(ck / "straight"), str(ck / "split")
    full = train_mnist.train(_config(synthetic_dir, straight, num_epochs=4, mom=0.9))
    train_mnist.train(_config(synthetic_dir, split, num_epochs=2, mom=0.9))
    resumed = train_mnist.train(_config(synthetic_dir, split, num_epochs=4, mom=0.9, load_epoch=2, fast=False))
    for a, b in zip(resumed[2:], full[2:]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    ours, theirs = (mx.nd.load(p + "-0004.params") for p in (split, straight))
    for name in ours:
        np.testing.assert_allclose(ours[name].asnumpy(), theirs[name].asnumpy(), rtol=1e-5, atol=1e-6)


def test_resume_with_another_optimizer_is_refused(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=1, mom=0.9))
    code, _, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix,
                           "--load-epoch", "1", "--num-epochs", "2", "--optimizer", "adam")
    assert code == 2 and "field config.optimizer" in err and "'sgd'" in err and err.count("\n") == 1


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


def test_a_fresh_run_on_a_prefix_with_checkpoints_stops_and_names_the_way_on(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=2))
    before = tree_bytes(ck)
    code, out, err = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix)
    assert code == 2 and err.count("\n") == 1 and "epoch   1" not in out
    assert f"the newest intact checkpoint is {prefix}-0002" in err and "--load-epoch 2" in err
    assert "--start-over" in err and tree_bytes(ck) == before
    code, out, _ = run_cli(capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix,
                           "--start-over", "--num-epochs", "1")
    assert code == 0 and "started over: removed 2 checkpoint file set(s)" in out
    assert not os.path.exists(prefix + "-0002.params") and os.path.exists(prefix + "-0001.manifest.json")


def _saved_checkpoint(synthetic_dir, folder):
    prefix = str(folder / "mlp")
    train_mnist.train(_config(synthetic_dir, prefix, num_epochs=1))
    return prefix


@pytest.mark.parametrize("case, expected", [
    ("missing checkpoint", "no checkpoint"),
    ("corrupt params", "does not match its manifest: the checkpoint is torn"),
    ("corrupt sidecar", "does not match its manifest: the checkpoint is torn"),
    ("other network", "but the configured network has"),
    ("unwritable folder", "does not exist; create it first"),
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


def test_sigkill_during_saves_never_leaves_a_torn_checkpoint_that_loads(synthetic_dir, ck):
    """Kill a training process at random moments while it saves every epoch; the newest intact one loads."""
    prefix = str(ck / "mlp")
    command = [sys.executable, os.path.join(ROOT, "train_mnist.py"), "--data-dir", synthetic_dir, "--num-hidden",
               "32,16", "--batch-size", "1050", "--num-epochs", "400", "--model-prefix", prefix]
    rng = np.random.RandomState(0)
    for _ in range(6):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Let it get past start-up and into saving, then kill it somewhere inside the save loop.
        deadline = time.time() + 60
        while not os.path.exists(prefix + "-0001.manifest.json") and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        epochs = sorted(int(name[4:8]) for name in os.listdir(ck) if name.endswith(".manifest.json"))
        assert epochs, "no checkpoint was completed before the kill"
        newest = epochs[-1]
        symbol, arg_params, _ = mx.model.load_checkpoint(prefix, newest)
        assert arg_params["fc1_weight"].shape == (32, 784)
        history = train_mnist.train(_config(synthetic_dir, prefix, num_epochs=newest, load_epoch=newest,
                                            evaluate=True, batch_size=1050))
        assert history[0]["epoch"] == newest
        for name in os.listdir(ck):
            os.remove(ck / name)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_saves_the_last_step_and_the_printed_resume_continues_exactly(capsys, synthetic_dir, ck, signum):
    flags = ["--data-dir", synthetic_dir, "--num-hidden", "32,16", "--batch-size", "10", "--num-epochs", "30",
             "--mom", "0.9"]
    prefix = str(ck / "mlp")
    process = subprocess.Popen([sys.executable, "train_mnist.py", *flags, "--model-prefix", prefix], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not os.path.exists(prefix + "-0002.manifest.json") and time.time() < deadline:
        time.sleep(0.005)
    finished = {name: data for name, data in tree_bytes(ck).items() if name[4:8].isdigit()}
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert f"stopped by {signal.Signals(signum).name} " in err and err.count("\n") == 1
    after = tree_bytes(ck)
    assert all(after[name] == data for name, data in finished.items())  # no finished epoch overwritten
    command = shlex.split(err.split("Resume with: ")[1])
    assert command[:2] == [sys.executable, "train_mnist.py"]
    if "--resume" in command:
        saved = [name for name in os.listdir(ck) if name.startswith("mlp-interrupted-")]
        assert len(saved) == 3  # params, sidecar, manifest of one checkpoint
        state = json.load(open(ck / [n for n in saved if n.endswith(".state.json")][0]))
        assert state["in_epoch"]["epoch"] == state["epoch"] + 1 and state["in_epoch"]["batches_done"] >= 1
    code, out, _ = run_cli(capsys, *command[2:])
    assert code == 0 and not [name for name in os.listdir(ck) if name.startswith("mlp-interrupted-")]

    straight = str(ck / "straight")
    code, _, _ = run_cli(capsys, *flags, "--model-prefix", straight)
    assert code == 0
    assert open(prefix + "-0030.params", "rb").read() == open(straight + "-0030.params", "rb").read()
    resumed, whole = (json.load(open(p + "-0030.state.json")) for p in (prefix, straight))
    assert resumed["optimizer"] == whole["optimizer"]
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in resumed["history"]] == [[r[k] for k in figures] for r in whole["history"]]
