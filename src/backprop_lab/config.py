"""Structured configs (the schema behind ``configs/``) and the checks OmegaConf's types cannot express.

This module imports neither torch nor Lightning: the CLI composes and validates a config here first,
so a bad override, ``--help`` and ``--cfg job`` answer in about a second.

Types are checked by OmegaConf when Hydra merges an override (``optim.lr=abc`` fails naming the key);
ranges and choices are checked by :func:`validate`, which raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

# The choices of the keys that take one of a list (each list lives here only).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # trainer.accelerator
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


def _require(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not accepted: {accepted}.")


def validate(cfg: DictConfig) -> None:
    """Refuse values the schema's types admit but training cannot use. Raises ConfigError."""
    lr = cfg.optim.lr
    _require(lr > 0, "optim.lr", lr, "use a positive learning rate, e.g. optim.lr=0.1")
    _require(cfg.optim.momentum >= 0, "optim.momentum", cfg.optim.momentum, "use a number >= 0")
    _require(cfg.optim.weight_decay >= 0, "optim.weight_decay", cfg.optim.weight_decay, "use a number >= 0")

    t = cfg.trainer
    _require(t.max_steps >= 1, "trainer.max_steps", t.max_steps, "use an integer >= 1")
    _require(t.log_every_n_steps >= 1, "trainer.log_every_n_steps", t.log_every_n_steps, "use an integer >= 1")
    _require(
        t.accelerator in ACCELERATORS, "trainer.accelerator", t.accelerator, f"use one of {', '.join(ACCELERATORS)}"
    )
    devices = t.devices
    _require(
        devices == "auto" or (isinstance(devices, int) and devices >= 1),
        "trainer.devices",
        devices,
        "use a positive integer or auto",
    )
    for key in ("histogram_every_n_steps", "probe_every_n_steps", "picture_every_n_steps"):
        every = cfg.monitor[key]
        _require(every >= 1, f"monitor.{key}", every, "use an integer >= 1")
    _require(
        t.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches", t.accumulate_grad_batches, "use an integer >= 1"
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
    _require(cfg.tol >= 0, "tol", cfg.tol, "use a number >= 0 (0 turns early stopping off)")
    fmt = cfg.replay.format
    _require(fmt in REPLAY_FORMATS, "replay.format", fmt, f"use one of {', '.join(REPLAY_FORMATS)}")

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
    check_batch_split(cfg)


def _validate_mlp(model: DictConfig) -> None:
    hidden = list(model.hidden)
    _require(
        len(hidden) > 0 and all(w >= 1 for w in hidden),
        "model.hidden",
        hidden,
        "use a non-empty list of positive layer widths, e.g. model.hidden=[16,16]",
    )
    _require(model.activation in ACTIVATIONS, "model.activation", model.activation, f"use one of {', '.join(ACTIVATIONS)}")
    _require(model.init in INITS, "model.init", model.init, f"use one of {', '.join(INITS)}")
    a = model.negative_slope
    _require(0 <= a < 1, "model.negative_slope", a, "use a number with 0 <= a < 1 (0 is plain ReLU)")


def _validate_generated_data(data: DictConfig) -> None:
    _require(data.n_samples >= 1, "data.n_samples", data.n_samples, "use an integer >= 1")
    _require(data.n_probe >= 1, "data.n_probe", data.n_probe, "use an integer >= 1")
    _require(data.noise >= 0, "data.noise", data.noise, "use a standard deviation >= 0")
    _require(
        1 <= data.batch_size <= data.n_samples,
        "data.batch_size",
        data.batch_size,
        f"use an integer from 1 to data.n_samples={data.n_samples} (a batch cannot be larger than the data set)",
    )


def _validate_monitor(monitor: DictConfig) -> None:
    unknown = [p for p in monitor.pictures if p not in PICTURES]
    _require(
        not unknown,
        "monitor.pictures",
        list(monitor.pictures),
        f"use a list of {', '.join(PICTURES)} (or [] for none); unknown: {', '.join(map(str, unknown))}",
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
    if "batch_size" in cfg.data and isinstance(devices, int) and devices > 1 and cfg.data.batch_size % devices:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is not accepted with trainer.devices={devices}: the global "
            f"batch is split evenly over the processes, so use a multiple of {devices}."
        )


def check_devices(accelerator: str, devices: Any) -> None:
    """Refuse more devices than this machine has: GPUs, or CPU cores for CPU processes (imports torch)."""
    import os

    import torch

    if not isinstance(devices, int):
        return  # "auto": Lightning takes what there is
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        have, what = torch.cuda.device_count(), "CUDA GPUs"
    elif accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        have, what = 1, "MPS device"
    else:
        have, what = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(), "CPU cores"
    if devices > have:
        raise ConfigError(
            f"trainer.devices={devices} is more than this machine has ({have} {what} for "
            f"trainer.accelerator={accelerator!r}): use trainer.devices={have} or fewer."
        )
