"""The progress bar of a run: Lightning's tqdm bar counting the run's steps instead of an epoch's batches.

An epoch here is one pass over the training set, which for the post's single example is one step: the
stock bar would restart at "Epoch 37: 1/1" every step. :class:`StepProgressBar` shows step k of
``max_steps`` (with the epoch and ``train/loss``) on one bar for the whole run, redrawn every
``refresh_rate`` steps and at the last one.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` over the run's ``trainer.max_steps`` updates, one bar for every epoch."""

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        if trainer.current_epoch == 0 or bar.total != trainer.max_steps:  # set once, not every epoch
            bar.reset(total=trainer.max_steps)
            bar.n = bar.initial = trainer.global_step  # a resumed run starts where it stopped

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is not None and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_description(f"Epoch {trainer.current_epoch}", refresh=False)
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # also redraws

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pass  # the bar goes on into the next epoch; on_train_end closes it
