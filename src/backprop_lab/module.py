"""The LightningModule: one network, one loss, plain gradient descent, and the run's status.

Step semantics (pinned by tests): everything logged at global step k is computed from the
parameters *before* the k-th update. When training ends after N updates, one more forward pass
(no update) logs ``train/loss`` at step N: the post's "new forward pass".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor, nn

from backprop_lab import functions as F

# The loss for a data module's ``task``: squared error as in the post; for labels in {0, 1}, binary
# cross-entropy on the logits ŷ (its gradient σ(ŷ) − y does not vanish on a confidently wrong logit).
LOSS_BY_TASK: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "regression": F.mse_loss,
    "classification": F.bce_with_logits,
}


class BackpropModule(L.LightningModule):
    """Trains ``net`` to minimise ``loss_fn(net(x), y)`` with the optimizer ``optimizer(params)`` builds.

    ``tol`` > 0 stops the run once a batch's loss falls below it (status ``converged``). A loss that
    is inf or NaN stops the run before that update is taken (status ``diverged``). ``config`` (the run's
    config as a dict) is saved in its checkpoints' hyper-parameters.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
        tol: float = 0.0,
        config: dict | None = None,
    ):
        super().__init__()
        if config is not None:  # kept in every checkpoint, so a resumed run can be checked against it
            self.save_hyperparameters({"config": config}, logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.loss_fn = loss_fn
        self.tol = tol
        self.best_loss = math.inf
        self.final_loss = math.nan
        self.diverged_at: int | None = None
        self.interrupted_by: int | None = None  # the signal that stopped training (backprop_lab.interrupts)
        self.failure: str | None = None  # the error that ended training, if one did
        self._last_batch: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["backprop_lab"] = {
            "best_loss": self.best_loss,
            "final_loss": self.final_loss,
            "diverged_at": self.diverged_at,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("backprop_lab", {})
        self.best_loss = state.get("best_loss", self.best_loss)
        self.final_loss = state.get("final_loss", self.final_loss)
        self.diverged_at = state.get("diverged_at", self.diverged_at)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.net.parameters())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        self._last_batch = batch
        loss = self.loss_fn(self.net(x), y)
        step = self.global_step
        # One host sync per step: divergence and convergence are decided on the value.
        value = self._mean_over_ranks(loss)
        # The progress bar, trainer.callback_metrics (EarlyStopping, ModelCheckpoint) and every logger;
        # already averaged over ranks, so no second reduction.
        self.log("train/loss", value, prog_bar=True, batch_size=len(x))
        if not math.isfinite(value):
            self.diverged_at = step
            self.final_loss = value
            self.trainer.should_stop = True
            return None  # skips backward and the update: no step is taken from a non-finite loss
        self.best_loss = min(self.best_loss, value)
        self.final_loss = value
        if value < self.tol:
            self.trainer.should_stop = True
        return loss

    def _mean_over_ranks(self, loss: Tensor) -> float:
        """The loss as a number, averaged over DDP ranks: every rank then logs, stops and diverges alike."""
        if self.trainer.world_size > 1:
            # reduce works in place; the clone keeps the loss that backward starts from untouched
            loss = self.trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean")
        return loss.item()

    def on_train_end(self) -> None:
        """The final forward pass: the loss of the last batch under the trained parameters, at step N."""
        if self.diverged_at is not None or self.interrupted_by is not None or self._last_batch is None:
            return  # an interrupted run goes on from this step when resumed: it logs this step then
        x, y = self._last_batch
        with torch.no_grad():
            value = self._mean_over_ranks(self.loss_fn(self.net(x), y))
        self.final_loss = value
        if math.isfinite(value):
            self.best_loss = min(self.best_loss, value)
        # self.log is not available after training; the loggers take the final value directly.
        for logger in self.loggers:
            logger.log_metrics({"train/loss": value}, step=self.global_step)

    @property
    def status(self) -> str:
        """converged, diverged, interrupted, failed, stopped (by a callback such as EarlyStopping) or finished."""
        if self.failure is not None:
            return "failed"
        if self.diverged_at is not None:
            return "diverged"
        if self.interrupted_by is not None or (self.trainer is not None and self.trainer.interrupted):
            return "interrupted"
        if self.tol > 0 and self.final_loss < self.tol:
            return "converged"
        if (
            self.trainer is not None
            and self.trainer.max_steps > 0
            and self.trainer.global_step < self.trainer.max_steps
        ):
            return "stopped"
        return "finished"
