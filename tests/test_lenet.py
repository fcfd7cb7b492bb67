"""--network lenet: everything that works for the MLP works for MXNet's LeNet too."""

import mxnet as mx
import pytest

import train_mnist
from harness import plots
from helpers import (
    TRAIN,
    assert_params_close,
    config,
    flags,
    launch,
    run_alone,
    run_cli,
    saved_params,
)

# LeNet (which takes the default widths), for 2 epochs.
LENET = dict(network="lenet", num_hidden=(128, 64), num_epochs=2)


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(optimizer="nag", mom=0.9, wd=1e-4),
        dict(optimizer="adam"),
        dict(gradient="manual"),
    ],
    ids=["sgd", "nag", "adam", "manual-gradient"],
)
def test_lenet_learns_with_each_optimizer_and_loss(synthetic_dir, settings):
    history = train_mnist.train(config(synthetic_dir, LENET, **settings))
    assert history[-1]["test_acc"] > 0.9 and history[-1]["train_loss"] < history[0]["train_loss"]


def test_lenet_resumes_bit_for_bit(synthetic_dir, tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train_mnist.train(config(synthetic_dir, LENET, num_epochs=3, mom=0.9, model_prefix=straight))
    train_mnist.train(config(synthetic_dir, LENET, num_epochs=1, mom=0.9, model_prefix=split))
    train_mnist.train(
        config(synthetic_dir, LENET, num_epochs=3, mom=0.9, model_prefix=split, load_epoch=1)
    )
    assert open(straight + "-0003.params", "rb").read() == open(split + "-0003.params", "rb").read()
    # MXNet's own loader reads it
    symbol, arg_params, _ = mx.model.load_checkpoint(split, 3)
    assert arg_params["conv1_weight"].shape == (20, 1, 5, 5)


def test_lenet_trains_the_same_bytes_with_no_fast_and_alike_on_two_contexts(
    synthetic_dir, tmp_path
):
    # Plain SGD, an epoch of 17 steps. On two contexts the gradients are summed in another order:
    # float rounding apart (8e-8 measured). With momentum 0.9 the dynamics amplify that rounding
    # through the convolutions: 5e-5 after 12 steps of 1050 samples.
    for name, settings in (("one", {}), ("two", {"cpus": 2}), ("plain", {"fast": False})):
        train_mnist.train(
            config(synthetic_dir, LENET, batch_size=64, num_epochs=1,
                   model_prefix=str(tmp_path / name), **settings)
        )
    with open(tmp_path / "one-0001.params", "rb") as one, \
            open(tmp_path / "plain-0001.params", "rb") as plain:
        assert one.read() == plain.read()
    assert_params_close(saved_params(tmp_path / "one", 1), saved_params(tmp_path / "two", 1))


@pytest.mark.slow
def test_lenet_over_dist_sync_trains_like_one_process(synthetic_dir, tmp_path):
    # One thread each: the same sums. LeNet's widths are its own: no --num-hidden.
    command = TRAIN + ["--data-dir", synthetic_dir, *flags(LENET, num_hidden=None, num_epochs=1,
                                                           batch_size=64, threads=1)]
    run_alone(command + ["--model-prefix", str(tmp_path / "one")], timeout=300)
    dist = command + ["--kv-store", "dist_sync", "--model-prefix", str(tmp_path / "dist")]
    run_alone(launch(["-n", "2", "-s", "1", "--timeout", "280"], dist), timeout=300)
    assert_params_close(saved_params(tmp_path / "one", 1), saved_params(tmp_path / "dist", 1))


def test_lenet_draws_its_pictures(synthetic_dir, tmp_path):
    lines = []
    train_mnist.train(config(synthetic_dir, LENET, num_epochs=1, plot_dir=str(tmp_path / "pics")),
                      log=lines.append)
    for name in (plots.CURVES, plots.CONFUSION, plots.MISTAKES):
        with open(tmp_path / "pics" / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert lines[-2].startswith("pictures: ")


def test_lenet_takes_no_hidden_widths(capsys, synthetic_dir):
    code, _, err = run_cli(
        capsys, "--data-dir", synthetic_dir, "--network", "lenet", "--num-hidden", "256"
    )
    assert code == 2 and "--num-hidden sets the MLP's widths; lenet has its own" in err
