"""Writing to the run's loggers cheaply: one TensorBoard event per step for all of its scalars.

Lightning's ``self.log`` costs about 1.7 ms per call on a CPU (it aggregates, syncs and formats for
the progress bar); ``SummaryWriter.add_scalar`` costs ~77 µs per value. Writing a step's scalars as
one ``Summary`` event costs ~16 µs per value, which keeps monitoring a 2-parameter network cheap.
Loggers other than TensorBoard get ``log_metrics`` as usual. Only rank 0 writes.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import Summary


def tensorboard_writers(trainer: Trainer) -> list:
    """The SummaryWriters of the trainer's TensorBoard loggers (empty off rank 0)."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def log_scalars(trainer: Trainer, scalars: Mapping[str, float], step: int) -> None:
    """Write ``scalars`` at global step ``step`` to every logger of ``trainer``."""
    if not scalars or not trainer.is_global_zero:
        return
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()])
            lg.experiment._get_file_writer().add_summary(summary, step)
        else:
            lg.log_metrics(dict(scalars), step)


def log_histogram(trainer: Trainer, tag: str, values, step: int) -> None:
    for writer in tensorboard_writers(trainer):
        writer.add_histogram(tag, values, step)


def log_text(trainer: Trainer, tag: str, text: str, step: int = 0) -> None:
    for writer in tensorboard_writers(trainer):
        writer.add_text(tag, text, step)
