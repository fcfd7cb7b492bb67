"""harness/checkpoint.py and run.py: checkpoints as one unit, MXNet's tools, exact resume."""
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

import network
import train_mnist
from helpers import (
    ROOT,
    TRAIN,
    config,
    load_mnist,
    run_cli,
    train_with_faults,
    tree_bytes,
    wait_for_file,
)


@pytest.fixture
def ck(tmp_path):
    """An empty folder for checkpoints, apart from the synthetic data."""
    folder = tmp_path / "ck"
    folder.mkdir()
    return folder


def test_saves_every_period_and_the_last_epoch_in_mxnet_format(synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=5, save_period=2,
                             plot_dir=""))
    assert sorted(os.listdir(ck)) == [
        *[
            f"mlp-000{e}.{kind}"
            for e in (2, 4, 5)
            for kind in ("manifest.json", "params", "state.json", "state.nd")
        ],
        "mlp-inference-symbol.json",
        "mlp-plots",
        "mlp-symbol.json",
    ]
    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 5)
    assert symbol.list_outputs() == ["softmax_output"] and aux_params == {}
    assert sorted(arg_params) == [
        "fc1_bias",
        "fc1_weight",
        "fc2_bias",
        "fc2_weight",
        "fc3_bias",
        "fc3_weight",
    ]
    state = json.load(open(prefix + "-0005.state.json"))
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3, 4, 5] and state["first_epoch"] == 1
    assert state["config"]["num_hidden"] == [32, 16] and state["rng"][0] == "MT19937"
    # Plain SGD keeps no state; what an optimizer keeps is in MXNet's binary format, not in the
    # JSON.
    assert state["optimizer"] == dict.fromkeys(arg_params, 0) and not mx.nd.load(
        prefix + "-0005.state.nd"
    )
    manifest = json.load(open(prefix + "-0005.manifest.json"))
    assert {entry["name"] for entry in manifest["files"].values()} == {
        "mlp-symbol.json", "mlp-inference-symbol.json", "mlp-0005.params", "mlp-0005.state.json",
        "mlp-0005.state.nd"}


@pytest.mark.filterwarnings("ignore:Cannot decide type")
def test_saved_model_scores_the_same_through_module_and_gluon(synthetic_dir, ck):
    prefix = str(ck / "mlp")
    history = train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=2, lr=0.05))
    _, _, test_x, test_y = load_mnist(synthetic_dir)
    ours = train_mnist.score(config(synthetic_dir, model_prefix=prefix, num_epochs=4,
                                    load_epoch=2, evaluate=True))
    assert ours["acc"] == pytest.approx(history[-1]["test_acc"], abs=1e-12)

    symbol, arg_params, aux_params = mx.model.load_checkpoint(prefix, 2)
    module = mx.mod.Module(symbol, context=mx.cpu())
    test_iter = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), batch_size=len(test_x))
    module.bind(test_iter.provide_data, test_iter.provide_label, for_training=False)
    module.set_params(arg_params, aux_params)
    assert dict(module.score(test_iter, "acc"))["accuracy"] == pytest.approx(ours["acc"], abs=1e-12)

    # The inference symbol beside the checkpoint takes the one input, as Gluon users call it.
    net = mx.gluon.SymbolBlock.imports(
        prefix + "-inference-symbol.json", ["data"], prefix + "-0002.params"
    )
    probs = net(mx.nd.array(test_x)).asnumpy()
    assert np.mean(probs.argmax(axis=1) == test_y) == pytest.approx(ours["acc"], abs=1e-12)
    # The training symbol takes its label as a second input, on which its forward output does not
    # depend.
    net = mx.gluon.SymbolBlock.imports(
        prefix + "-symbol.json", ["data", "softmax_label"], prefix + "-0002.params"
    )
    assert np.array_equal(net(mx.nd.array(test_x), mx.nd.zeros(len(test_x))).asnumpy(), probs)


def _slow(settings, name):
    return pytest.param(settings, id=name, marks=pytest.mark.slow)


@pytest.mark.parametrize(
    "settings",
    [
        _slow(dict(), "sgd"),
        pytest.param(dict(mom=0.9), id="momentum"),
        _slow(dict(optimizer="nag", mom=0.9, wd=1e-3), "nag"),
        _slow(dict(optimizer="adam", wd=1e-4, lr_scheduler="step", lr_step_epochs=(1,)),
              "adam-step"),
        _slow(dict(gradient="manual", mom=0.5), "manual-gradient"),
        _slow(dict(fast=False, mom=0.9), "plain"),
        _slow(dict(clip_gradient=0.05, mom=0.9), "clip"),
        _slow(dict(mom=0.9, wd=1e-3), "wd"),
        _slow(dict(mom=0.9, wd=1e-3, decay_biases=True), "wd-biases"),
    ],
)
def test_resume_is_bit_identical_to_a_straight_run(synthetic_dir, ck, settings):
    straight, split = str(ck / "straight"), str(ck / "split")
    common = dict(settings, batch_size=64, plot_dir=str(ck / "pics"))
    full = train_mnist.train(config(synthetic_dir, model_prefix=straight, num_epochs=5, **common))
    train_mnist.train(config(synthetic_dir, model_prefix=split, num_epochs=2, **common))
    resumed = train_mnist.train(config(synthetic_dir, model_prefix=split, num_epochs=5,
                                       load_epoch=2, **common))
    assert open(straight + "-0005.params", "rb").read() == open(split + "-0005.params", "rb").read()
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in resumed] == [[r[k] for k in figures] for r in full]
    saved = json.load(open(split + "-0005.state.json"))
    assert (
        saved["num_update"]
        == json.load(open(straight + "-0005.state.json"))["num_update"]
        == 5 * 17
    )
    # An empty dict loads as an empty list.
    arrays = {
        key: value.asnumpy()
        for key, value in dict(mx.nd.load(split + "-0005.state.nd") or {}).items()
    }
    theirs = dict(mx.nd.load(straight + "-0005.state.nd") or {})
    assert arrays.keys() == theirs.keys() and all(
        np.array_equal(arrays[k], theirs[k].asnumpy()) for k in arrays
    )
    expected = {"sgd": int(bool(settings.get("mom"))), "nag": 1, "adam": 2}[
        settings.get("optimizer", "sgd")
    ]
    assert set(saved["optimizer"].values()) == {expected}
    assert sorted(saved["optimizer"]) == [
        "fc1_bias",
        "fc1_weight",
        "fc2_bias",
        "fc2_weight",
        "fc3_bias",
        "fc3_weight",
    ]


@pytest.mark.parametrize("fast_first", [True, False], ids=["default-then-no-fast",
                                                         "no-fast-then-default"])
def test_a_checkpoint_of_either_path_resumes_on_the_other_to_the_byte(synthetic_dir, ck,
                                                                      fast_first):
    # The two paths compute the same bytes, and the optimizer's state is saved by parameter name on
    # both: an epoch checkpoint serves either.
    straight, split = str(ck / "straight"), str(ck / "split")
    full = train_mnist.train(config(synthetic_dir, model_prefix=straight, num_epochs=4, mom=0.9))
    train_mnist.train(config(synthetic_dir, model_prefix=split, num_epochs=2, mom=0.9,
                             fast=fast_first))
    resumed = train_mnist.train(config(synthetic_dir, model_prefix=split, num_epochs=4, mom=0.9,
                                       load_epoch=2, fast=not fast_first))
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in full]
    with open(split + "-0004.params", "rb") as a, open(straight + "-0004.params", "rb") as b:
        assert a.read() == b.read()


def test_resume_with_another_optimizer_is_refused(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=1, mom=0.9))
    code, _, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--load-epoch",
        "1",
        "--num-epochs",
        "2",
        "--optimizer",
        "adam",
    )
    assert code == 2 and "field config.optimizer" in err and "'sgd'" in err and err.count("\n") == 1


def test_evaluate_prints_the_score_trains_nothing_and_writes_nothing(capsys, synthetic_dir, ck):
    prefix = str(ck / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=1))
    before = tree_bytes(ck)
    code, out, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--load-epoch",
        "1",
        "--evaluate",
    )
    assert code == 0 and err == "" and "epoch   1" not in out
    assert out.splitlines()[-1].startswith(f"checkpoint {prefix}-0001: test loss ")
    assert tree_bytes(ck) == before


def test_divergence_stops_with_the_epoch_and_batch_and_keeps_the_checkpoint(
    capsys, synthetic_dir, ck
):
    prefix = str(ck / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=1))
    before = tree_bytes(ck)
    code, out, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--load-epoch",
        "1",
        "--num-epochs",
        "3",
        "--lr",
        "1e8",
    )
    assert code == 1 and err.count("\n") == 1
    assert "training diverged: non-finite loss in epoch 2, batch " in err and "smaller --lr" in err
    assert tree_bytes(ck) == before


def test_a_fresh_run_on_a_prefix_with_checkpoints_stops_and_names_the_way_on(
    capsys, synthetic_dir, ck
):
    prefix = str(ck / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=2))
    before = tree_bytes(ck)
    code, out, err = run_cli(
        capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix
    )
    assert code == 2 and err.count("\n") == 1 and "epoch   1" not in out
    assert f"the newest intact checkpoint is {prefix}-0002" in err and "--load-epoch 2" in err
    assert "--start-over" in err and tree_bytes(ck) == before
    code, out, _ = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--start-over",
        "--num-epochs",
        "1",
    )
    assert code == 0 and "started over: removed 2 checkpoint(s)" in out
    assert not os.path.exists(prefix + "-0002.params") and os.path.exists(
        prefix + "-0001.manifest.json"
    )


def test_a_prefix_whose_symbol_holds_another_network_is_written_only_by_a_start_over(
    capsys, synthetic_dir, ck
):
    prefix = str(ck / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=1))
    os.remove(prefix + "-0001.manifest.json")
    for name in os.listdir(ck):
        if name.startswith("mlp-0001."):
            os.remove(ck / name)
    before = tree_bytes(ck)
    flags = ["--data-dir", synthetic_dir, "--num-hidden", "64,16", "--model-prefix", prefix,
             "--num-epochs", "1"]
    code, out, err = run_cli(capsys, *flags)
    assert code == 2 and err.count("\n") == 1 and "epoch   1" not in out
    assert f"{prefix}-symbol.json holds another network than this run's --network and " \
        "--num-hidden; give another --model-prefix, or start over with --start-over" in err
    assert tree_bytes(ck) == before
    code, _, err = run_cli(capsys, *flags, "--start-over")
    assert code == 0 and err == ""
    assert mx.sym.load(prefix + "-symbol.json").tojson() == \
        network.get_symbol("mlp", (64, 16)).tojson()


def _saved_checkpoint(synthetic_dir, folder):
    prefix = str(folder / "mlp")
    train_mnist.train(config(synthetic_dir, model_prefix=prefix, num_epochs=1))
    return prefix


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing checkpoint", "no checkpoint"),
        ("corrupt params", "does not match its manifest: the checkpoint is torn"),
        ("corrupt sidecar", "does not match its manifest: the checkpoint is torn"),
        ("other network", "holds another network than this run's --network and --num-hidden"),
        ("unwritable folder", "does not exist; create it first"),
        ("evaluate without a checkpoint", "--evaluate needs --load-epoch"),
        ("load without a prefix", "--load-epoch needs --model-prefix"),
    ],
)
def test_bad_checkpoint_input_is_one_line_exit_2_and_writes_nothing(
    capsys, synthetic_dir, ck, case, expected
):
    prefix = _saved_checkpoint(synthetic_dir, ck)
    argv = [
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--load-epoch",
        "1",
        "--num-epochs",
        "2",
    ]
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


@pytest.mark.slow
def test_sigkill_during_saves_never_leaves_a_torn_checkpoint_that_loads(synthetic_dir, ck):
    """Kill a training process at random moments while it saves every epoch."""
    # The newest intact one loads.
    prefix = str(ck / "mlp")
    command = TRAIN + [
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--batch-size",
        "1050",
        "--num-epochs",
        "400",
        "--model-prefix",
        prefix,
    ]
    rng = np.random.RandomState(0)
    for _ in range(6):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Let it get past start-up and into saving, then kill it somewhere inside the save loop.
        wait_for_file(prefix + "-0001.manifest.json", poll=0.01)
        time.sleep(rng.uniform(0, 0.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        epochs = sorted(
            int(name[4:8]) for name in os.listdir(ck) if name.endswith(".manifest.json")
        )
        assert epochs, "no checkpoint was completed before the kill"
        newest = epochs[-1]
        symbol, arg_params, _ = mx.model.load_checkpoint(prefix, newest)
        assert arg_params["fc1_weight"].shape == (32, 784)
        scored = train_mnist.score(
            config(synthetic_dir, model_prefix=prefix, num_epochs=newest, load_epoch=newest,
                   evaluate=True, batch_size=1050)
        )
        assert 0 <= scored["acc"] <= 1
        for name in os.listdir(ck):
            os.remove(ck / name)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_saves_the_last_step_and_the_printed_resume_continues_exactly(
    capsys, synthetic_dir, ck, signum
):
    flags = [
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--batch-size",
        "10",
        "--num-epochs",
        "30",
        "--mom",
        "0.9",
    ]
    prefix = str(ck / "mlp")
    process = subprocess.Popen(
        [sys.executable, "train_mnist.py", *flags, "--model-prefix", prefix],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(prefix + "-0002.manifest.json", process=process, poll=0.005)
    finished = {name: data for name, data in tree_bytes(ck).items() if name[4:8].isdigit()}
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert f"stopped by {signal.Signals(signum).name} " in err and err.count("\n") == 1
    after = tree_bytes(ck)
    # No finished epoch is overwritten.
    assert all(after[name] == data for name, data in finished.items())
    command = shlex.split(err.split("Resume with: ")[1])
    assert command[:2] == [sys.executable, "train_mnist.py"]
    if "--resume" in command:
        saved = [name for name in os.listdir(ck) if name.startswith("mlp-interrupted-")]
        # The params, the state's two files and the manifest of one checkpoint.
        assert len(saved) == 4
        name = [n for n in saved if n.endswith(".state.json")][0]
        state = json.load(open(ck / name))
        batches = int(name.split("-")[3].split(".")[0])
        assert (
            int(name.split("-")[2]) == len(state["history"]) + 1
            and len(state["samples"]) == batches >= 1
        )
    code, out, _ = run_cli(capsys, *command[2:])
    assert code == 0 and not [
        name for name in os.listdir(ck) if name.startswith("mlp-interrupted-")
    ]

    straight = str(ck / "straight")
    code, _, _ = run_cli(capsys, *flags, "--model-prefix", straight)
    assert code == 0
    assert (
        open(prefix + "-0030.params", "rb").read() == open(straight + "-0030.params", "rb").read()
    )
    resumed, whole = (json.load(open(p + "-0030.state.json")) for p in (prefix, straight))
    assert (
        open(prefix + "-0030.state.nd", "rb").read()
        == open(straight + "-0030.state.nd", "rb").read()
    )
    figures = ("train_loss", "train_acc", "test_loss", "test_acc")
    assert [[r[k] for k in figures] for r in resumed["history"]] == [
        [r[k] for k in figures] for r in whole["history"]
    ]


def _module_checkpoint(folder, prefix, epochs=3):
    """A checkpoint as MXNet's own Module.save_checkpoint writes it."""
    # Symbol, params and pickled states.
    train_x, train_y, test_x, test_y = load_mnist(folder)
    module = mx.mod.Module(network.get_symbol("mlp", (32, 16)), context=mx.cpu())
    train_iter = mx.io.NDArrayIter(train_x, train_y.astype(np.float32), 100)
    module.fit(
        train_iter,
        num_epoch=epochs,
        optimizer="sgd",
        optimizer_params={"learning_rate": 0.1},
        initializer=mx.init.Xavier(magnitude=3),
    )
    module.save_checkpoint(prefix, epochs, save_optimizer_states=True)
    test_iter = mx.io.NDArrayIter(test_x, test_y.astype(np.float32), 230)
    return dict(module.score(test_iter, ["acc", "ce"]))


def test_mxnets_own_checkpoint_is_scored_by_evaluate(capsys, synthetic_dir, ck):
    prefix = str(ck / "m")
    theirs = _module_checkpoint(synthetic_dir, prefix)
    assert sorted(os.listdir(ck)) == ["m-0003.params", "m-0003.states", "m-symbol.json"]
    before = tree_bytes(ck)
    code, out, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--load-epoch",
        "3",
        "--evaluate",
    )
    assert code == 0 and err == "" and f"{prefix}-0003 is MXNet's own checkpoint" in out
    acc = float(out.splitlines()[-1].split(" acc ")[1])
    assert acc == pytest.approx(theirs["accuracy"], abs=1e-4) and tree_bytes(ck) == before


def test_a_plain_resume_from_mxnets_checkpoint_is_refused_naming_the_warm_start(
    capsys, synthetic_dir, ck
):
    prefix = str(ck / "m")
    _module_checkpoint(synthetic_dir, prefix)
    before = tree_bytes(ck)
    code, _, err = run_cli(
        capsys,
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--model-prefix",
        prefix,
        "--load-epoch",
        "3",
        "--num-epochs",
        "5",
    )
    assert code == 2 and err.count("\n") == 1 and "is MXNet's own checkpoint" in err
    assert (
        "no optimizer state or RNG to resume exactly; --warm-start trains on from its weights"
        in err
    )
    assert tree_bytes(ck) == before
    # Nor may a fresh run write its epoch 3 over MXNet's.
    code, _, err = run_cli(
        capsys, "--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix
    )
    assert code == 2 and "already holds checkpoints" in err and tree_bytes(ck) == before


def test_a_warm_start_from_mxnets_weights_trains_on_and_then_resumes_exactly(
    capsys, synthetic_dir, ck
):
    prefix, split = str(ck / "m"), str(ck / "split" / "m")
    _module_checkpoint(synthetic_dir, prefix)
    before = tree_bytes(ck)
    flags = [
        "--data-dir",
        synthetic_dir,
        "--num-hidden",
        "32,16",
        "--mom",
        "0.9",
        "--plot-dir",
        "none",
    ]
    code, out, err = run_cli(
        capsys,
        *flags,
        "--model-prefix",
        prefix,
        "--load-epoch",
        "3",
        "--num-epochs",
        "5",
        "--warm-start",
    )
    assert code == 0 and err == ""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("warm start from"))
    assert lines[start] == (
        f"warm start from {prefix}-0003 (MXNet's own checkpoint): the optimizer and the RNG "
        "start afresh, training epochs 4 to 5"
    )
    assert [line.split()[1] for line in lines[start + 1:] if " train loss " in line] == ["4", "5"]
    assert all(tree_bytes(ck)[name] == data for name, data in before.items())
    # The same warm start cut after epoch 4, then resumed: the same bytes as the warm start in one
    # go.
    os.makedirs(ck / "split")
    for name in before:
        with open(ck / "split" / name, "wb") as f:
            f.write(before[name])
    for extra in (
        ["--num-epochs", "4", "--load-epoch", "3", "--warm-start"],
        ["--num-epochs", "5", "--load-epoch", "4"],
    ):
        code, _, err = run_cli(capsys, *flags, "--model-prefix", split, *extra)
        assert code == 0, err
    assert open(split + "-0005.params", "rb").read() == open(prefix + "-0005.params", "rb").read()
    state = json.load(open(split + "-0005.state.json"))
    assert state["first_epoch"] == 4 and [r["epoch"] for r in state["history"]] == [4, 5]


def _records(path):
    return [json.loads(line) for line in open(path)]


def _resume_printed(capsys, err):
    """Run the command that err's line prints; return its exit code and stderr."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    command = shlex.split(err.split("Resume with: ")[1])
    assert command[:2] == [sys.executable, "train_mnist.py"]
    code, _, err = run_cli(capsys, *command[2:])
    return code, err


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 6, 11])
def test_a_signal_in_the_first_epoch_with_a_metrics_file_resumes_with_each_epoch_once(
    capsys, synthetic_dir, ck, batch
):
    # 1050 samples in batches of 100: 11 batches an epoch; 11 is a signal after its last step.
    prefix, metrics = str(ck / "mlp"), str(ck / "m.jsonl")
    flags = ["--data-dir", synthetic_dir, "--num-hidden", "32,16", "--num-epochs", "2",
             "--model-prefix", prefix, "--metrics-file", metrics, "--plot-dir", "none"]
    code, err = train_with_faults(flags, env={"INTERRUPT_AT_BATCH": str(batch)})
    assert code == 130 and f"in epoch 1 after batch {batch}; saved " in err, err
    assert _resume_printed(capsys, err) == (0, "")
    assert [r["epoch"] for r in _records(metrics)] == [1, 2]


@pytest.mark.slow
def test_a_warm_start_stopped_in_its_first_epoch_resumes_with_each_epoch_once(
    capsys, synthetic_dir, ck
):
    prefix, metrics = str(ck / "mlp"), str(ck / "m.jsonl")
    flags = ["--data-dir", synthetic_dir, "--num-hidden", "32,16", "--model-prefix", prefix,
             "--metrics-file", metrics, "--plot-dir", "none"]
    assert run_cli(capsys, *flags, "--num-epochs", "1")[0] == 0
    code, err = train_with_faults([*flags, "--num-epochs", "3", "--load-epoch", "1",
                                   "--warm-start"], env={"INTERRUPT_AT_BATCH": "3"})
    assert code == 130 and "in epoch 2 after batch 3; saved " in err, err
    assert _resume_printed(capsys, err) == (0, "")
    assert [r["epoch"] for r in _records(metrics)] == [1, 2, 3]
    state = json.load(open(prefix + "-0003.state.json"))
    assert state["first_epoch"] == 2 and [r["epoch"] for r in state["history"]] == [2, 3]


@pytest.mark.slow
def test_a_first_epoch_stopped_twice_resumes_with_each_epoch_once(capsys, synthetic_dir, ck):
    prefix, metrics = str(ck / "mlp"), str(ck / "m.jsonl")
    flags = ["--data-dir", synthetic_dir, "--num-hidden", "32,16", "--num-epochs", "2",
             "--model-prefix", prefix, "--metrics-file", metrics, "--plot-dir", "none"]
    code, err = train_with_faults(flags, env={"INTERRUPT_AT_BATCH": "3"})
    assert code == 130, err
    again = shlex.split(err.split("Resume with: ")[1])
    code, err = train_with_faults(again[2:], env={"INTERRUPT_AT_BATCH": "2"})
    assert code == 130 and "in epoch 1 after batch 5; saved " in err, err
    assert _resume_printed(capsys, err) == (0, "")
    assert [r["epoch"] for r in _records(metrics)] == [1, 2]
    assert not [name for name in os.listdir(ck) if "interrupted" in name]
