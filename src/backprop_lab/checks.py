"""Checks before Hydra writes anything: the config, the run directory, and every job of a sweep.

:class:`ConfigChecks` is a Hydra callback (configs/train.yaml, ``hydra.callbacks.checks``). Hydra calls
``on_run_start`` before it creates the run directory and ``on_multirun_start`` before the first job, so a
refused value leaves no empty run directory behind and a bad seventh job fails the sweep at once. A refusal
prints one line naming the key and exits 2 (a callback's exception would only be a warning to Hydra).

This module imports neither torch nor Lightning.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from backprop_lab.config import ConfigError, validate
from backprop_lab.summary import SUMMARY_FILE

CHECKPOINT = Path("checkpoints") / "last.ckpt"  # a run's checkpoint, relative to its directory


def previous_run(run_dir: Path) -> Path | None:
    """A file in ``run_dir`` that shows another run was written there (events, summary, checkpoint)."""
    if not run_dir.is_dir():
        return None
    for pattern in ("events.out.tfevents.*", SUMMARY_FILE, str(CHECKPOINT), "metrics.csv"):
        found = next(iter(sorted(run_dir.glob(pattern))), None)
        if found is not None:
            return found
    return None


def check_run_dir(key: str, value: Any, resume: str | None) -> None:
    """Refuse a run directory that cannot hold this run: empty, a file, not writable, or one that already
    holds another run (unless that run is being resumed)."""
    if value is None or str(value).strip() == "":
        raise ConfigError(f"{key}='' is not accepted: give a directory for the run (the default puts it under outputs/)")
    run_dir = Path(str(value))
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{key}={str(value)!r} is not accepted: it is a file, not a directory")
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(value)!r} is not accepted: {existing} is not writable")
    if resume is not None:
        if not (run_dir / CHECKPOINT).is_file():
            raise ConfigError(f"resume={resume!r} is not accepted: {run_dir / CHECKPOINT} does not exist (no checkpoint to resume from)")
        return
    found = previous_run(run_dir)
    if found is not None:
        raise ConfigError(
            f"{key}={str(value)!r} is not accepted: it already holds another run ({found}); give another "
            f"directory, or continue that run with resume={str(value)}"
        )


def check_sweep_subdir(sweep_dir: str, subdir: str) -> None:
    """A job's directory must lie inside the sweep's directory."""
    base = Path(sweep_dir).resolve()
    job = (base / subdir).resolve()
    if job == base or base not in job.parents:
        raise ConfigError(f"hydra.sweep.subdir={subdir!r} is not accepted: a job's directory must lie inside hydra.sweep.dir")


def refuse_and_exit(error: ConfigError) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


class ConfigChecks(Callback):
    """Validates a single run's config and directory before Hydra writes anything; and every job of a sweep."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The run directory's name reads ${hydra:runtime.choices...}: Hydra sets this same config as the
        # job's HydraConfig right after this hook; set it now so the name resolves here (and is the same).
        HydraConfig.instance().set_config(config)
        try:
            validate(config)
            if config.hydra.output_subdir is not None:  # scripts/replay.py writes nothing: no run directory
                check_run_dir("hydra.run.dir", config.hydra.run.dir, config.get("resume"))
            if config.get("resume") is not None:
                from backprop_lab.resume import check_resumable  # imports torch: only to resume

                check_resumable(config, Path(str(config.hydra.run.dir)))
        except ConfigError as error:
            refuse_and_exit(error)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from backprop_lab.sweep import check_sweep

        try:
            check_sweep(config)
        except ConfigError as error:
            refuse_and_exit(error)
