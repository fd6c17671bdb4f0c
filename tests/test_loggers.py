"""backprop_lab.loggers.TensorBoardLogger: Lightning's logger, each log_metrics call written as one event."""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from backprop_lab.loggers import TensorBoardLogger

from conftest import event_files, read_scalars

CALLS = [({"train/loss": 1.25, "grad_norm/w1": torch.tensor(0.5)}, 0), ({"train/loss": 1.0, "relu/h": 0.0}, 1)]


def _log(logger_cls, log_dir, **kwargs):
    logger = logger_cls(save_dir=str(log_dir), name="", version="", default_hp_metric=False, **kwargs)
    for metrics, step in CALLS:
        logger.log_metrics(metrics, step)
    logger.finalize("success")


def test_the_same_tags_and_values_as_lightnings_logger(tmp_path):
    _log(TensorBoardLogger, tmp_path / "ours")
    _log(LightningTensorBoardLogger, tmp_path / "lightning")
    assert (
        read_scalars(tmp_path / "ours")
        == read_scalars(tmp_path / "lightning")
        == {
            "train/loss": {0: 1.25, 1: 1.0},
            "grad_norm/w1": {0: 0.5},
            "relu/h": {1: 0.0},
        }
    )


def test_each_call_is_one_event(tmp_path):
    _log(TensorBoardLogger, tmp_path)
    (path,) = event_files(tmp_path)
    events = [e for e in LegacyEventFileLoader(str(path)).Load() if e.summary.value]
    assert [(e.step, [v.tag for v in e.summary.value]) for e in events] == [
        (0, ["train/loss", "grad_norm/w1"]),
        (1, ["train/loss", "relu/h"]),
    ]


def test_a_prefix_takes_lightnings_own_path(tmp_path):
    _log(TensorBoardLogger, tmp_path, prefix="run")
    assert set(read_scalars(tmp_path)) == {"run-train/loss", "run-grad_norm/w1", "run-relu/h"}
