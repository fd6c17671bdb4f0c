"""Structured configs (the schema behind ``configs/``) and the checks OmegaConf's types cannot express.

This module imports neither torch nor Lightning: the CLI composes and validates a config here first,
so a bad override, ``--help`` and ``--cfg job`` answer in about a second.

Types are checked by OmegaConf when Hydra merges an override (``optim.lr=abc`` fails naming the key);
ranges and choices are checked by :func:`validate`, which raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

# The choices of the keys that take one of a list (each list lives here only).
PICTURES = ("loss_surface", "fit", "unit_activity", "grad_norm_by_layer")  # monitor.pictures
ACTIVATIONS = ("sigmoid", "relu", "leaky_relu")  # model.activation (mlp)
INITS = ("default", "he", "negative_bias")  # model.init (mlp)
REPLAY_FORMATS = ("table", "markdown", "json")  # replay.format


class ConfigError(ValueError):
    """A config value that is well-typed but not accepted; the message names the key."""


# Every default lives in the YAML files of configs/ (the user's interface); these dataclasses give the
# keys their types, so OmegaConf refuses a wrong type naming the key. No field has a default here.

# --- model group: the post's networks -------------------------------------------------------------


@dataclass
class LinearNetConfig:
    """Section 3: ŷ = w·x."""

    _target_: str = "backprop_lab.models.LinearNet"
    w: float = MISSING  # initial weight


@dataclass
class SigmoidNetConfig:
    """Section 4: h = σ(w1·x), ŷ = w2·h."""

    _target_: str = "backprop_lab.models.SigmoidNet"
    w1: float = MISSING
    w2: float = MISSING


@dataclass
class ReLUNetConfig:
    """Section 5: h = ReLU(w1·x), ŷ = w2·h."""

    _target_: str = "backprop_lab.models.ReLUNet"
    w1: float = MISSING
    w2: float = MISSING
    relu_grad_at_zero: int = MISSING  # ReLU′(0): 0 or 1


@dataclass
class MLPConfig:
    """x → fc1 → act1 → … → out; in_features and out_features come from the data set."""

    _target_: str = "backprop_lab.models.MLP"
    hidden: list[int] = MISSING
    activation: str = MISSING  # one of ACTIVATIONS
    negative_slope: float = MISSING
    init: str = MISSING  # one of INITS
    bias_init: float = MISSING
    relu_grad_at_zero: int = MISSING


# --- data, optim, trainer, monitors ------------------------------------------------------------------


@dataclass
class ExampleDataConfig:
    """One training example (x, y), presented as a batch of one at every step."""

    _target_: str = "backprop_lab.data.ExampleDataModule"
    x: float = MISSING
    y: float = MISSING


@dataclass
class SineDataConfig:
    """1-D regression: y = sin(x) + noise, x in [−π, π]; probe: the clean curve on a grid."""

    _target_: str = "backprop_lab.data.SineDataModule"
    n_samples: int = MISSING
    n_probe: int = MISSING
    noise: float = MISSING
    batch_size: int = MISSING


@dataclass
class MoonsDataConfig:
    """2-D binary classification: two interleaving half circles, labels 0 and 1."""

    _target_: str = "backprop_lab.data.MoonsDataModule"
    n_samples: int = MISSING
    n_probe: int = MISSING
    noise: float = MISSING
    batch_size: int = MISSING


@dataclass
class SGDConfig:
    """Plain gradient descent: w ← w − η·∂L/∂w (torch.optim.SGD, built with the model's parameters)."""

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` (configs/trainer/default.yaml)."""

    accelerator: str = MISSING
    devices: Any = MISSING  # a positive integer or "auto"
    strategy: str = MISSING
    precision: str = MISSING
    max_steps: int = MISSING
    log_every_n_steps: int = MISSING
    accumulate_grad_batches: int = MISSING
    gradient_clip_val: Optional[float] = MISSING  # noqa: UP045 (OmegaConf reads typing.Optional)
    enable_progress_bar: bool = MISSING
    enable_model_summary: bool = MISSING
    enable_checkpointing: bool = MISSING
    deterministic: bool = MISSING


@dataclass
class MonitorConfig:
    """What the monitors log, and how often (scalars follow trainer.log_every_n_steps)."""

    gradients: bool = MISSING
    dead_relu: bool = MISSING
    backprop_view: bool = MISSING
    histogram_every_n_steps: int = MISSING
    probe_every_n_steps: int = MISSING
    picture_every_n_steps: int = MISSING
    pictures: list[str] = MISSING
    saturation_threshold: float = MISSING  # a sigmoid/tanh unit is saturated where its derivative is below
    sharpness: int = MISSING  # λ_max of the loss Hessian every this many steps (sharpness/*); 0 = off
    sharpness_iters: int = MISSING  # at most this many Hessian-vector products per power iteration


@dataclass
class ReplayConfig:
    """The post's step replayed from the real backward (scripts/replay.py, and the ``replay`` text in training)."""

    format: str = MISSING  # one of REPLAY_FORMATS
    to_tensorboard: bool = MISSING


@dataclass
class CheckpointConfig:
    """The run's own checkpoint (``<run dir>/checkpoints/last.ckpt``), which ``resume=<run dir>`` continues."""

    every_n_steps: int = MISSING


@dataclass
class TrainConfig:
    model: Any = MISSING
    data: Any = MISSING
    optim: SGDConfig = MISSING
    trainer: TrainerConfig = MISSING
    monitor: MonitorConfig = MISSING
    replay: ReplayConfig = MISSING
    # logger=<name>: {<name>: {_target_: <a Lightning Logger>, ...}}; several with logger=[tensorboard,csv]
    logger: dict[str, Any] = field(default_factory=dict)
    # extra Lightning callbacks: +callbacks.<name>._target_=lightning.pytorch.callbacks.EarlyStopping ...
    callbacks: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointConfig = MISSING
    resume: Optional[str] = None  # noqa: UP045 (OmegaConf reads typing.Optional)
    seed: int = MISSING
    tol: float = MISSING
    progress_every_n_steps: int = MISSING


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore: ``train_schema`` and ``schema/<group>/<name>``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema/model", name="linear", node=LinearNetConfig)
    cs.store(group="schema/model", name="sigmoid", node=SigmoidNetConfig)
    cs.store(group="schema/model", name="relu", node=ReLUNetConfig)
    cs.store(group="schema/model", name="mlp", node=MLPConfig)
    cs.store(group="schema/data", name="example", node=ExampleDataConfig)
    cs.store(group="schema/data", name="sine", node=SineDataConfig)
    cs.store(group="schema/data", name="moons", node=MoonsDataConfig)


# --- checks beyond types ---------------------------------------------------------------------------

# The classes a config may name in _target_ (instantiate builds whatever a _target_ names, so a config,
# or a command line, could otherwise run any callable: data._target_=os.system). The package's own
# networks and data sets, each with the keys of its schema:
MODELS = {c._target_: c for c in (LinearNetConfig, SigmoidNetConfig, ReLUNetConfig, MLPConfig)}
DATA = {c._target_: c for c in (ExampleDataConfig, SineDataConfig, MoonsDataConfig)}
# the optimizers of torch.optim that take optim's keys (lr, momentum, weight_decay):
OPTIMIZERS = ("torch.optim.SGD", "torch.optim.RMSprop")
# Lightning's loggers (lightning.pytorch.loggers.<name>), with the module each needs beyond this package's
# dependencies and its pip name:
LOGGERS = {
    "TensorBoardLogger": None,
    "CSVLogger": None,
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "CometLogger": ("comet_ml", "comet-ml"),
}
# the package's own (backprop_lab.loggers): Lightning's TensorBoardLogger writing a step's scalars as one event,
# its CSVLogger keeping the rows of a resumed run, its MLFlowLogger and WandbLogger safe with no server or
# account (logger=mlflow, logger=wandb; each needs what Lightning's of the same name needs)
OWN_LOGGERS = (
    "backprop_lab.loggers.TensorBoardLogger",
    "backprop_lab.loggers.CSVLogger",
    "backprop_lab.loggers.MLFlowLogger",
    "backprop_lab.loggers.WandbLogger",
)
# Lightning's callbacks that a config can build (lightning.pytorch.callbacks.<name>), with the module each needs
# beyond this package's dependencies and its pip name. Not the base classes, nor those a run of this package
# cannot use: LambdaCallback and ThroughputMonitor take functions, BackboneFinetuning needs a module with a
# ``backbone``, LearningRateFinder a module with an ``lr`` (sweep optim.lr instead).
CALLBACKS = {
    "BatchSizeFinder": None, "DeviceStatsMonitor": ("psutil", "psutil"), "EarlyStopping": None,
    "EMAWeightAveraging": None, "GradientAccumulationScheduler": None, "LearningRateMonitor": None,
    "ModelCheckpoint": None, "ModelPruning": None, "ModelSummary": None, "OnExceptionCheckpoint": None,
    "RichModelSummary": None, "RichProgressBar": None, "SpikeDetection": None, "StochasticWeightAveraging": None,
    "Timer": None, "TQDMProgressBar": None, "WeightAveraging": None,
}  # fmt: skip
# The groups whose keys are those of one schema, whatever the options chose:
GROUPS = {
    "optim": SGDConfig,
    "trainer": TrainerConfig,
    "monitor": MonitorConfig,
    "replay": ReplayConfig,
    "checkpoint": CheckpointConfig,
}

INT64_MAX = 2**63 - 1  # the largest integer torch, numpy and Lightning take
SEED_MAX = 2**32 - 1  # numpy's seeds, which Lightning's seed_everything sets: 0 … 2**32 − 1
FLOAT32_MAX = 3.4028234663852886e38  # a larger start value becomes inf in a float32 tensor
FLOAT16_MAX = 65504.0  # ... and in a float16 one (trainer.precision=16-true)
# A run's memory, roughly (see memory_estimate): float32 weight, gradient, optimizer state and one copy per
# parameter; float32 z and h per hidden unit and row, and their gradients; and per sample the data's tensors
# and the epoch's shuffled order as a Python list of ints (about 100 bytes, measured).
BYTES_PER_PARAMETER = 16
BYTES_PER_ACTIVATION = 16
BYTES_PER_SAMPLE = 100
# The estimate is rough and torch, Lightning, the monitors and the system need the rest: a run may take at
# most this share of the machine's memory by the estimate.
MEMORY_SHARE = 0.5
# A run's longest pause, roughly (see pause_estimate): a signal is answered between batches and before an
# epoch, so one batch (forward and backward: about 6 operations per parameter and row, at a conservative
# OPERATIONS_PER_SECOND per core) or one epoch's shuffle (SECONDS_PER_SAMPLE, measured) must fit in
# MAX_PAUSE_SECONDS, the time docs/reliability.md gives a run to stop.
OPERATIONS_PER_PARAMETER_AND_ROW = 6
OPERATIONS_PER_SECOND = 1e9
SECONDS_PER_SAMPLE = 1.5e-7
MAX_PAUSE_SECONDS = 10.0


def _require(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not accepted: {accepted}.")


def validate(cfg: DictConfig) -> None:
    """Refuse what the schema's types admit but a run cannot use. Raises ConfigError naming the key and
    what is accepted. Imports neither torch nor Lightning. What is checked, in this order:

    * every value resolves: no ``???`` left, no interpolation that fails (``optim.lr=${nope}``);
    * the schema is closed: a key it lacks, at the top or in a group (``+max_steps=5``,
      ``+trainer.max_step=5``), is refused with the nearest valid key; ``logger.<name>`` and
      ``callbacks.<name>`` take one entry per logger or callback;
    * ``_target_``: the package's own networks and data sets (``MODELS``, ``DATA``; the keys of that
      class's schema, none missing), ``OPTIMIZERS`` with ``_partial_: true``, Lightning's ``LOGGERS``
      (installed) and ``CALLBACKS``; no other instantiate key (``_partial_``, ``_args_`` …) and no nested
      ``_target_`` in a logger or callback;
    * numbers: every float finite (no nan, inf); model and data start values within float32 (float16
      under ``trainer.precision=16-true``), which would otherwise become inf; every integer within int64;
    * ranges and choices: 0 < optim.lr <= float32's largest, 0 <= optim.momentum < 1, optim.weight_decay >= 0
      with optim.lr · optim.weight_decay < 1; at least one logger; trainer.max_steps,
      log_every_n_steps, accumulate_grad_batches, the monitors' intervals, checkpoint.every_n_steps,
      progress_every_n_steps >= 1; trainer.gradient_clip_val >= 0 or null; tol >= 0;
      replay.format, monitor.pictures (each once), model.activation, model.init from their lists;
      model.relu_grad_at_zero 0 or 1; model.negative_slope in [0, 1); model.hidden positive integers;
      data.n_samples, data.n_probe >= 1 (>= 2 for the moons' two classes), data.noise >= 0,
      1 <= data.batch_size <= data.n_samples;
      the moons with the mlp only; resume null or a directory;
    * trainer.devices a positive integer or auto, data.batch_size and an epoch's last, smaller batch
      multiples of it; seed within numpy's range [0, 2**32 − 1];
    * trainer.accumulate_grad_batches at most the batches of an epoch
      (:func:`batches_per_epoch`; 1 for the post's example), as an update never spans two epochs;
    * memory and time: the run's rough size (:func:`memory_estimate`) within half this machine's memory, and
      its longest pause (:func:`pause_estimate`: one batch, or one epoch's shuffle) within MAX_PAUSE_SECONDS.

    What needs torch or Lightning to decide (the strategy, the precision, the accelerator, the callbacks'
    and loggers' arguments) is :func:`backprop_lab.preflight.check_instantiable`'s.
    """
    try:
        _validate(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as error:  # a key deleted (~seed), a node of the wrong kind: name the key
        key = getattr(error, "full_key", None) or getattr(error, "key", None) or "the config"
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{key} is not accepted: {reason}") from error


def _validate(cfg: DictConfig) -> None:
    _check_resolves(cfg)
    _check_keys(cfg)
    _check_targets(cfg)
    _check_numbers(cfg)

    _validate_optim(cfg.optim)

    t = cfg.trainer
    _require(t.max_steps >= 1, "trainer.max_steps", t.max_steps, "use an integer >= 1")
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "use an integer >= 1")
    devices = t.devices
    _require(
        devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1),
        "trainer.devices",
        devices,
        "use a positive integer or auto",
    )
    for key in ("histogram_every_n_steps", "probe_every_n_steps", "picture_every_n_steps"):
        every = cfg.monitor[key]
        _require(every >= 1, f"monitor.{key}", every, "use an integer >= 1")
    _require(
        t.accumulate_grad_batches >= 1,
        "trainer.accumulate_grad_batches",
        t.accumulate_grad_batches,
        "use an integer >= 1",
    )
    clip = t.gradient_clip_val
    _require(clip is None or clip >= 0, "trainer.gradient_clip_val", clip, "use a number >= 0, or null for no clipping")
    _validate_monitor(cfg.monitor)
    _require(
        cfg.progress_every_n_steps >= 1,
        "progress_every_n_steps",
        cfg.progress_every_n_steps,
        "use an integer >= 1 (the progress bar is redrawn every this many steps)",
    )
    every = cfg.checkpoint.every_n_steps
    _require(every >= 1, "checkpoint.every_n_steps", every, "use an integer >= 1 (a checkpoint every this many steps)")
    _require(cfg.tol >= 0, "tol", cfg.tol, "use a number >= 0 (0 turns early stopping off)")
    _require(
        0 <= cfg.seed <= SEED_MAX,
        "seed",
        cfg.seed,
        f"use an integer from 0 to {SEED_MAX} (numpy's seeds, which Lightning's seed_everything sets)",
    )
    fmt = cfg.replay.format
    _require(fmt in REPLAY_FORMATS, "replay.format", fmt, f"use one of {', '.join(REPLAY_FORMATS)}")
    resume = cfg.resume
    _require(
        resume is None or str(resume).strip() != "",
        "resume",
        resume,
        "give the run directory to continue (resume=outputs/runs/<run>), or null for a new run",
    )

    if "relu_grad_at_zero" in cfg.model:
        g = cfg.model.relu_grad_at_zero
        _require(g in (0, 1), "model.relu_grad_at_zero", g, "use 0 or 1 (the value of ReLU′ at exactly z = 0)")
    if "hidden" in cfg.model:
        _validate_mlp(cfg.model)
    if "n_samples" in cfg.data:
        _validate_generated_data(cfg.data)
    two_inputs = cfg.data.get("_target_") == MoonsDataConfig._target_
    _require(
        not two_inputs or "hidden" in cfg.model,
        "data",
        "moons",
        f"the moons have two inputs and {cfg.model.get('_target_')} takes one; use model=mlp",
    )
    _validate_logger(cfg.logger)
    check_batch_split(cfg)
    _check_accumulation(cfg)
    _check_memory(cfg)
    _check_pause(cfg)


# --- the config's shape: values resolve, keys are the schema's, targets are allowed ------------------------


def _check_resolves(cfg: DictConfig) -> None:
    """Every value outside ``hydra`` resolves: an interpolation that fails, or a ``???`` left, names its key."""
    try:
        for key in cfg:
            if key != "hydra":
                value = cfg[key]
                if isinstance(value, Container):
                    OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key}=??? is not accepted: give it a value") from error
    except InterpolationResolutionError as error:
        reason = str(error).splitlines()[0]
        raise ConfigError(f"{error.full_key} is not accepted: its interpolation does not resolve ({reason})") from error
    except OmegaConfBaseException as error:
        raise ConfigError(f"{error.full_key} is not accepted: {str(error).splitlines()[0]}") from error


def _names(schema: type) -> list[str]:
    return [f.name for f in fields(schema)]


def _schema_paths() -> list[str]:
    """Every key of the schema as a dotted path (model.* and data.* of every class), for suggestions."""
    paths = [f.name for f in fields(TrainConfig)]
    paths += [f"{group}.{name}" for group, schema in GROUPS.items() for name in _names(schema)]
    for group, schemas in (("model", MODELS), ("data", DATA)):
        paths += list(dict.fromkeys(f"{group}.{name}" for s in schemas.values() for name in _names(s)))
    return paths


def _closed(node: DictConfig, prefix: str, allowed: list[str], where: str) -> None:
    """Refuse a key of ``node`` that ``allowed`` lacks, with the nearest valid key (difflib)."""
    for key in node:
        if key in allowed:
            continue
        full = f"{prefix}.{key}" if prefix else str(key)
        near = difflib.get_close_matches(str(key), allowed, n=1)
        nearest = [f"{prefix}.{near[0]}" if prefix else near[0]] if near else []
        if not nearest:  # a key of another group: +max_steps=5 meant trainer.max_steps
            paths = [p for p in _schema_paths() if p != full]
            last = difflib.get_close_matches(str(key), [p.rsplit(".", 1)[-1] for p in paths], n=1, cutoff=0.8)
            nearest = [p for p in paths if p.rsplit(".", 1)[-1] == last[0]][:1] if last else []
        keys = ", ".join(name for name in allowed if name != "hydra")
        hint = f"did you mean {nearest[0]}?" if nearest else f"its keys are {keys}"
        raise ConfigError(f"{full} is not accepted: {where} has no such key; {hint}")


def unknown_top_level_key(key: str) -> ConfigError:
    """The refusal of a top-level key the schema lacks, as :func:`validate` words ``+key=...``: Hydra's own
    report of ``key=...`` (``modle=relu``) suggests ``+modle=relu``, which cannot work either."""
    try:
        _closed(OmegaConf.create({key: None}), "", [*_names(TrainConfig), "hydra"], "the config")
    except ConfigError as error:
        return error
    raise ValueError(f"{key} is a key of the config")


def _present(node: DictConfig, prefix: str, names: list[str]) -> None:
    """Every key of the schema is there: ``~seed`` or ``~trainer.max_steps`` deletes one the run needs."""
    for name in names:
        if name not in node:
            full = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{full} is missing: the run needs it; drop ~{full} (its default is in configs/)")


def _check_keys(cfg: DictConfig) -> None:
    top = [*_names(TrainConfig), "hydra"]  # hydra: Hydra's own node, in the config its callbacks see
    _closed(cfg, "", top, "the config")
    _present(cfg, "", _names(TrainConfig))
    for group, schema in GROUPS.items():
        _closed(cfg[group], group, _names(schema), group)
        _present(cfg[group], group, _names(schema))
    for group, schemas in (("model", MODELS), ("data", DATA)):
        node = cfg[group]
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        _require(
            target in schemas,
            f"{group}._target_",
            target,
            f"use one of {', '.join(schemas)} (the package's own classes, which the {group} options set)",
        )
        names = _names(schemas[target])
        _closed(node, group, names, target)
        missing = [name for name in names if name not in node]
        if missing:
            raise ConfigError(f"{group}.{missing[0]} is missing: {target} takes {', '.join(names)}")


def _check_targets(cfg: DictConfig) -> None:
    target = cfg.optim._target_
    _require(
        target in OPTIMIZERS,
        "optim._target_",
        target,
        f"use {' or '.join(OPTIMIZERS)} (the optimizers of torch.optim that take lr, momentum and weight_decay)",
    )
    _require(
        cfg.optim._partial_ is True,
        "optim._partial_",
        cfg.optim._partial_,
        "use true (the optimizer is built later, with the model's parameters)",
    )
    for name, entry in cfg.logger.items():
        _check_entry(f"logger.{name}", entry, "lightning.pytorch.loggers.", LOGGERS, "TensorBoardLogger", OWN_LOGGERS)
    for name, entry in cfg.callbacks.items():
        _check_entry(f"callbacks.{name}", entry, "lightning.pytorch.callbacks.", CALLBACKS, "EarlyStopping")


def _check_entry(key: str, entry: Any, module: str, classes: dict, example: str, own: tuple[str, ...] = ()) -> None:
    """One logger or callback: a ``_target_`` of ``module`` from ``classes`` (or one of the package's ``own``)
    and its keyword arguments."""
    _require(
        isinstance(entry, DictConfig) and "_target_" in entry,
        key,
        OmegaConf.to_container(entry) if isinstance(entry, Container) else entry,
        f"give a class and its keyword arguments, e.g. {key}._target_={module}{example}",
    )
    target = str(entry._target_)
    name = target[len(module) :] if target.startswith(module) else None
    _require(
        name in classes or target in own,
        f"{key}._target_",
        target,
        f"use {' or '.join(own + (f'{module}<name>',))} with <name> one of {', '.join(classes)}",
    )
    needs = classes.get(name if name is not None else target.rsplit(".", 1)[-1])  # the package's: as Lightning's
    if needs is not None and importlib.util.find_spec(needs[0]) is None:
        raise ConfigError(
            f"{key}._target_={target!r} is not accepted here: it needs {needs[0]} (pip install {needs[1]})"
        )
    for sub in entry:
        _require(
            not str(sub).startswith("_") or sub == "_target_",
            f"{key}.{sub}",
            entry[sub],
            "Hydra's instantiate keys other than _target_ are not accepted here; give keyword arguments only",
        )
    nested = _nested_target(entry, key)
    if nested is not None:
        raise ConfigError(f"{nested}._target_ is not accepted: only {key}._target_ names a class; give plain arguments")


def _nested_target(node: Any, key: str) -> str | None:
    """The key of a ``_target_`` below the top of ``node``, if any."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node) if isinstance(node, ListConfig) else ()
    for sub, value in items:
        inner = f"{key}.{sub}" if isinstance(node, DictConfig) else f"{key}[{sub}]"
        if isinstance(value, DictConfig) and "_target_" in value:
            return inner
        found = _nested_target(value, inner)
        if found is not None:
            return found
    return None


# --- numbers ------------------------------------------------------------------------------------------------


def _leaves(key: str, value: Any):
    """``(key, value)`` of every scalar in a resolved container, list items as ``key[i]``."""
    if isinstance(value, dict):
        for sub, inner in value.items():
            yield from _leaves(f"{key}.{sub}", inner)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _leaves(f"{key}[{i}]", inner)
    else:
        yield key, value


FINITE_HINTS = {"trainer.gradient_clip_val": " (or null for no clipping)", "tol": " (0 turns early stopping off)"}


def _check_numbers(cfg: DictConfig) -> None:
    """Floats finite, model and data start values within their tensors' type, integers within int64."""
    limit, dtype = (FLOAT16_MAX, "float16") if cfg.trainer.precision == "16-true" else (FLOAT32_MAX, "float32")
    scalars = [(key, cfg[key]) for key in ("seed", "tol", "progress_every_n_steps")]
    for group in ("model", "data", *GROUPS):
        scalars += [(k, v, group) for k, v in _leaves(group, OmegaConf.to_container(cfg[group], resolve=True))]
    for key, value, *group in scalars:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int):
            _require(
                abs(value) <= INT64_MAX,
                key,
                value,
                f"use an integer within a 64-bit integer's range (at most {INT64_MAX})",
            )
            continue
        _require(math.isfinite(value), key, value, f"use a finite number{FINITE_HINTS.get(key, '')}")
        if group and group[0] in ("model", "data"):
            _require(abs(value) <= limit, key, value, f"it becomes inf in {dtype}; use a number within ±{limit:.4g}")


# --- groups ---------------------------------------------------------------------------------------------------


def _validate_optim(optim: DictConfig) -> None:
    """lr, momentum and weight decay within the range where they mean what their names say."""
    lr, momentum, decay = optim.lr, optim.momentum, optim.weight_decay
    _require(lr > 0, "optim.lr", lr, "use a positive learning rate, e.g. optim.lr=0.1")
    # the update lr·g is a float32 tensor: a larger lr makes every update inf
    _require(
        lr <= FLOAT32_MAX, "optim.lr", lr, f"the update lr·gradient becomes inf in float32; use lr <= {FLOAT32_MAX:.4g}"
    )
    _require(
        0 <= momentum < 1,
        "optim.momentum",
        momentum,
        "use a number with 0 <= momentum < 1 (the share of the last update kept; at 1 or more it never fades)",
    )
    _require(decay >= 0, "optim.weight_decay", decay, "use a number >= 0")
    _require(
        lr * decay < 1,
        "optim.weight_decay",
        decay,
        f"each step multiplies the weights by 1 − lr·weight_decay, which at optim.lr={lr} must stay above 0; "
        f"use weight_decay < 1/lr = {1 / lr:.4g} (0 for none)",
    )


def _validate_logger(logger: DictConfig) -> None:
    _require(
        len(logger) > 0,
        "logger",
        [],
        "a run logs somewhere; use logger=tensorboard (the default), logger=csv or logger=[tensorboard,csv]",
    )


def _validate_mlp(model: DictConfig) -> None:
    hidden = OmegaConf.to_container(model.hidden)
    _require(
        len(hidden) > 0 and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in hidden),
        "model.hidden",
        hidden,
        "use a non-empty list of positive layer widths, e.g. model.hidden=[16,16]",
    )
    _require(
        model.activation in ACTIVATIONS, "model.activation", model.activation, f"use one of {', '.join(ACTIVATIONS)}"
    )
    _require(model.init in INITS, "model.init", model.init, f"use one of {', '.join(INITS)}")
    a = model.negative_slope
    _require(0 <= a < 1, "model.negative_slope", a, "use a number with 0 <= a < 1 (0 is plain ReLU)")


def _validate_generated_data(data: DictConfig) -> None:
    # the moons are two classes: a set of fewer than two points holds only one of them
    least, why = (2, " (one point of each moon)") if data._target_ == MoonsDataConfig._target_ else (1, "")
    _require(data.n_samples >= least, "data.n_samples", data.n_samples, f"use an integer >= {least}{why}")
    _require(data.n_probe >= least, "data.n_probe", data.n_probe, f"use an integer >= {least}{why}")
    _require(data.noise >= 0, "data.noise", data.noise, "use a standard deviation >= 0")
    _require(
        1 <= data.batch_size <= data.n_samples,
        "data.batch_size",
        data.batch_size,
        f"use an integer from 1 to data.n_samples={data.n_samples} (a batch cannot be larger than the data set)",
    )


def _validate_monitor(monitor: DictConfig) -> None:
    pictures = OmegaConf.to_container(monitor.pictures)
    unknown = [p for p in pictures if p not in PICTURES]
    _require(
        not unknown,
        "monitor.pictures",
        pictures,
        f"use a list of {', '.join(PICTURES)} (or [] for none); unknown: {', '.join(map(str, unknown))}",
    )
    twice = sorted({p for p in pictures if pictures.count(p) > 1})
    _require(
        not twice, "monitor.pictures", pictures, f"name each picture once; given more than once: {', '.join(twice)}"
    )
    threshold = monitor.saturation_threshold
    _require(
        0 < threshold <= 1 and math.isfinite(threshold),
        "monitor.saturation_threshold",
        threshold,
        "use a number with 0 < threshold <= 1 (a sigmoid's derivative is at most 0.25, a tanh's 1)",
    )
    every = monitor.sharpness
    _require(
        every >= 0, "monitor.sharpness", every, "use an integer >= 0 (λ_max every this many steps; 0 turns it off)"
    )
    iters = monitor.sharpness_iters
    _require(
        iters >= 1,
        "monitor.sharpness_iters",
        iters,
        "use an integer >= 1 (Hessian-vector products per power iteration)",
    )


# --- memory ---------------------------------------------------------------------------------------------------


def physical_memory() -> int | None:
    """This machine's memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def memory_estimate(cfg: DictConfig) -> tuple[int, str, str]:
    """A rough size of the run in bytes, the key that needs most of it, and how the estimate is made.

    Parameters × 16 bytes (float32 weight, gradient, optimizer state, a copy); plus the rows of a batch and
    of the probe set × the hidden units × 16 bytes of activations (z and h, and their gradients); plus the
    samples × 100 bytes of data (their tensors and an epoch's shuffled order); times the processes
    (trainer.devices), each of which builds all of it. An estimate to refuse the impossible, not a measure.
    The key named is the one whose smallest value would shrink the estimate most.
    """
    data, model = cfg.data, cfg.model
    n_samples, n_probe = int(data.get("n_samples", 1)), int(data.get("n_probe", 0))
    batch = int(data.get("batch_size", 1))
    hidden = [int(w) for w in model.hidden] if "hidden" in model else []
    in_features = 2 if data._target_ == MoonsDataConfig._target_ else 1

    def size(hidden: list[int], n_samples: int, n_probe: int) -> tuple[int, int]:
        widths = [in_features, *hidden, 1]
        params = sum((a + 1) * b for a, b in zip(widths, widths[1:])) if hidden else 2
        activations = BYTES_PER_ACTIVATION * (batch + n_probe) * sum(hidden)
        return BYTES_PER_PARAMETER * params + activations + BYTES_PER_SAMPLE * (n_samples + n_probe), params

    need, params = size(hidden, n_samples, n_probe)
    smaller = {
        "model.hidden": size([1] * len(hidden), n_samples, n_probe)[0],
        "data.n_probe": size(hidden, n_samples, min(n_probe, 1))[0],
        "data.n_samples": size(hidden, min(n_samples, batch), n_probe)[0],
    }
    devices = cfg.trainer.devices
    processes = devices if isinstance(devices, int) and not isinstance(devices, bool) else 1
    detail = (
        f"{params:.3g} parameters × {BYTES_PER_PARAMETER} bytes + ({batch} + {n_probe}) rows × {sum(hidden):.3g} "
        f"hidden units × {BYTES_PER_ACTIVATION} bytes + {n_samples + n_probe:.3g} samples × {BYTES_PER_SAMPLE} bytes"
        + (f", × {processes} processes" if processes > 1 else "")
    )
    return processes * need, min(smaller, key=smaller.get), detail


def _check_memory(cfg: DictConfig) -> None:
    have = physical_memory()
    if have is None:
        return
    need, key, detail = memory_estimate(cfg)
    if need > MEMORY_SHARE * have:
        raise ConfigError(
            f"{key}={_value(cfg, key)!r} is not accepted: the run needs about {need / 2**30:.3g} GiB ({detail}), "
            f"more than half of this machine's {have / 2**30:.3g} GiB of memory; use a smaller value"
        )


def _value(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if isinstance(value, Container) else value


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pause_estimate(cfg: DictConfig) -> tuple[float, str, str]:
    """A rough length in seconds of the run's longest stretch without a check for a signal, the key that
    makes it long, and how the estimate is made: one batch (forward and backward, about
    OPERATIONS_PER_PARAMETER_AND_ROW operations per parameter and row of the batch, at
    OPERATIONS_PER_SECOND per core of this machine), or one epoch's shuffle (SECONDS_PER_SAMPLE each).
    """
    data, model = cfg.data, cfg.model
    hidden = [int(w) for w in model.hidden] if "hidden" in model else []
    in_features = 2 if data._target_ == MoonsDataConfig._target_ else 1
    widths = [in_features, *hidden, 1]
    params = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
    rows = int(data.get("batch_size", 1))
    n = cores()
    batch = OPERATIONS_PER_PARAMETER_AND_ROW * params * rows / (OPERATIONS_PER_SECOND * n)
    n_samples = int(data.get("n_samples", 1))
    shuffle = SECONDS_PER_SAMPLE * n_samples
    if batch >= shuffle:
        detail = (
            f"one batch: {OPERATIONS_PER_PARAMETER_AND_ROW} × {params:.3g} parameters × {rows} rows at "
            f"{OPERATIONS_PER_SECOND:.0e} operations/s on each of {n} cores"
        )
        return batch, "model.hidden" if hidden else "data.batch_size", detail
    return shuffle, "data.n_samples", f"one epoch's shuffle of {n_samples:.3g} samples"


def _check_pause(cfg: DictConfig) -> None:
    seconds, key, detail = pause_estimate(cfg)
    if seconds > MAX_PAUSE_SECONDS:
        raise ConfigError(
            f"{key}={_value(cfg, key)!r} is not accepted: {detail} takes about {seconds:.3g} s on this machine, "
            f"longer than the {MAX_PAUSE_SECONDS:g} s in which a run answers Ctrl-C or SIGTERM; use a smaller value"
        )


def check_accelerator(accelerator: str) -> None:
    """Refuse an accelerator this machine does not have (imports torch, so call it after validate)."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator!r} is not available: this machine has no CUDA GPU "
            "that torch can use (is a CUDA build of torch installed?). Use trainer.accelerator=cpu or auto."
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator='mps' is not available on this machine. Use cpu or auto.")


def check_batch_split(cfg: DictConfig) -> None:
    """Under DDP, ``data.batch_size`` is the global batch, split evenly over ``trainer.devices`` processes."""
    devices = cfg.trainer.devices
    if "batch_size" not in cfg.data or not isinstance(devices, int) or devices < 2:
        return
    if cfg.data.batch_size % devices:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is not accepted with trainer.devices={devices}: the global "
            f"batch is split evenly over the processes, so use a multiple of {devices}."
        )
    n = cfg.data.get("n_samples")
    last = n % cfg.data.batch_size if isinstance(n, int) else 0
    if last % devices:  # each process runs the same batches, so the epoch's last, smaller one splits evenly too
        raise ConfigError(
            f"data.n_samples={n} is not accepted with data.batch_size={cfg.data.batch_size} and trainer.devices="
            f"{devices}: an epoch's last batch holds {last} samples, which do not split evenly over the processes "
            f"(each must run the same batches); use an n_samples whose remainder by {cfg.data.batch_size} is a "
            f"multiple of {devices}, e.g. {n - last % devices}."
        )


def batches_per_epoch(cfg: DictConfig) -> tuple[int, str] | None:
    """The batches of one epoch, as Lightning counts them (the length of the data loader, see
    :mod:`backprop_lab.data`), and how they come about; None where the data config does not tell (a data set
    not the package's). No batch is dropped: the last one is smaller where the batch size does not divide the
    data. Under DDP every process runs the same count, its share of each global batch (:func:`check_batch_split`
    refuses the splits that would not be even)."""
    target = cfg.data.get("_target_")
    if target == ExampleDataConfig._target_:
        return 1, "the post's one example"
    if target not in (SineDataConfig._target_, MoonsDataConfig._target_):
        return None
    n, batch = cfg.data.n_samples, cfg.data.batch_size
    return math.ceil(n / batch), f"data.n_samples={n} in batches of data.batch_size={batch}"


def _check_accumulation(cfg: DictConfig) -> None:
    # Lightning divides each micro-batch's loss by k and ends a window with its epoch: with fewer than k
    # batches in an epoch, every update is (batches / k) times the mean gradient, a learning rate cut short.
    counted = batches_per_epoch(cfg)
    if counted is None:
        return
    batches, how = counted
    k = cfg.trainer.accumulate_grad_batches
    _require(
        k <= batches,
        "trainer.accumulate_grad_batches",
        k,
        f"an epoch here is {batches} batch{'es' if batches > 1 else ''} ({how}); an update ends with its epoch "
        f"and Lightning divides each batch's loss by {k} all the same, so every update would apply {batches}/{k} "
        f"of the epoch's mean gradient; use {'1' if batches == 1 else f'an integer from 1 to {batches}'}",
    )


def check_devices(accelerator: str, devices: Any) -> None:
    """Refuse more devices than this machine has: GPUs, or CPU cores for CPU processes (imports torch)."""
    import torch

    if not isinstance(devices, int):
        return  # "auto": Lightning takes what there is
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        have, what = torch.cuda.device_count(), "CUDA GPUs"
    elif accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        have, what = 1, "MPS device"
    else:
        have, what = cores(), "CPU cores"
    if devices > have:
        raise ConfigError(
            f"trainer.devices={devices} is more than this machine has ({have} {what} for "
            f"trainer.accelerator={accelerator!r}): use trainer.devices={have} or fewer."
        )
