"""What only torch and Lightning can decide, decided before Hydra creates the run directory.

:func:`backprop_lab.config.validate` checks the config without torch (about a second). What needs torch
and Lightning is checked here, by building what the run would build, with nothing written where a user
would see it: this machine's accelerator and device count; Lightning's ``Trainer`` with the run's
``trainer.*`` keys, the user's callbacks and loggers (Lightning decides the strategy, the precision, the
accelerator, the devices and whether the callbacks go together, and its refusal is worded here in one
line naming the key); each callback and logger built from its config (its constructor decides its
arguments); and what Lightning would only refuse once the run has started: a ``monitor`` the run never
logs, a Stochastic Weight Averaging start given as a fraction of ``max_epochs`` (a run here ends by
``trainer.max_steps``, with ``max_epochs=-1``), a file logger's keyword arguments (TensorBoard's go to
its writer only when it first writes, and CSV's flush interval is used at its first row: each writes one
row here, into a temporary directory).

:func:`check_config` is the whole check (validate, then this) and remembers each config it passed, so
that :func:`check_config_once` in the job skips a config the run's callback already checked: each run is
checked once (the module imports neither torch nor Lightning until a check needs them).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backprop_lab.config import ConfigError, check_accelerator, check_devices, validate

# What BackpropModule logs with self.log (module.py): the only metric Lightning's callbacks (EarlyStopping,
# ModelCheckpoint) can monitor; the monitors write to the loggers directly.
MONITORABLE = ("train/loss",)
# Strategies that start DDP's processes from inside Python: the run's module loses its trainer in a spawned
# process and a forked one hangs; this package starts them from the command line (trainer.strategy=ddp).
IN_PROCESS_LAUNCHES = ("ddp_spawn", "ddp_fork", "ddp_notebook")
TRAINER_KEYS = ("strategy", "precision", "accelerator", "devices")  # the keys Lightning's refusals name

_checked: set[str] = set()  # fingerprints of the configs check_config passed in this process


def fingerprint(cfg: DictConfig) -> str:
    """The config as typed (interpolations unresolved), without Hydra's own node."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    return json.dumps(container, sort_keys=True, default=str)


def check_config(cfg: DictConfig) -> None:
    """Every check of a run's config: :func:`validate`, then :func:`check_instantiable`. Raises ConfigError."""
    validate(cfg)
    check_instantiable(cfg)


def check_config_once(cfg: DictConfig) -> None:
    """:func:`check_config`, unless this process already passed this config (the run's callback did)."""
    if fingerprint(cfg) not in _checked:
        check_config(cfg)


def _one_line(error: BaseException) -> str:
    """An exception's message in one line (Hydra's instantiate wraps the constructor's error: its cause)."""
    from hydra.errors import InstantiationException

    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("full_key")]
    return " ".join(lines) or type(error).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's info lines and warnings while it builds what the run will build again."""
    import lightning.pytorch  # noqa: F401 (it sets its loggers' levels when imported: import it first)

    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def check_instantiable(cfg: DictConfig) -> None:
    """What torch and Lightning decide, before anything is written (imports both: a few seconds).

    Raises ConfigError naming the key and, in one line, what Lightning or the constructor said. Records
    the config as checked (:func:`check_config_once`); call it after :func:`validate`.
    """
    trainer_cfg = cfg.trainer
    strategy = str(trainer_cfg.strategy)
    if strategy.startswith(IN_PROCESS_LAUNCHES):
        raise ConfigError(
            f"trainer.strategy={strategy!r} is not accepted: it starts DDP's processes from inside Python, "
            "where a run of this package cannot work; use trainer.strategy=ddp (trainer=ddp), which starts "
            "them from the command line"
        )
    check_accelerator(trainer_cfg.accelerator)
    check_devices(trainer_cfg.accelerator, trainer_cfg.devices)
    with _quiet(), tempfile.TemporaryDirectory(prefix="backprop-lab-check-") as tmp:
        callbacks = [_check_callback(f"callbacks.{name}", entry) for name, entry in cfg.callbacks.items()]
        loggers = [_check_logger(f"logger.{name}", entry, tmp) for name, entry in cfg.logger.items()]
        _check_trainer(cfg, callbacks, loggers, tmp)
    _checked.add(fingerprint(cfg))


def _build(key: str, entry: DictConfig, **kwargs: Any) -> Any:
    from hydra.utils import instantiate

    try:
        return instantiate(entry, **kwargs)
    except Exception as error:  # the constructor's refusal, whatever its type
        raise ConfigError(f"{key} is not accepted: {_one_line(error)}") from error


def _check_callback(key: str, entry: DictConfig) -> Any:
    from hydra.utils import get_class
    from lightning.pytorch.callbacks import ModelSummary, StochasticWeightAveraging

    callback = _build(key, entry)
    if isinstance(callback, ModelSummary):  # its max_depth is used only when the run starts: Lightning decides now
        _check_summary_depth(key, entry)
    monitor = getattr(callback, "monitor", None)
    if isinstance(monitor, str) and monitor not in MONITORABLE:
        raise ConfigError(
            f"{key}.monitor={monitor!r} is not accepted: a run logs {', '.join(MONITORABLE)} for callbacks "
            f"to monitor; use {key}.monitor={MONITORABLE[0]}"
        )
    if isinstance(callback, StochasticWeightAveraging):
        defaults = {k: v.default for k, v in inspect.signature(get_class(entry._target_)).parameters.items()}
        given = {**defaults, **OmegaConf.to_container(entry, resolve=True)}
        start = given["swa_epoch_start"]
        if not isinstance(start, int) or isinstance(start, bool):
            raise ConfigError(
                f"{key}.swa_epoch_start={start!r} is not accepted: a fraction of max_epochs, and a run here ends "
                f"by trainer.max_steps (max_epochs=-1); give the epoch to start averaging at, e.g. "
                f"+{key}.swa_epoch_start=1"
            )
        _check_swa_schedule(key, given)
    return callback


def _check_summary_depth(key: str, entry: DictConfig) -> None:
    import lightning as L
    from hydra.utils import get_class
    from lightning.pytorch.utilities.model_summary import summarize

    depth = entry.get("max_depth", inspect.signature(get_class(entry._target_)).parameters["max_depth"].default)
    try:
        summarize(L.LightningModule(), max_depth=depth)
    except Exception as error:
        raise ConfigError(f"{key} is not accepted: {_one_line(error)}") from error


def _check_swa_schedule(key: str, given: dict) -> None:
    """What Stochastic Weight Averaging hands to torch's SWALR only once averaging starts: torch decides now."""
    import torch
    from torch.optim.swa_utils import SWALR

    lrs = given["swa_lrs"]
    try:
        SWALR(
            torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1),
            swa_lr=lrs[0] if isinstance(lrs, list) else lrs,
            anneal_epochs=given["annealing_epochs"],
            anneal_strategy=given["annealing_strategy"],
        )
    except Exception as error:
        raise ConfigError(f"{key} is not accepted: {_one_line(error)}") from error


def _check_logger(key: str, entry: DictConfig, tmp: str) -> Any:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logger = _build(key, entry, save_dir=tmp)
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):  # writes files only: its writer, made now
        try:
            logger.experiment  # noqa: B018 (TensorBoard passes its extra keyword arguments to its writer here)
            logger.log_metrics({MONITORABLE[0]: 0.0}, step=0)  # and the logger's own arguments are used here
            logger.finalize("success")
        except Exception as error:
            raise ConfigError(f"{key} is not accepted: {_one_line(error)}") from error
    return logger


def _check_trainer(cfg: DictConfig, callbacks: list, loggers: list, tmp: str) -> None:
    import lightning as L
    from lightning.pytorch.callbacks import ProgressBar

    from backprop_lab.progress import StepProgressBar

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    extra = list(callbacks)
    if trainer_cfg["enable_progress_bar"] and not any(isinstance(c, ProgressBar) for c in callbacks):
        extra.append(StepProgressBar(refresh_rate=cfg.progress_every_n_steps))  # the run's own bar steps aside

    def build(**changed: Any) -> None:
        L.Trainer(
            **{**trainer_cfg, **changed},
            max_epochs=-1,
            use_distributed_sampler=False,
            logger=loggers,
            callbacks=extra,
            default_root_dir=tmp,
        )

    try:
        build()
    except Exception as error:  # Lightning's refusal: its type varies (MisconfigurationException, ValueError ...)
        message = _one_line(error)
        lowered = message.lower()
        named = [k for k in TRAINER_KEYS if k in lowered]
        key = min(named, key=lowered.index) if named else _culprit(build, trainer_cfg)
        names = [f"callbacks.{name}" for name, c in zip(cfg.callbacks, callbacks) if type(c).__name__ in message]
        if not names and "progress bar" in lowered:
            names = [f"callbacks.{name}" for name, c in zip(cfg.callbacks, callbacks) if isinstance(c, ProgressBar)]
        what = f"trainer.{key}={trainer_cfg[key]!r}" if key is not None else (names or ["trainer"])[0]
        raise ConfigError(f"{what} is not accepted: {message}") from error


def _culprit(build: Any, trainer_cfg: dict) -> str | None:
    """The trainer key whose default (Lightning's ``auto``, ``32-true``) makes ``build`` succeed, if one does."""
    for key in TRAINER_KEYS:
        default = "32-true" if key == "precision" else "auto"
        if trainer_cfg[key] == default:
            continue
        try:
            build(**{key: default})
        except Exception:  # noqa: BLE001, S112 (not this key)
            continue
        return key
    return None
