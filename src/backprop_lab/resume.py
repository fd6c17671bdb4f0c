"""A run's checkpoint and its resumption: ``resume=<run dir>`` continues the run where it left off.

Every run keeps one checkpoint, ``<run dir>/checkpoints/last.ckpt`` (Lightning's ``ModelCheckpoint``), every
``checkpoint.every_n_steps``, at the end and at an interrupt. It holds what Lightning saves (parameters,
optimizer state, loop progress, the data loader's place in its epoch, every callback's state) and the
run's config, against which a resumed run is checked: only the keys in :data:`MAY_CHANGE` may differ.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
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
    """Lightning's ModelCheckpoint, saving ``last.ckpt`` also at the batch that ends training.

    Lightning saves the last checkpoint of a run that stops mid-epoch (``max_steps``, an interrupt, ``tol``)
    at the end of training, after the loops have closed the epoch: resumed from there, the rest of that
    epoch's batches would be skipped. Saved at the end of the batch that ends training, as the periodic
    checkpoints are, the loops and the data loader resume at the very next batch. A stop that comes at an
    epoch's end (a callback such as EarlyStopping deciding there) is saved there, the epoch closed.

    Its state is saved under one key whatever its interval, so a run resumed with another
    ``checkpoint.every_n_steps`` still finds it (Lightning keys it by its arguments).
    """

    @property
    def state_key(self) -> str:
        return "RunCheckpoint"

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if ends_training(trainer):
            self.save_last_now(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.should_stop:
            self.save_last_now(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.save_last_now(trainer)  # a run that ended in no batch (nothing left to do): its state as it is

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.saved_at_step = trainer.global_step  # whoever saved it: Lightning's periodic save or ours

    def save_last_now(self, trainer: Trainer) -> None:
        """``last.ckpt`` of this step, unless it was saved at this step already (every rank calls this)."""
        if self.saved_at_step != trainer.global_step:
            trainer.save_checkpoint(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}")

    saved_at_step: int | None = None


def ends_training(trainer: Trainer) -> bool:
    """Whether the batch that just ended is the run's last: a stop was asked for, or ``max_steps`` is reached."""
    return trainer.should_stop or (trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps)


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


# What a checkpoint must hold to resume a run exactly, and what each part is for (named in a refusal).
REQUIRED = {
    "state_dict": "the parameters",
    "optimizer_states": "the optimizer's state",
    "loops": "the training loop's place (steps and batches done)",
    "global_step": "the step count",
    "hyper_parameters": "the run's config",
}


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    # Everything Lightning and this package save is tensors and plain containers: no pickled code.
    return torch.load(path, map_location="cpu", weights_only=True)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, read once per process while the file is unchanged (the checks before
    Hydra writes and the run itself both read it)."""
    stat = path.stat()
    return _load(str(path), stat.st_mtime_ns, stat.st_size)


def _refuse(cfg: DictConfig, why: str) -> ConfigError:
    return ConfigError(f"resume={cfg.resume!r} is not accepted: {why}")


def saved_state(cfg: DictConfig, run_dir: Path) -> tuple[dict[str, Any], int]:
    """The checkpoint of ``run_dir`` and the step it resumes from, every part needed checked: ConfigError
    naming the file and what is missing or out of range."""
    path = run_dir / CHECKPOINT
    try:
        checkpoint = read_checkpoint(path)
    except FileNotFoundError:
        raise _refuse(cfg, f"{path} does not exist") from None
    except Exception as error:  # noqa: BLE001 — a damaged file fails in many ways, each with its own type
        raise _refuse(cfg, f"{path} is not a readable checkpoint ({error})") from None
    if not isinstance(checkpoint, dict):
        raise _refuse(cfg, f"{path} is not a checkpoint of a run (it holds a {type(checkpoint).__name__})")
    missing = [f"{key} ({what})" for key, what in REQUIRED.items() if key not in checkpoint]
    if missing:
        raise _refuse(cfg, f"{path} lacks {', '.join(missing)}: it cannot continue the run exactly")
    config = checkpoint["hyper_parameters"].get("config") if isinstance(checkpoint["hyper_parameters"], dict) else None
    if not isinstance(config, dict):
        raise _refuse(cfg, f"{path} lacks hyper_parameters.config (the run's config)")
    step = checkpoint["global_step"]
    loop_steps = _loop_steps(checkpoint["loops"])
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or step != loop_steps:
        raise _refuse(
            cfg,
            f"{path} has global_step={step!r}, out of range: its training loop took {loop_steps} updates "
            "(a checkpoint's global_step is a count >= 0 of the updates taken)",
        )
    return checkpoint, step


def _loop_steps(loops: Any) -> int | None:
    """The updates the saved training loop took (Lightning derives the resumed global step from it)."""
    try:
        progress = loops["fit_loop"]["epoch_loop.automatic_optimization.optim_progress"]
        return int(progress["optimizer"]["step"]["total"]["completed"])
    except (KeyError, TypeError, ValueError):
        return None


def check_resumable(cfg: DictConfig, run_dir: Path) -> int:
    """The step the checkpoint of ``run_dir`` resumes from; ConfigError naming the key and the file where it
    cannot be read, misses a part, was written by another config, or has more steps than
    ``trainer.max_steps``."""
    path = run_dir / CHECKPOINT
    checkpoint, step = saved_state(cfg, run_dir)
    ours, theirs = _flat(run_config(cfg)), _flat(checkpoint["hyper_parameters"]["config"])
    for key in sorted(ours.keys() | theirs.keys()):
        if key.startswith(MAY_CHANGE) or ours.get(key) == theirs.get(key):
            continue
        raise _refuse(
            cfg,
            f"{path} was written with {key}={theirs.get(key)!r}, this run has {key}={ours.get(key)!r}; resume "
            f"with the run's own overrides (only {', '.join(MAY_CHANGE[1:])} may change)",
        )
    if cfg.trainer.max_steps < step:
        raise ConfigError(
            f"trainer.max_steps={cfg.trainer.max_steps} is not accepted with resume={cfg.resume!r}: the run has "
            f"taken {step} steps already; give trainer.max_steps >= {step} (a run is never cut back)"
        )
    return step


def nothing_left(cfg: DictConfig, run_dir: Path) -> str | None:
    """Why resuming ``run_dir`` with ``cfg`` would train nothing (its steps are done, or it converged or
    diverged), in words; None where there is training left. Assumes :func:`check_resumable` passed."""
    checkpoint, step = saved_state(cfg, run_dir)
    state = checkpoint.get("backprop_lab", {})
    final = state.get("final_loss", math.nan)
    if state.get("diverged_at") is not None:
        return f"it diverged at step {state['diverged_at']}"
    if cfg.tol > 0 and final < cfg.tol:
        return f"it converged (loss {final:.6g} < tol={cfg.tol:g})"
    if step >= cfg.trainer.max_steps:
        return f"it has taken its trainer.max_steps={cfg.trainer.max_steps} steps already"
    return None


def resume_command(overrides: Sequence[str], run_dir: str) -> str:
    """The command line that continues this run (its own overrides and ``resume=<run dir>``), ready to paste
    into a shell: each override quoted for the shell, the run directory also for Hydra (a run's name holds
    ``=`` and ``,``, which Hydra would read as syntax)."""
    kept = [o for o in overrides if not o.startswith(("resume=", "hydra.run.dir="))]
    return shlex.join(["backprop-lab", *kept, f"resume={hydra_quoted(run_dir)}"])


def hydra_quoted(value: str) -> str:
    """``value`` as a Hydra override value that reads back as exactly ``value``: as it is where Hydra takes
    it literally, else in double quotes (a quote, a backslash before one, and ``${`` escaped)."""
    if re.fullmatch(r"[\w./:+@%-]+", value, flags=re.ASCII):
        return value
    escaped = re.sub(r"(\\*)(\"|$)", lambda m: m.group(1) * 2 + m.group(2), value)  # backslashes before a quote
    escaped = escaped.replace('"', '\\"').replace("${", "\\${")
    return f'"{escaped}"'
