"""The Python API of a notebook: ``backprop_lab.compose`` and ``backprop_lab.run``, the command line's twins.

    import backprop_lab

    result = backprop_lab.run(["model=relu", "trainer.max_steps=50"])   # as: backprop-lab model=relu ...
    cfg = backprop_lab.compose(["model=relu"])                          # the config that run would train

Both compose the packaged configs (``backprop_lab.configs``) with Hydra's compose API, as ``backprop-lab``
does, and refuse a bad value with the same one-line :class:`~backprop_lab.config.ConfigError` naming the key
(``backprop_lab.run(["optim.lr=-1"])``). :func:`run` checks the run directory as the command line does
(named as the command line names it, under ``./outputs/runs/``, unless ``run_dir=`` is given), writes
Hydra's record (``.hydra/``) and the run's ``train.log`` there, trains, and returns the
:class:`~backprop_lab.train.TrainResult`. Each call starts afresh: call them as often as you like in one
process. The run's ``HydraConfig`` and the package's log handlers are put back as they were when a call
returns; Hydra's global config search is the package's after a call (an earlier ``hydra.initialize`` of the
caller's is cleared, as Hydra allows one at a time).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from backprop_lab.checks import check_run_dir, check_written_inside, hydra_error_message, hydra_value
from backprop_lab.config import ConfigError, register_configs
from backprop_lab.preflight import check_config
from backprop_lab.sweep import register_resolvers

if TYPE_CHECKING:
    from backprop_lab.train import TrainResult

CONFIG_MODULE = "backprop_lab.configs"


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``backprop-lab <overrides>`` would train, validated (without Hydra's own node).

    Raises :class:`~backprop_lab.config.ConfigError` (one line naming the key) for a value the command line
    refuses, an unknown key or option included."""
    full = _composed([_resume_quoted(o) for o in overrides])
    check_config(full)
    return _job_config(full)


def run(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> TrainResult:
    """Train what ``backprop-lab <overrides>`` trains and return its :class:`~backprop_lab.train.TrainResult`.

    ``run_dir``: where the run writes; by default the directory the command line would make,
    ``outputs/runs/<time>_<model and overrides>`` under the working directory (``resume=<run dir>``
    continues a run in its own directory, as on the command line). Its closing lines are printed, and kept in
    ``<run dir>/train.log`` with the package's other log lines. Raises ConfigError for a refused value or
    directory, before anything is written."""
    from backprop_lab.train import train

    overrides = [_resume_quoted(o) for o in overrides]
    full = _composed(overrides)
    with _hydra_config(full):
        check_config(full)
        target = Path(str(run_dir)) if run_dir is not None else Path(str(hydra_value(full, "hydra.run.dir")))
        with read_write(full.hydra.runtime):  # what ${hydra:runtime.output_dir} reads in the run's config
            full.hydra.runtime.output_dir = str(target.absolute())
        check_run_dir("run_dir" if run_dir is not None else "hydra.run.dir", target, full.get("resume"))
        check_written_inside(full, target)
        job = _job_config(full)
        if full.get("resume") is not None and _nothing_left(job, target):  # as the command line: nothing written
            return train(job, target, overrides=overrides)
        with _package_log(target, str(hydra_value(full, "hydra.job.name"))):
            _write_record(full, job, overrides, target)
            return train(job, target, overrides=overrides)


def _resume_quoted(override: str) -> str:
    """``resume=<run dir>`` with the directory quoted for Hydra where it needs it: a run's name holds ``=`` and
    ``,`` (``resume=outputs/runs/…_relu,optim.lr=0.5``), as ``TrainResult.log_dir`` gives it."""
    from backprop_lab.resume import hydra_quoted

    key, sep, value = override.partition("=")
    if key != "resume" or not sep or value == "null" or value[:1] in "'\"":
        return override
    return f"resume={hydra_quoted(value)}"


def _nothing_left(job: DictConfig, run_dir: Path) -> bool:
    """A resume with no training left, of a run that has its summary: it changes nothing (and says so)."""
    from backprop_lab.resume import check_resumable, nothing_left
    from backprop_lab.summary import SUMMARY_FILE

    check_resumable(job, run_dir)
    why = nothing_left(job, run_dir)
    if why is None or not (run_dir / SUMMARY_FILE).is_file():
        return False
    print(f"nothing to resume in {run_dir}: {why}; its logs and summary are unchanged")
    return True


# --- composing as the command line does -------------------------------------------------------------------


def _composed(overrides: Sequence[str]) -> DictConfig:
    """The packaged ``train`` config with ``overrides``, Hydra's node included; ConfigError for what Hydra
    refuses while composing (an unknown option, a key that is not there), in Hydra's words on one line."""
    register_configs()
    register_resolvers()
    if GlobalHydra.instance().is_initialized():  # a notebook's earlier initialize, or another library's
        GlobalHydra.instance().clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        message = hydra_error_message(error, list(overrides))
        if message is None:
            raise
        raise ConfigError(message) from None


def _job_config(full: DictConfig) -> DictConfig:
    """The config as a job sees it: Hydra's node removed (as Hydra itself does before it calls the job)."""
    job = copy.deepcopy(full)
    with read_write(job), open_dict(job):
        del job["hydra"]
    return job


@contextlib.contextmanager
def _hydra_config(full: DictConfig) -> Iterator[None]:
    """``full`` as the job's HydraConfig (``${hydra:...}`` resolves as in a run of the command line); the
    previous one put back after."""
    hydra = HydraConfig.instance()
    previous = hydra.cfg
    hydra.set_config(full)
    try:
        yield
    finally:
        if previous is not None:
            hydra.set_config(previous)
        else:
            hydra.cfg = None


def _write_record(full: DictConfig, job: DictConfig, overrides: list[str], run_dir: Path) -> None:
    """Hydra's record of the run (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``), where the command
    line's Hydra writes it (``hydra.output_subdir``)."""
    subdir = hydra_value(full, "hydra.output_subdir")
    if subdir is None:
        return
    record = run_dir / str(subdir)
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(job, record / "config.yaml")
    OmegaConf.save(
        OmegaConf.create({"hydra": OmegaConf.to_container(full.hydra, resolve=False)}), record / "hydra.yaml"
    )
    OmegaConf.save(OmegaConf.create(overrides), record / "overrides.yaml")


@contextlib.contextmanager
def _package_log(run_dir: Path, job_name: str) -> Iterator[None]:
    """The package's log lines (the closing lines among them) printed and kept in ``<run dir>/<job>.log``, and
    Lightning's warnings only (not its "GPU available" and tip lines), as the command line's logging config
    does (configs/hydra/job_logging/backprop_lab.yaml), for the length of one run."""
    from backprop_lab.run_lock import run_dir_locked

    lightning = {name: logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")}
    lightning_levels = {name: logger.level for name, logger in lightning.items()}
    package = logging.getLogger("backprop_lab")
    with run_dir_locked(run_dir, "run_dir"):  # taken before the log file is made in it
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        file = logging.FileHandler(run_dir / f"{job_name}.log")
        file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        level = package.level
        package.setLevel(logging.INFO)
        package.addHandler(console)
        package.addHandler(file)
        for logger in lightning.values():
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, logger in lightning.items():
                logger.setLevel(lightning_levels[name])
            package.removeHandler(console)
            package.removeHandler(file)
            file.close()
            package.setLevel(level)
