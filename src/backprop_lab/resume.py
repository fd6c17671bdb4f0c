"""A run's checkpoint and its resumption: ``resume=<run dir>`` continues the run where it left off.

Every run keeps one checkpoint, ``<run dir>/checkpoints/last.ckpt`` (Lightning's ``ModelCheckpoint``), every
``checkpoint.every_n_steps``, at the end and at an interrupt. It holds what Lightning saves (parameters,
optimizer state, loop progress, the data loader's place in its epoch, every callback's state) and the
run's config, against which a resumed run is checked: only the keys in :data:`MAY_CHANGE` may differ.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from backprop_lab.checks import CHECKPOINT
from backprop_lab.config import ConfigError

# What a resumed run may set differently: how long it runs and how it shows it, not what it computes.
MAY_CHANGE = (
    "resume",
    "trainer.max_steps",
    "trainer.accelerator",
    "trainer.enable_progress_bar",
    "progress_every_n_steps",
    "checkpoint.every_n_steps",
    "logger",
)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, its state saved under one key whatever its interval, so a run resumed
    with another ``checkpoint.every_n_steps`` still finds it (Lightning keys it by its arguments)."""

    @property
    def state_key(self) -> str:
        return "RunCheckpoint"


def checkpoint_callback(run_dir: Path, every_n_steps: int) -> ModelCheckpoint:
    """``last.ckpt`` in ``<run dir>/checkpoints`` every ``every_n_steps``, at the end and on an exception."""
    return RunCheckpoint(
        dirpath=run_dir / CHECKPOINT.parent,
        filename="interrupted-{step}",  # written only on an exception, beside last.ckpt
        save_top_k=0,  # no ranking: the last checkpoint is the run's
        save_last=True,
        every_n_train_steps=every_n_steps,
        save_on_exception=True,
        enable_version_counter=False,
    )


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as saved in checkpoints and compared on resume: as typed, interpolations unresolved,
    without Hydra's own node (present where Hydra's callbacks see the config)."""
    return {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def check_resumable(cfg: DictConfig, run_dir: Path) -> int:
    """The step the checkpoint of ``run_dir`` resumes from; ConfigError naming the key and the file where it
    cannot be read or was written by another config."""
    path = run_dir / CHECKPOINT
    try:
        # Everything Lightning and this package save is tensors and plain containers: no pickled code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved, step = checkpoint["hyper_parameters"]["config"], int(checkpoint["global_step"])
    except FileNotFoundError:
        raise ConfigError(f"resume={cfg.resume!r} is not accepted: {path} does not exist") from None
    except Exception as error:  # noqa: BLE001 — a damaged file fails in many ways, each with its own type
        raise ConfigError(
            f"resume={cfg.resume!r} is not accepted: {path} is not a readable checkpoint ({error})"
        ) from None
    ours, theirs = _flat(run_config(cfg)), _flat(saved)
    for key in sorted(ours.keys() | theirs.keys()):
        if key.startswith(MAY_CHANGE) or ours.get(key) == theirs.get(key):
            continue
        raise ConfigError(
            f"resume={cfg.resume!r} is not accepted: {path} was written with {key}={theirs.get(key)!r}, this run "
            f"has {key}={ours.get(key)!r}; resume with the run's own overrides (only {', '.join(MAY_CHANGE[1:])} may change)"
        )
    return step


def resume_command(overrides: Sequence[str], run_dir: str) -> str:
    """The command line that continues this run (its own overrides and ``resume=<run dir>``)."""
    kept = [o for o in overrides if not o.startswith(("resume=", "hydra.run.dir="))]
    return shlex.join(["backprop-lab", *kept, f"resume={run_dir}"])
