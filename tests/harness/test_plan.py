"""harness/plan.py: where a run starts and what it is for, from the config and the disk alone.

Every case runs on checkpoints of placeholder bytes with sound manifests (helpers.fake_checkpoint):
a plan reads names, manifests and states, never arrays, and loads no MXNet.
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

from harness import plan
from harness.checkpoint import Tag, paths
from harness.errors import CheckpointError
from helpers import ROOT, config, fake_checkpoint, tree_bytes


def _state(num_epochs=3, first_epoch=1, **settings):
    """A state's JSON as far as a plan reads it: the resolved config, the first epoch."""
    saved = config(num_hidden=(32, 16), num_epochs=num_epochs, **settings).resolved()
    return {"config": json.loads(json.dumps(dataclasses.asdict(saved))), "first_epoch": first_epoch}


def _make(prefix, **settings):
    """The plan of a run on prefix with these config settings."""
    settings = dict(dict(num_hidden=(32, 16), num_epochs=3, model_prefix=prefix), **settings)
    return plan.make(config(**settings).resolved(), plan.Disk(prefix))


def _tear(prefix, tag):
    """Change a byte of tag's params: its manifest no longer matches."""
    with open(paths(prefix, tag)["params"], "ab") as f:
        f.write(b"!")


@pytest.fixture
def prefix(tmp_path):
    return str(tmp_path / "mlp")


@pytest.mark.parametrize("settings, mode", [
    (dict(), "train"),
    (dict(dry_run=True), "dry_run"),
    (dict(evaluate=True, load_epoch=1), "evaluate"),
    (dict(export_onnx="m.onnx", load_epoch=1), "export"),
    (dict(predict=("a.png",), load_epoch=1), "predict"),
])
def test_each_mode_flag_resolves_to_its_one_mode(settings, mode):
    assert plan.mode_of(config(model_prefix="runs/mlp", **settings)) == mode
    assert mode in plan.MODES


def test_a_run_without_a_prefix_starts_fresh_and_reads_nothing():
    made = plan.make(config().resolved(), plan.Disk(""))
    assert made == plan.Plan("train") and made.start == "fresh" and made.trains and made.saves


@pytest.mark.parametrize("what", ["a checkpoint", "a save cut short", "MXNet's own checkpoint"])
def test_a_fresh_run_refuses_a_prefix_that_holds_saved_work(prefix, what):
    if what == "a checkpoint":
        fake_checkpoint(prefix, Tag(1), _state())
    elif what == "a save cut short":
        with open(prefix + "-0001.state.json", "w") as f:
            f.write("{}")
    else:
        with open(prefix + "-0004.params", "wb") as f:
            f.write(b"MXNet's")
    before = tree_bytes(os.path.dirname(prefix))
    with pytest.raises(CheckpointError, match="already holds checkpoints: .* or start over with "
                                              "--start-over"):
        _make(prefix)
    assert tree_bytes(os.path.dirname(prefix)) == before


def test_start_over_defers_removing_the_checkpoints_and_setting_leftovers_aside(prefix):
    for tag in (Tag(1), Tag(2, 7)):
        fake_checkpoint(prefix, tag, _state())
    with open(prefix + "-0003.state.nd", "wb") as f:
        f.write(b"cut short")
    made = _make(prefix, start_over=True)
    assert (made.start, made.tag, made.first_epoch) == ("fresh", None, 1)
    assert made.remove == (Tag(1), Tag(2, 7)) and made.set_aside == (prefix + "-0003.state.nd",)


def test_start_over_refuses_to_write_over_mxnets_own_checkpoint(prefix):
    with open(prefix + "-0002.params", "wb") as f:
        f.write(b"MXNet's")
    with pytest.raises(CheckpointError, match="holds MXNet's own checkpoint .*mlp-0002, which "
                                              "--start-over would write over"):
        _make(prefix, start_over=True)


def test_resume_takes_the_newest_intact_interrupted_checkpoint_and_sets_a_torn_one_aside(prefix):
    for tag in (Tag(1), Tag(2, 5), Tag(2, 9)):
        fake_checkpoint(prefix, tag, _state(first_epoch=1))
    _tear(prefix, Tag(2, 9))
    made = _make(prefix, resume=True)
    assert (made.start, made.tag, made.first_epoch) == ("interrupted", Tag(2, 5), 1)
    torn = paths(prefix, Tag(2, 9))
    assert set(made.set_aside) == {torn[kind] for kind in ("state", "arrays", "params", "manifest")}


def test_resume_without_an_intact_interrupted_checkpoint_names_the_newest_intact_one(prefix):
    for tag in (Tag(1), Tag(2), Tag(3, 4)):
        fake_checkpoint(prefix, tag, _state(num_epochs=5))
    _tear(prefix, Tag(3, 4))
    with pytest.raises(CheckpointError) as refused:
        _make(prefix, resume=True, num_epochs=5)
    assert str(refused.value).startswith(f"no intact interrupted checkpoint under {prefix}; the "
                                         f"newest intact checkpoint is {prefix}-0002: resume with ")
    assert "--load-epoch 2" in str(refused.value) and "--resume" not in str(refused.value)


def test_a_resume_refuses_newer_intact_work_and_sets_torn_newer_work_aside(prefix):
    for tag in (Tag(1), Tag(2)):
        fake_checkpoint(prefix, tag, _state())
    with pytest.raises(CheckpointError, match="mlp-0002 is newer than .*mlp-0001, and resuming "
                                              "from the older would write over it"):
        _make(prefix, load_epoch=1)
    _tear(prefix, Tag(2))
    made = _make(prefix, load_epoch=1)
    assert (made.start, made.tag) == ("epoch", Tag(1))
    assert prefix + "-0002.params" in made.set_aside and prefix + "-symbol.json" not in \
        made.set_aside


def test_a_torn_checkpoint_is_refused_with_the_way_on_from_the_newest_intact_one(prefix):
    for tag in (Tag(1), Tag(2)):
        fake_checkpoint(prefix, tag, _state(num_epochs=2))
    _tear(prefix, Tag(2))
    for settings in (dict(load_epoch=2, num_epochs=3), dict(load_epoch=2, evaluate=True)):
        with pytest.raises(CheckpointError) as refused:
            _make(prefix, **settings)
        assert "mlp-0002.params does not match its manifest: the checkpoint is torn; the newest " \
            f"intact checkpoint is {prefix}-0001: resume with " in str(refused.value)


def test_mxnets_own_checkpoint_takes_a_warm_start_from_the_epoch_after_it(prefix):
    with open(prefix + "-0003.params", "wb") as f:
        f.write(b"MXNet's")
    with pytest.raises(CheckpointError, match="is MXNet's own checkpoint .* --warm-start trains"):
        _make(prefix, load_epoch=3, num_epochs=5)
    made = _make(prefix, load_epoch=3, num_epochs=5, warm_start=True)
    assert (made.start, made.tag, made.foreign, made.first_epoch) == ("warm", Tag(3), True, 4)
    made = _make(prefix, load_epoch=3, evaluate=True)
    assert (made.mode, made.tag, made.foreign) == ("evaluate", Tag(3), True)
    assert not made.trains and not made.saves


def test_a_warm_start_from_this_trainers_checkpoint_refuses_later_ones(prefix):
    for tag in (Tag(1), Tag(2)):
        fake_checkpoint(prefix, tag, _state())
    made = _make(prefix, load_epoch=2, warm_start=True)
    assert (made.start, made.tag, made.foreign, made.first_epoch) == ("warm", Tag(2), False, 3)
    with pytest.raises(CheckpointError, match="checkpoints after epoch 1, which a warm start"):
        _make(prefix, load_epoch=1, warm_start=True)


def test_no_start_writes_over_a_later_checkpoint_of_mxnets_own(prefix):
    fake_checkpoint(prefix, Tag(2), _state(num_epochs=9))
    with open(prefix + "-0005.params", "wb") as f:
        f.write(b"MXNet's")
    with pytest.raises(CheckpointError, match="mlp-0005.params is MXNet's own checkpoint, which "
                                              "this run would write over"):
        _make(prefix, load_epoch=2, num_epochs=9)


def test_a_reading_mode_refuses_a_checkpoint_that_is_not_there(prefix):
    fake_checkpoint(prefix, Tag(1), _state())
    with pytest.raises(CheckpointError, match=f"no checkpoint {prefix}-0007; the newest intact "):
        _make(prefix, load_epoch=7, predict=("a.png",))


def test_the_first_epoch_is_the_checkpoints_own_and_1_if_its_state_cannot_be_read(prefix):
    fake_checkpoint(prefix, Tag(6), _state(num_epochs=9, first_epoch=4))
    assert _make(prefix, load_epoch=6, num_epochs=9).first_epoch == 4
    with open(paths(prefix, Tag(6))["state"], "wb") as f:
        f.write(b"[" * 100)
    # The manifest no longer matches either: the plan refuses the checkpoint before its state.
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        _make(prefix, load_epoch=6, num_epochs=9)
    fake_checkpoint(prefix, Tag(6))
    assert _make(prefix, load_epoch=6, num_epochs=9).first_epoch == 1


def test_the_way_on_is_the_checkpoints_own_command(prefix):
    fake_checkpoint(prefix, Tag(2), _state(num_epochs=2, batch_size=50, mom=0.5))
    with pytest.raises(CheckpointError) as refused:
        _make(prefix, num_epochs=2)
    line = str(refused.value)
    assert f"the newest intact checkpoint is {prefix}-0002, already at --num-epochs 2: score it " \
        "with " in line and "--load-epoch 2 --evaluate" in line
    assert "--batch-size 50" in line and "--mom 0.5" in line


def test_a_plan_loads_no_mxnet(prefix):
    fake_checkpoint(prefix, Tag(1), _state())
    code = ("import sys; from harness import plan; import train_mnist; "
            f"c = train_mnist.Config(model_prefix={prefix!r}, load_epoch=1, evaluate=True); "
            f"print(plan.make(c, plan.Disk({prefix!r})).tag, 'mxnet' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.split() == ["Tag(1,", "None)", "False"], \
        done.stderr
