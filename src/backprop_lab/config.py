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


# --- data, optim, trainer ----------------------------------------------------------------------------


@dataclass
class ExampleDataConfig:
    """One training example (x, y), presented as a batch of one at every step."""

    _target_: str = "backprop_lab.data.ExampleDataModule"
    x: float = MISSING
    y: float = MISSING


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

    gradients: bool = True  # params/*, grads/*, grad_norm/*
    dead_relu: bool = True  # relu/dead_fraction/*, relu/zero_fraction/*
    histogram_every_n_steps: int = 50  # params/grads of more than one element, as histograms


@dataclass
class TrainConfig:
    model: Any = MISSING
    data: Any = MISSING
    optim: SGDConfig = field(default_factory=SGDConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    seed: int = 0
    # A run whose loss falls below tol stops early with status "converged"; 0 turns that off.
    tol: float = 1.0e-8
    # Progress-bar updates every this many steps; 0 = about 20 updates per run.
    progress_every_n_steps: int = 0


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore: ``train_schema`` and ``schema/<group>/<name>``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="schema/model", name="linear", node=LinearNetConfig)
    cs.store(group="schema/model", name="sigmoid", node=SigmoidNetConfig)
    cs.store(group="schema/model", name="relu", node=ReLUNetConfig)
    cs.store(group="schema/data", name="example", node=ExampleDataConfig)


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
    _require(
        cfg.progress_every_n_steps >= 0,
        "progress_every_n_steps",
        cfg.progress_every_n_steps,
        "use an integer >= 0 (0: about 20 updates per run)",
    )
    _require(cfg.tol >= 0, "tol", cfg.tol, "use a number >= 0 (0 turns early stopping off)")

    if "relu_grad_at_zero" in cfg.model:
        g = cfg.model.relu_grad_at_zero
        _require(g in (0, 1), "model.relu_grad_at_zero", g, "use 0 or 1 (the value of ReLU′ at exactly z = 0)")


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
