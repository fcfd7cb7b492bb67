"""cli.py: the command line generated from Config, its help, and the command that recreates a config."""
import dataclasses
import re
import shlex
import sys

import pytest

import cli
import train_mnist
from helpers import run_cli


def test_every_config_field_is_a_flag_with_its_comment_and_a_readable_default(capsys):
    code, out, _ = run_cli(capsys, "--help")
    text = " ".join(out.split())
    assert code == 0
    for field in dataclasses.fields(train_mnist.Config):
        assert cli.flag(field.name) in out, field.name
    for flag, shown in [("--batch-size INT", "(default: 100)"), ("--num-epochs INT", "(default: 15)"),
                        ("--num-hidden N,N", "(default: 128,64)"), ("--seed INT", "(default: 42)"),
                        ("--mom FLOAT", "(default: 0.0)"), ("--optimizer STR", "(default: sgd)")]:
        assert flag in text and shown in text, flag
    assert "(default: )" not in text and "TUPLE" not in out and "(128, 64)" not in out
    assert "samples per step" in text and "--no-fast" in text
    # The learning rate's default is each optimizer's own, and --help says which.
    assert "adam 0.001" in text and "sgd 0.1" in text


@pytest.mark.parametrize("argv", [
    [], ["--num-hidden", "256,128,64", "--lr", "0.05", "--no-fast"],
    ["--optimizer", "adam", "--model-prefix", "runs/a b", "--resume", "--lr-scheduler", "cosine"]])
def test_the_command_line_of_a_config_parses_back_to_it(argv):
    config = cli.parse(train_mnist.Config, argv)
    words = shlex.split(cli.command_line(config, "train_mnist.py"))
    assert words[:2] == [sys.executable, "train_mnist.py"]  # the interpreter that is running, not `python`
    assert cli.parse(train_mnist.Config, words[2:]) == config


def test_a_config_made_in_python_is_checked_too():
    with pytest.raises(ValueError, match="--lr must be a number > 0"):
        train_mnist.Config(lr=-1)
    with pytest.raises(ValueError, match="--loss must be one of builtin, manual"):
        train_mnist.Config(loss="hinge")


@pytest.mark.parametrize("field, value, message", [
    ("num_hidden", "512,512", "--num-hidden must be a tuple of integers, got '512,512'"),
    ("num_hidden", (512, 2.5), "--num-hidden must be a tuple of integers"),
    ("batch_size", "100", "--batch-size must be an integer, got '100'"),
    ("seed", True, "--seed must be an integer, got True"),
    ("lr", "0.1", "--lr must be a number, got '0.1'"),
    ("fast", 1, "--fast must be True or False, got 1"),
    ("data_dir", None, "--data-dir must be a string, got None"),
])
def test_a_config_made_in_python_with_a_value_of_the_wrong_type_is_one_clear_error(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        train_mnist.Config(**{field: value})


def test_every_type_of_config_field_is_checked_and_an_int_passes_for_a_float():
    assert train_mnist.Config(lr=1, mom=0).lr == 1 and train_mnist.Config(lr=None).lr is None
