"""backprop_lab.progress: one bar over the run's steps (not an epoch's batches), with train/loss on it."""

from __future__ import annotations

import re

import pytest

from backprop_lab.progress import StepProgressBar

from conftest import built_run

BAR = ("trainer.enable_progress_bar=true", "monitor.pictures=[]")


def _bar_text(capfd) -> str:
    captured = capfd.readouterr()  # Lightning's bar writes to stdout
    return captured.out + captured.err


def test_one_bar_counts_the_runs_steps_across_epochs_and_redraws_every_n_steps(tmp_path, capfd):
    # 8 samples in batches of 4: two steps per epoch, so update k is in epoch k // 2. Redrawn every 10
    # steps and at the last: at step 10 (after update 9, epoch 4), 20 (epoch 9) and 25 (epoch 12).
    module, data, trainer = built_run(
        tmp_path, "model=mlp", "data.n_samples=8", "data.batch_size=4", "trainer.max_steps=25",
        "progress_every_n_steps=10", *BAR,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert isinstance(trainer.progress_bar_callback, StepProgressBar)
    bar = trainer.progress_bar_callback.train_progress_bar
    assert (bar.n, bar.total) == (25, 25)
    drawn = re.findall(r"Epoch (\d+): +\d+%\|[^|]*\| (\d+)/(\d+)", _bar_text(capfd))
    assert list(dict.fromkeys(drawn)) == [("4", "10", "25"), ("9", "20", "25"), ("12", "25", "25")]


def test_the_bar_shows_the_last_steps_train_loss(tmp_path, capfd):
    # Two updates of the post's §4 net: the loss of the last step (1) is the post's L′ = 1.0501050768.
    module, data, trainer = built_run(
        tmp_path, "model=sigmoid", "trainer.max_steps=2", "progress_every_n_steps=1", *BAR
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.progress_bar_callback.get_metrics(trainer, module)
    assert float(metrics["train/loss"]) == pytest.approx(1.0501050768, abs=5e-5)
    assert "train/loss=1.050]" in _bar_text(capfd)  # the bar's postfix, to 3 decimals
