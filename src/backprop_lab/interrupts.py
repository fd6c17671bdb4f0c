"""Interrupts that stop a run cleanly: SIGINT (Ctrl-C) and SIGTERM end training after the current update.

Lightning's own SIGTERM handling in DDP (rank 0's signal broadcast at every batch, or from inside the
handler in older releases, Lightning issue #20806) races the ranks' other collectives. The run handles
both signals itself instead (:class:`~backprop_lab.signal_notes.SignalNotes`, held from the start of the
run to its end; in DDP's other ranks from the command's first line): the handler only notes the signal.
When training starts and at the end of every update the ranks agree (one all-reduce) whether any of them
got one, and all stop after that same update, through ``trainer.should_stop``. Lightning then ends the fit
as usual: the callbacks' ``on_train_end`` run, the loggers are flushed and closed.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from backprop_lab.signal_notes import SignalNotes


class GracefulStop(Callback):
    """Stops training at the end of the update in which SIGINT or SIGTERM arrives, on every rank at once.

    :attr:`signum` is the signal that stopped the run (None while none has); the LightningModule's
    ``interrupted_by`` attribute is set to it, so the run's status reads ``interrupted``. A signal that
    came before training started stops it before its first update. Under ``accumulate_grad_batches`` the
    stop waits for the micro-batch that completes the update: the gradients of a half-accumulated update
    are in no checkpoint, so a run stops between updates only. The run's checkpoint is saved at that
    batch (:class:`backprop_lab.resume.RunCheckpoint`).

    ``notes``: the :class:`SignalNotes` of the caller, held around more than the fit; without them the
    callback holds its own from the start of training to teardown (on any LightningModule).
    """

    def __init__(self, notes: SignalNotes | None = None):
        self.notes = notes
        self._own: SignalNotes | None = None
        self._step_before = 0

    @property
    def signum(self) -> int | None:
        return self.notes.signum if self.notes is not None else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.notes is None:
            self.notes = self._own = SignalNotes().__enter__()
        self.notes.take_over()  # Lightning's handler, put there when the fit started: ours decide (see above)
        self._stop_if_signalled(trainer, pl_module)  # one that came during start-up: no update is taken

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if trainer.global_step == self._step_before:
            return  # a micro-batch of an update not yet taken: no rank stops here
        self._stop_if_signalled(trainer, pl_module)

    def _stop_if_signalled(self, trainer: Trainer, pl_module: LightningModule) -> None:
        signum = self.signum or 0
        if trainer.world_size > 1:  # any rank's signal stops every rank, after this same step
            flag = torch.tensor(float(signum), device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if signum:
            self.notes.signum = signum
            pl_module.interrupted_by = signum
            trainer.should_stop = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._own is not None:
            self._own.__exit__(None, None, None)
            self.notes = self._own = None
