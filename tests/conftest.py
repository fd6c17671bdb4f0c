"""Shared test helpers: compose the real config, run the real trainer or CLI, read real event files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

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


def event_accumulator(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the event files in log_dir (tensorboard's own reader)."""
    acc = event_accumulator(log_dir)
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def run_cli(*args: str, cwd: Path, script: Path = TRAIN_SCRIPT, timeout: float = 120, env: dict | None = None):
    """Run a script of the repo as a user would, in cwd; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine (the GPU tests run wherever torch.cuda.is_available())")
    return torch.device("cuda")
