"""Structured configs (the schema behind ``configs/``) and the checks OmegaConf's types cannot express.

This module imports neither torch nor Lightning: the CLI composes and validates a config here first,
so a bad override, ``--help`` and ``--cfg job`` answer in about a second.

Types are checked by OmegaConf when Hydra merges an override (``optim.lr=abc`` fails naming the key);
ranges and choices are checked by :func:`validate`, which raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PICTURES = ("loss_surface", "fit", "unit_activity", "grad_norm_by_layer")  # monitor.pictures


class ConfigError(ValueError):
    """A config value that is well-typed but not accepted; the message names the key."""


# --- model group: the post's networks -------------------------------------------------------------


@dataclass
class LinearNetConfig:
    """Section 3: ŷ = w·x."""

    _target_: str = "backprop_lab.models.LinearNet"
    w: float = 3.0  # the post's initial weight


@dataclass
class SigmoidNetConfig:
    """Section 4: h = σ(w1·x), ŷ = w2·h."""

    _target_: str = "backprop_lab.models.SigmoidNet"
    w1: float = 0.5
    w2: float = -1.0


@dataclass
class ReLUNetConfig:
    """Section 5: h = ReLU(w1·x), ŷ = w2·h."""

    _target_: str = "backprop_lab.models.ReLUNet"
    w1: float = 0.5
    w2: float = -1.0
    relu_grad_at_zero: int = 0  # ReLU′(0): 0 (PyTorch's choice) or 1


ACTIVATIONS = ("sigmoid", "relu", "leaky_relu")
INITS = ("default", "he", "negative_bias")


@dataclass
class MLPConfig:
    """x → fc1 → act1 → … → out; in_features and out_features come from the data set."""

    _target_: str = "backprop_lab.models.MLP"
    hidden: list[int] = field(default_factory=lambda: [16, 16])  # widths of the hidden layers
    activation: str = "relu"  # sigmoid | relu | leaky_relu
    negative_slope: float = 0.01  # leaky_relu: the slope a for z ≤ 0, 0 ≤ a < 1
    init: str = "default"  # default (as torch.nn.Linear) | he | negative_bias
    bias_init: float = -1.0  # init=negative_bias: the value of every hidden bias
    relu_grad_at_zero: int = 0  # ReLU′(0): 0 (PyTorch's choice) or 1


# --- data, optim, trainer ----------------------------------------------------------------------------


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
    n_samples: int = 256  # training pairs
    n_probe: int = 128  # held-out probe points
    noise: float = 0.1  # standard deviation of the Gaussian noise on y
    batch_size: int = 32


@dataclass
class MoonsDataConfig:
    """2-D binary classification: two interleaving half circles, labels 0 and 1."""

    _target_: str = "backprop_lab.data.MoonsDataModule"
    n_samples: int = 256
    n_probe: int = 256
    noise: float = 0.1  # standard deviation of the Gaussian noise on each coordinate
    batch_size: int = 32


@dataclass
class SGDConfig:
    """Plain gradient descent: w ← w − η·∂L/∂w (torch.optim.SGD, built with the model's parameters)."""

    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.1  # η
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` that a user may want to change."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 200
    # Lightning's default of 50 would hide everything a 10-step run does.
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True
    enable_model_summary: bool = False
    enable_checkpointing: bool = False
    deterministic: bool = False


@dataclass
class MonitorConfig:
    """What the TensorBoard monitors log, and how often (scalars follow trainer.log_every_n_steps)."""

    gradients: bool = True  # params/*, grads/*, grad_norm/*, update_ratio/*
    dead_relu: bool = True  # relu/dead_fraction/*, relu/zero_fraction/*, relu/probe_dead_fraction/*, ...
    # histograms of params/grads of more than one element, and the dead-ReLU probe-set pass
    histogram_every_n_steps: int = 50
    picture_every_n_steps: int = 5000  # pictures/* (Images tab); also drawn once at the end of a run
    pictures: list[str] = field(default_factory=lambda: list(PICTURES))  # which pictures; [] = none


REPLAY_FORMATS = ("table", "markdown", "json")


@dataclass
class ReplayConfig:
    """The post's step replayed from the real backward (scripts/replay.py, and the ``replay`` text in training)."""

    format: str = "table"  # scripts/replay.py output: table (rich), markdown or json
    to_tensorboard: bool = True  # training writes the replay of step 0 as text; the post's networks only


@dataclass
class TrainConfig:
    model: Any = MISSING
    data: Any = MISSING
    optim: SGDConfig = field(default_factory=SGDConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    seed: int = 0
    # A run whose loss falls below tol stops early with status "converged"; 0 turns that off.
    tol: float = 1.0e-8
    # Progress-bar updates every this many steps; 0 = at most twice a second (and at the end).
    progress_every_n_steps: int = 0


def _share_config_store() -> None:
    """Let deep copies of Hydra's ConfigStore (a process-wide singleton) share it instead of cloning it.

    Hydra 1.3 deep-copies its config repository, and with it the whole ConfigStore, on every compose
    and ~100 times for ``--help`` (once per config group listed): ~1 s of a 1.5 s ``--help`` here,
    and more with every schema stored. Nothing writes to the store through a copy, and
    ``ConfigStore.load`` already hands out a deep copy of each node, so sharing it changes no result.
    """
    ConfigStore.__deepcopy__ = lambda self, memo: self


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore: ``train_schema`` and ``schema/<group>/<name>``."""
    _share_config_store()
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema/model", name="linear", node=LinearNetConfig)
    cs.store(group="schema/model", name="sigmoid", node=SigmoidNetConfig)
    cs.store(group="schema/model", name="relu", node=ReLUNetConfig)
    cs.store(group="schema/data", name="example", node=ExampleDataConfig)
    cs.store(group="schema/model", name="mlp", node=MLPConfig)
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
    _require(
        cfg.monitor.histogram_every_n_steps >= 1,
        "monitor.histogram_every_n_steps",
        cfg.monitor.histogram_every_n_steps,
        "use an integer >= 1",
    )
    _validate_monitor(cfg.monitor)
    _require(
        cfg.progress_every_n_steps >= 0,
        "progress_every_n_steps",
        cfg.progress_every_n_steps,
        "use an integer >= 0 (0: about 20 updates per run)",
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
    every = monitor.picture_every_n_steps
    _require(every >= 1, "monitor.picture_every_n_steps", every, "use an integer >= 1")
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
