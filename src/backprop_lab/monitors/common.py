"""What every monitor shares: where to log, when to log, which module to watch, the probe set.

Scalars go to every logger of the trainer through ``Logger.log_metrics``, as Lightning's own
``LearningRateMonitor`` does; histograms, images and text need TensorBoard and go to the writer of each
``TensorBoardLogger`` (``logger.experiment``, a ``SummaryWriter``). Loggers write on global rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn


def log_metrics(trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
    """``metrics`` at ``step`` to every logger of ``trainer`` (each logger writes on rank 0 only)."""
    if metrics:
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=step)


def tensorboard_writers(trainer: Trainer) -> list:
    """The ``SummaryWriter`` of each TensorBoard logger of ``trainer``; empty off rank 0."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def is_log_step(trainer: Trainer, every: int | None = None) -> bool:
    """Whether this step is logged, as Lightning decides for ``self.log``: every ``every`` steps (default:
    the trainer's ``log_every_n_steps``) counted from 1 (steps n−1, 2n−1, …), and at a step that stops
    the run, so the monitors' values sit at the same steps as the module's own metrics."""
    every = every or trainer.log_every_n_steps
    return (trainer.global_step + 1) % every == 0 or trainer.should_stop


def watched_module(pl_module: LightningModule, root: str | None) -> nn.Module:
    """The submodule named ``root`` (``"net"``), or the LightningModule itself for ``None``."""
    return pl_module.get_submodule(root) if root else pl_module


def callable_root(pl_module: LightningModule, root: str | None, layers: list[str]) -> nn.Module | None:
    """A module to pass the probe set through: ``root``, or, for ``root=None``, the LightningModule when
    it defines ``forward``, else its one child holding every watched layer (None where there is none)."""
    if root:
        return pl_module.get_submodule(root)
    if type(pl_module).forward is not LightningModule.forward:
        return pl_module
    if not layers or any("." not in name for name in layers):
        return None  # a layer directly on the LightningModule: nothing smaller to call
    holders = {name.split(".", 1)[0] for name in layers}
    return pl_module.get_submodule(holders.pop()) if len(holders) == 1 else None


def probe_set(trainer: Trainer) -> tuple[Tensor, Tensor] | None:
    """``(probe_x, probe_y)`` of the trainer's datamodule, or None where it has none."""
    data = getattr(trainer, "datamodule", None)
    x, y = getattr(data, "probe_x", None), getattr(data, "probe_y", None)
    return (x, y) if x is not None and y is not None else None


def find_callback(trainer: Trainer, kind: type[Callback]) -> Callback | None:
    """The trainer's first callback of type ``kind``; None if it has none."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)
