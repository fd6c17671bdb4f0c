"""What every monitor shares: where to log, when to log, the probe set.

Scalars go to every logger of the trainer through ``Logger.log_metrics``, as Lightning's own
``LearningRateMonitor`` does; histograms, images and text need TensorBoard and go to the writer of each
``TensorBoardLogger`` (``logger.experiment``, a ``SummaryWriter``). Loggers write on global rank 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from backprop_lab.monitors.group import MonitorGroup


def log_metrics(trainer: Trainer, metrics: Mapping[str, float], step: int) -> None:
    """``metrics`` at ``step`` to every logger of ``trainer`` (each logger writes on rank 0 only)."""
    if metrics:
        for logger in trainer.loggers:
            logger.log_metrics(dict(metrics), step=step)


def tensorboard_writers(trainer: Trainer) -> list:
    """The ``SummaryWriter`` of each TensorBoard logger of ``trainer``; empty off rank 0."""
    return [writer for writer, _ in tensorboard_targets(trainer)]


def tensorboard_targets(trainer: Trainer) -> list[tuple]:
    """Per TensorBoard logger of ``trainer``: (its ``SummaryWriter``, the logger where it gathers a step's values into
    one event, else None); empty off rank 0. :func:`write_summary` writes to them."""
    if not trainer.is_global_zero:
        return []
    return [
        (lg.experiment, lg if callable(getattr(lg, "add_summary", None)) else None)
        for lg in trainer.loggers
        if isinstance(lg, TensorBoardLogger)
    ]


def write_summary(targets: list[tuple], summary, step: int) -> None:
    """``summary`` (a ``Summary``) at ``step`` to each of :func:`tensorboard_targets`: into the step's one event where
    the logger gathers them (backprop_lab's ``TensorBoardLogger``), else as an event of its own; nothing to a writer
    that is closed."""
    for writer, gathers in targets:
        if gathers is not None:
            gathers.add_summary(summary, step)
        elif writer.file_writer is not None:
            writer.file_writer.add_summary(summary, global_step=step)


def is_log_step(trainer: Trainer, every: int | None = None, step: int | None = None) -> bool:
    """Whether ``step`` (default: the trainer's global step) is logged, as Lightning decides for
    ``self.log``: every ``every`` steps (default: the trainer's ``log_every_n_steps``) counted from 1
    (steps n−1, 2n−1, …), and a step that stops the run; the one timing rule of every monitor."""
    every = every or trainer.log_every_n_steps
    step = trainer.global_step if step is None else step
    return (step + 1) % every == 0 or trainer.should_stop


def probe_set(trainer: Trainer) -> tuple[Tensor, Tensor] | None:
    """``(probe_x, probe_y)`` of the trainer's datamodule, or None where it has none."""
    data = getattr(trainer, "datamodule", None)
    x, y = getattr(data, "probe_x", None), getattr(data, "probe_y", None)
    return (x, y) if x is not None and y is not None else None


def all_callbacks(trainer: Trainer) -> list[Callback]:
    """The trainer's callbacks in the order Lightning calls them, each :class:`MonitorGroup` by its members."""
    out: list[Callback] = []
    for cb in trainer.callbacks:
        out.extend(cb.callbacks if isinstance(cb, MonitorGroup) else (cb,))
    return out


def find_callback(trainer: Trainer, kind: type[Callback]) -> Callback | None:
    """The trainer's first callback of type ``kind``, a member of a :class:`MonitorGroup` too; None if it has none."""
    return next((cb for cb in all_callbacks(trainer) if isinstance(cb, kind)), None)
