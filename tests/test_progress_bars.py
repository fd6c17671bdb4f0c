"""Lightning's own progress bars from the command line: the package's bar steps aside for them."""

from __future__ import annotations

import json

import pytest

from conftest import read_scalars, run_cli


@pytest.mark.slow
@pytest.mark.parametrize(
    "bar, shows",
    [
        ("RichProgressBar", "train/loss: 0.250"),  # Rich's bar, with the loss the module logs to it
        ("TQDMProgressBar", "train/loss=0.250"),  # Lightning's own tqdm bar, per epoch
    ],
)
def test_lightnings_progress_bars_run_in_place_of_the_packages(tmp_path, bar, shows):
    run = tmp_path / "run"
    proc = run_cli(
        "model=relu", "trainer.max_steps=5", f"hydra.run.dir={run}",
        f"+callbacks.bar._target_=lightning.pytorch.callbacks.{bar}", cwd=tmp_path,
        env={"COLUMNS": "120"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert shows in out
    assert "5/5 [" not in out  # not the package's tqdm bar over the run's steps
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert read_scalars(run)["train/loss"][5] == pytest.approx(0.25)
