"""The flags of MXNet's and PyTorch's MNIST examples: each taken as it means here, or answered.

The lists below are the examples' own argument parsers, entry by entry:
- MXNet 1.9.1 (tag 1.9.1, 3f8f3be), example/image-classification/train_mnist.py, lines 69-75, and
  the common/fit.py it calls, lines 83-145 (common/data.py adds none: train_mnist.py does not call
  it);
- PyTorch's examples (d0b7e37), mnist/main.py, lines 75-93; its earlier --no-cuda and --no-mps
  (37a1866, lines 85 and 87) and --momentum (60108ed, line 74); and --weight-decay, which
  imagenet/main.py (line 51) gives as another name of --wd.
"""
import pytest

import train_mnist
from harness import cli, example_flags
from helpers import run_cli

MXNET_FLAGS = [
    "--num-classes", "--num-examples", "--add_stn", "--image_shape",
    "--network", "--num-layers", "--gpus", "--kv-store", "--num-epochs", "--lr", "--lr-factor",
    "--lr-step-epochs", "--initializer", "--optimizer", "--mom", "--wd", "--batch-size",
    "--disp-batches", "--model-prefix", "--save-period", "--monitor", "--load-epoch", "--top-k",
    "--loss", "--test-io", "--dtype", "--gc-type", "--gc-threshold", "--macrobatch-size",
    "--warmup-epochs", "--warmup-strategy", "--profile-worker-suffix", "--profile-server-suffix",
    "--use-imagenet-data-augmentation",
]
PYTORCH_FLAGS = [
    "--batch-size", "--test-batch-size", "--epochs", "--lr", "--gamma", "--no-accel", "--dry-run",
    "--seed", "--log-interval", "--save-model", "--no-cuda", "--no-mps", "--momentum",
    "--weight-decay",
]

# Flags that are this trainer's own too, as the examples write a value of theirs: argv -> the
# config fields it must set.
TAKEN = {
    "--network": (["--network", "lenet"], {"network": "lenet"}),
    "--gpus": (["--gpus", "0,2"], {"gpus": "0,2"}),
    "--kv-store": (["--kv-store", "local"], {"kv_store": "local"}),
    "--num-epochs": (["--num-epochs", "20"], {"num_epochs": 20}),
    "--lr": (["--lr", "0.05"], {"lr": 0.05}),
    "--lr-factor": (["--lr-factor", "0.5"], {"lr_factor": 0.5}),
    "--lr-step-epochs": (["--lr-step-epochs", "10", "--num-epochs", "20"],
                         {"lr_step_epochs": (10,)}),
    "--optimizer": (["--optimizer", "nag"], {"optimizer": "nag"}),
    "--mom": (["--mom", "0.9"], {"mom": 0.9}),
    "--wd": (["--wd", "0.0001"], {"wd": 0.0001}),
    "--batch-size": (["--batch-size", "64"], {"batch_size": 64}),
    "--disp-batches": (["--disp-batches", "20"], {"disp_batches": 20}),
    "--model-prefix": (["--model-prefix", "runs/mnist"], {"model_prefix": "runs/mnist"}),
    "--save-period": (["--save-period", "2"], {"save_period": 2}),
    "--load-epoch": (["--load-epoch", "2", "--model-prefix", "p"], {"load_epoch": 2}),
    "--dry-run": (["--dry-run"], {"dry_run": True}),
    "--seed": (["--seed", "1"], {"seed": 1}),
    # Another name of one of this trainer's flags.
    "--epochs": (["--epochs", "14"], {"num_epochs": 14}),
    "--log-interval": (["--log-interval", "10"], {"disp_batches": 10}),
    "--momentum": (["--momentum", "0.5"], {"mom": 0.5}),
    "--weight-decay": (["--weight-decay=0.0001"], {"wd": 0.0001}),
    "--test-io": (["--test-io", "1"], {"dry_run": True}),
}

# Flags this trainer lacks: what the one line must name of its own way (the issue's own examples
# first).
ANSWERED = {
    "--gamma": ["--gamma", "0.7"], "--save-model": ["--save-model"], "--no-cuda": ["--no-cuda"],
    "--no-mps": ["--no-mps"], "--no-accel": ["--no-accel"], "--dtype": ["--dtype", "float16"],
    "--top-k": ["--top-k", "5"], "--num-classes": ["--num-classes", "10"],
    "--num-examples": ["--num-examples", "60000"], "--add_stn": ["--add_stn"],
    "--image_shape": ["--image_shape", "1, 28, 28"], "--num-layers": ["--num-layers", "2"],
    "--initializer": ["--initializer", "xavier"], "--monitor": ["--monitor", "10"],
    "--loss": ["--loss", "ce"], "--gc-type": ["--gc-type", "2bit"],
    "--gc-threshold": ["--gc-threshold", "0.5"], "--macrobatch-size": ["--macrobatch-size", "8"],
    "--warmup-epochs": ["--warmup-epochs", "5"], "--warmup-strategy": ["--warmup-strategy=linear"],
    "--profile-worker-suffix": ["--profile-worker-suffix", "w"],
    "--profile-server-suffix": ["--profile-server-suffix", "s"],
    "--use-imagenet-data-augmentation": ["--use-imagenet-data-augmentation", "1"],
    "--test-batch-size": ["--test-batch-size", "1000"],
}
# What each answer must point to here.
POINTS_TO = {
    "--gamma": "--lr-factor", "--save-model": "--model-prefix", "--no-cuda": "--gpus",
    "--no-mps": "--gpus", "--no-accel": "--gpus", "--dtype": "float32 only",
    "--top-k": "only top-1 accuracy", "--num-classes": "--dataset", "--num-layers": "--num-hidden",
    "--image_shape": "--network", "--add_stn": "--network", "--monitor": "--metrics-file",
    "--loss": "cross-entropy loss", "--warmup-epochs": "--lr-scheduler",
    "--profile-worker-suffix": "benchmarks/step_profile.py",
}


def test_every_flag_of_both_parsers_is_either_taken_or_answered_and_nothing_else_is_listed():
    listed = set(MXNET_FLAGS) | set(PYTORCH_FLAGS)
    assert set(TAKEN) | set(ANSWERED) == listed and not set(TAKEN) & set(ANSWERED)
    assert set(example_flags.ANSWERS) == set(ANSWERED)
    assert set(example_flags.ALIASES) <= set(TAKEN)


@pytest.mark.parametrize("name", sorted(TAKEN))
def test_a_flag_that_means_the_same_here_sets_the_same_field(name):
    argv, expected = TAKEN[name]
    config = cli.parse(train_mnist.Config, argv)
    assert {field: getattr(config, field) for field in expected} == expected


@pytest.mark.parametrize("name", sorted(ANSWERED))
def test_a_flag_this_trainer_lacks_is_one_line_naming_its_way_and_exit_2(capsys, name):
    code, out, err = run_cli(capsys, *ANSWERED[name])
    whose, instead = example_flags.ANSWERS[name]
    assert code == 2 and out == ""
    assert err == f"train_mnist.py: error: {name} is a flag of {whose}; {instead}\n"
    assert POINTS_TO.get(name, "") in instead
    # Never the nearest flag by spelling, which is a wrong hint for these (--gamma is not --mom).
    assert "did you mean" not in err


def test_a_switch_alias_takes_mxnets_0_or_1_and_refuses_any_other_value_in_one_line(capsys):
    assert cli.parse(train_mnist.Config, ["--test-io", "0"]).dry_run is False
    code, _, err = run_cli(capsys, "--test-io", "2")
    assert code == 2 and err == (
        "train_mnist.py: error: argument --test-io: expected 1 (on) or 0 (off), got '2'\n")


def test_an_aliased_value_is_checked_as_its_flags_and_the_resume_command_uses_this_trainers_name(
        capsys):
    code, _, err = run_cli(capsys, "--epochs", "0")
    assert code == 2 and "--num-epochs must be in 1..9999, got 0" in err
    config = cli.parse(train_mnist.Config, ["--epochs", "3", "--log-interval", "7"])
    assert cli.command_line(config, "train_mnist.py").endswith(
        "train_mnist.py --num-epochs 3 --disp-batches 7")


@pytest.mark.parametrize("typo, nearest", [
    ("--save-models", "--save-model"), ("--top_k", "--top-k"), ("--nocuda", "--no-cuda")])
def test_a_typo_of_an_answered_flag_gets_that_flags_answer(capsys, typo, nearest):
    code, _, err = run_cli(capsys, typo)
    assert code == 2 and err.count("\n") == 1
    assert f"(did you mean {nearest}? {example_flags.answer(nearest)})" in err


def test_help_shows_each_alias_once_beside_its_flag_and_says_why_once(capsys):
    code, out, _ = run_cli(capsys, "--help")
    text = " ".join(out.split())
    assert code == 0 and "-h, --help" in out
    assert "(default: 15; also --epochs)" in text and "(default: 100; also --log-interval)" in text
    assert "also --momentum)" in text and "also --weight-decay)" in text
    assert "(also --test-io 1)" in text
    for alias in example_flags.ALIASES:
        assert text.count(alias) == 1, alias
    assert text.count("PyTorch's examples/mnist") == 1
