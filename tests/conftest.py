"""Shared test helpers: compose the real config, run the real trainer or CLI, read real event and CSV files.

Test modules import what they need with ``from conftest import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backprop_lab.config import register_configs, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TRAIN_SCRIPT = ROOT / "scripts" / "train.py"

register_configs()


def compose_config(*overrides: str):
    """The real composed config, as scripts/train.py sees it (without Hydra's own node)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=["trainer.enable_progress_bar=false", *overrides])


def train_run(tmp_path: Path, *overrides: str):
    """Validate and train a composed config into tmp_path; return (result, scalars)."""
    from backprop_lab.train import train

    cfg = compose_config("trainer.accelerator=cpu", *overrides)
    validate(cfg)
    result = train(cfg, run_dir=tmp_path)
    return result, read_scalars(tmp_path)


def built_run(tmp_path: Path, *overrides: str):
    """``(module, data, trainer)`` of a composed config, as :func:`backprop_lab.train.build_run` builds it."""
    from backprop_lab.train import build_run

    cfg = compose_config("trainer.accelerator=cpu", *overrides)
    validate(cfg)
    return build_run(cfg, tmp_path)


def event_accumulator(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the scalars in log_dir as a TensorBoard server serves them: its reader
    (``plugin_event_accumulator``, which keeps a resumed run's ``purge_step`` only after a first session start)
    with its default of purging orphaned data. A step a tag holds twice fails: a user would see both points."""
    from tensorboard.backend.event_processing import plugin_event_accumulator
    from tensorboard.util import tensor_util

    acc = plugin_event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    out: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        values = out[tag] = {}
        for e in acc.Tensors(tag):
            assert e.step not in values, f"{log_dir}: {tag} holds step {e.step} twice, as TensorBoard serves it"
            values[e.step] = tensor_util.make_ndarray(e.tensor_proto).item()
    return out


def as_resumed(expected: dict, before: dict, resumed_at: int) -> dict:
    """The scalars a run resumed at ``resumed_at`` should hold, from the uninterrupted run's (``expected``) and its own
    before the resume (``before``): every tag as the uninterrupted run, but ``relu/dead_forever_fraction/*`` (an
    end-of-run judgement, written by a resumed run for its own steps only) before ``resumed_at`` as the earlier run
    wrote it at its end."""
    out = dict(expected)
    for tag, values in expected.items():
        if tag.startswith("relu/dead_forever_fraction/"):
            earlier = before.get(tag, {})
            out[tag] = {s: (earlier[s] if s < resumed_at and s in earlier else v) for s, v in values.items()}
    return out


def read_images(log_dir: Path) -> dict[str, list]:
    """{tag: [image events]} from the event files in log_dir."""
    acc = event_accumulator(log_dir)
    return {tag: acc.Images(tag) for tag in acc.Tags()["images"]}


def read_csv_metrics(path: Path) -> dict[str, dict[int, float]]:
    """{column: {step: value}} from a Lightning CSVLogger's metrics.csv (empty cells left out)."""
    out: dict[str, dict[int, float]] = {}
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            for key, value in row.items():
                if value != "":
                    out.setdefault(key, {})[step] = float(value)
    return out


def event_files(log_dir: Path) -> list[Path]:
    return sorted(Path(log_dir).rglob("events.out.tfevents.*"))


def run_cli(
    *args: str,
    cwd: Path,
    script: Path = TRAIN_SCRIPT,
    timeout: float = 120,
    env: dict | None = None,
    python_args: tuple[str, ...] = (),
):
    """Run a script of the repo as a user would, in cwd; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [sys.executable, *python_args, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def start_cli(*args: str, cwd: Path, stderr=subprocess.STDOUT, new_session: bool = False) -> subprocess.Popen:
    """``scripts/train.py`` started as a user would, not waited for (to be signalled): output as text on
    ``stdout`` (stderr merged unless given), with the terminal's default SIGINT disposition — a shell's
    background job (CI may be one) ignores SIGINT, and a child would inherit that. ``new_session``: its own
    process group, as a scheduler's job has."""
    import signal

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# --- a LightningModule and data with nothing of backprop-lab in them, for the monitors -----------------


class PlainModule(L.LightningModule):
    """A LightningModule with nothing of backprop-lab in it: stock layers, stock loss, stock SGD, no forward."""

    def __init__(self, seq: nn.Module, lr: float):
        super().__init__()
        self.seq, self.lr = seq, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.seq(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class PlainData(L.LightningDataModule):
    """Batches of 4 in order, and a probe set for the monitors (what backprop-lab's data modules have)."""

    def __init__(self, x, y, probe_x=None):
        super().__init__()
        self.x, self.y = x, y
        if probe_x is not None:
            self.probe_x, self.probe_y = probe_x, torch.zeros(len(probe_x), 1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4, shuffle=False)


def fit(tmp_path, module, data, callbacks, steps, log_every=1, **trainer_kwargs):
    """A plain Lightning fit of ``steps`` updates, logging to TensorBoard in tmp_path; returns the trainer."""
    trainer = L.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(str(tmp_path), name="", version="", default_hp_metric=False),
        callbacks=callbacks,
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.fixture
def cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine (the GPU tests run wherever torch.cuda.is_available())")
    return torch.device("cuda")
