"""backprop_lab.resume: every run keeps a checkpoint, and resume=<run dir> continues it exactly.

A resumed run must log what the uninterrupted run logs at every step: losses, gradients, dead-ReLU
statistics, with the same batches in the same order (mid-epoch too) and the same optimiser state.
"""

from __future__ import annotations

import json

import pytest
import torch

from backprop_lab.checks import CHECKPOINT
from backprop_lab.config import ConfigError, validate
from backprop_lab.resume import check_resumable, resume_command

from conftest import compose_config, read_scalars, run_cli, train_run

# A batched network whose data set is 8 batches an epoch: 28 steps stop in the middle of epoch 3.
MLP = ("model=mlp", "optim.momentum=0.9", "monitor.pictures=[]", "monitor.backprop_view=false")


def _resume(run_dir, *overrides):
    from backprop_lab.train import train

    cfg = compose_config("trainer.accelerator=cpu", *overrides, f"resume={run_dir}")
    validate(cfg)
    return train(cfg, run_dir=run_dir), read_scalars(run_dir)


@pytest.mark.parametrize("data", ["sine", "moons"])
def test_resume_mid_epoch_logs_exactly_what_the_uninterrupted_run_logs(tmp_path, data):
    whole, expected = train_run(tmp_path / "whole", *MLP, f"data={data}", "trainer.max_steps=40")
    part, _ = train_run(tmp_path / "part", *MLP, f"data={data}", "trainer.max_steps=28", "checkpoint.every_n_steps=7")
    assert part.steps == 28
    resumed, got = _resume(tmp_path / "part", *MLP, f"data={data}", "trainer.max_steps=40")
    assert (resumed.status, resumed.steps) == (whole.status, whole.steps) == ("finished", 40)
    assert resumed.final_loss == whole.final_loss and resumed.best_loss == whole.best_loss
    assert set(got) == set(expected)
    for tag in expected:  # every tag, every step, bit for bit (TensorBoard drops the first run's steps ≥ 28)
        assert got[tag] == expected[tag], tag
    assert len(expected["grad_norm/fc1.weight"]) == 40 and len(expected["relu/dead_fraction/act1"]) == 40


def test_a_finished_run_is_extended_by_raising_max_steps(tmp_path):
    whole, expected = train_run(tmp_path / "whole", "model=relu", "trainer.max_steps=260")
    train_run(tmp_path / "short", "model=relu")  # the default 200 steps
    extended, got = _resume(tmp_path / "short", "model=relu", "trainer.max_steps=260")
    assert extended.steps == 260 and extended.dead_since == whole.dead_since == {"h": 4}
    assert got == expected  # including relu/dead_forever_fraction/h, recomputed over all 260 steps


def test_the_checkpoint_holds_the_runs_config_and_is_refused_for_another(tmp_path):
    train_run(tmp_path, "model=relu", "trainer.max_steps=10")
    cfg = compose_config("model=relu", "trainer.max_steps=20", f"resume={tmp_path}")
    assert check_resumable(cfg, tmp_path) == 10  # the step it continues from
    other = compose_config("model=relu", "model.w1=0.7", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=r"was written with model\.w1=0\.5, this run has model\.w1=0\.7") as error:
        check_resumable(other, tmp_path)
    assert str(tmp_path / CHECKPOINT) in str(error.value)


def test_a_damaged_or_missing_checkpoint_is_refused_naming_the_file(tmp_path):
    train_run(tmp_path, "model=relu", "trainer.max_steps=3")
    path = tmp_path / CHECKPOINT
    path.write_bytes(path.read_bytes()[:100])  # cut short, as a full disk leaves it
    cfg = compose_config("model=relu", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match="is not a readable checkpoint"):
        check_resumable(cfg, tmp_path)
    path.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        check_resumable(cfg, tmp_path)


def test_checkpoints_are_loaded_weights_only(tmp_path):
    # Everything in the checkpoint is tensors and plain containers: torch's safe loader reads it all.
    train_run(tmp_path, "model=mlp", "trainer.max_steps=3")
    checkpoint = torch.load(tmp_path / CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert checkpoint["hyper_parameters"]["config"]["model"]["hidden"] == [16, 16]
    states = " ".join(checkpoint["callbacks"])
    assert "GradientMonitor" in states and "DeadReLUMonitor" in states


def test_resume_command_keeps_the_overrides_and_names_the_run():
    assert resume_command(["model=relu", "optim.lr=0.5", "hydra.run.dir=x"], "outputs/runs/r") == (
        "backprop-lab model=relu optim.lr=0.5 resume=outputs/runs/r"
    )
    assert resume_command(["+x='a b'"], "d") == "backprop-lab '+x='\"'\"'a b'\"'\"'' resume=d"


@pytest.mark.slow
def test_resume_through_the_cli_continues_in_the_same_directory(tmp_path):
    run = tmp_path / "outputs" / "r"
    first = run_cli("model=relu", "trainer.max_steps=5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_cli("model=relu", "trainer.max_steps=9", f"resume={run}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "run finished after 9 steps" in again.stdout
    assert list((tmp_path / "outputs").iterdir()) == [run]  # no second run directory
    assert json.loads((run / "summary.json").read_text())["steps"] == 9
    assert (run / ".hydra" / "overrides.yaml").read_text().count("trainer.max_steps=5")  # the first run's record kept
    refused = run_cli("model=sigmoid", f"resume={run}", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "was written with model._target_='backprop_lab.models.ReLUNet'" in refused.stderr
    assert len(list((run / ".hydra").glob("resumed_*"))) == 1  # the refused one wrote nothing
