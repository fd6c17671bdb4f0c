"""Interrupts that stop a run cleanly: SIGINT (Ctrl-C) and SIGTERM end training after the current step.

Lightning's own SIGTERM handler broadcasts to the other DDP ranks from inside the signal handler, which
deadlocks when the ranks are in another collective at that moment (Lightning issue #20806). During
training :class:`GracefulStop` handles both signals itself instead: the handler only notes the signal;
at the end of every step the ranks agree (one all-reduce) whether any of them got one, and all stop after
that same step, through ``trainer.should_stop``. Lightning then ends the fit as usual: the callbacks'
``on_train_end`` run, the loggers are flushed and closed. The handlers that were
there before come back at teardown.
"""

from __future__ import annotations

import signal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(Callback):
    """Stops training at the end of the update in which SIGINT or SIGTERM arrives, on every rank at once.

    :attr:`signum` is the signal that stopped the run (None while none has); the LightningModule's
    ``interrupted_by`` attribute is set to it, so the run's status reads ``interrupted``. Under
    ``accumulate_grad_batches`` the stop waits for the micro-batch that completes the update: the
    gradients of a half-accumulated update are in no checkpoint, so a run stops between updates only.
    The run's checkpoint is saved at that batch (:class:`backprop_lab.resume.RunCheckpoint`).
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._step_before = 0

    def _note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._note)

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if trainer.global_step == self._step_before:
            return  # a micro-batch of an update not yet taken: no rank stops here
        signum = self.signum or 0
        if trainer.world_size > 1:  # any rank's signal stops every rank, after this same step
            flag = torch.tensor(float(signum), device=pl_module.device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max").item())
        if signum:
            self.signum = signum
            pl_module.interrupted_by = signum
            trainer.should_stop = True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._note:  # unless Lightning has already put back its own
                signal.signal(signum, handler)
        self._previous.clear()
