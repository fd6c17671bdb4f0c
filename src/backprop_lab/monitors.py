"""Monitors: Lightning callbacks that log gradients and dead-ReLU statistics of any LightningModule.

Both read what training already computed: parameters and gradients in ``on_before_optimizer_step``
(after backward, before the update, so step k shows the gradients that update k applies), and the
activations of the training forward pass through forward hooks. Neither runs an extra forward pass.
Values are gathered on the device and copied to the host once per log step (one sync).
"""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from backprop_lab import models
from backprop_lab.tblog import log_histogram, log_scalars


def _root(pl_module: LightningModule, root: str | None) -> nn.Module:
    return pl_module.get_submodule(root) if root else pl_module


def _is_log_step(trainer: Trainer, every: int | None) -> bool:
    every = every or trainer.log_every_n_steps
    return trainer.global_step % every == 0


class GradientMonitor(Callback):
    """Logs, for every parameter ``<name>`` (named relative to the submodule ``root``):

    - ``params/<name>`` and ``grads/<name>``: scalars for one-element parameters, histograms
      (every ``histogram_every_n_steps``) for larger ones;
    - ``grad_norm/<name>``: the gradient's L2 norm.

    Scalars are logged every ``log_every_n_steps`` (default: the Trainer's). After training,
    ``params/*`` is logged once more at the final step (the parameters the run ends with).
    """

    def __init__(self, root: str | None = None, log_every_n_steps: int | None = None, histogram_every_n_steps: int = 50):
        self.root = root
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps

    def _named(self, pl_module: LightningModule) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in _root(pl_module, self.root).named_parameters() if p.requires_grad]

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not _is_log_step(trainer, self.log_every_n_steps):
            return
        step = trainer.global_step
        named = [(n, p) for n, p in self._named(pl_module) if p.grad is not None]
        if not named:
            return
        names = [n for n, _ in named]
        grads = [p.grad.detach() for _, p in named]
        tags: list[str] = [f"grad_norm/{n}" for n in names]
        values: list[Tensor] = list(torch._foreach_norm(grads))
        for n, p, g in zip(names, (p for _, p in named), grads):
            if p.numel() == 1:
                tags += [f"params/{n}", f"grads/{n}"]
                values += [p.detach().reshape(()), g.reshape(())]
        host = torch.stack([v.to(torch.float64) for v in values]).tolist()  # the one sync
        log_scalars(trainer, dict(zip(tags, host)), step)
        if step % self.histogram_every_n_steps == 0:
            for n, p, g in zip(names, (p for _, p in named), grads):
                if p.numel() > 1:
                    log_histogram(trainer, f"params/{n}", p.detach(), step)
                    log_histogram(trainer, f"grads/{n}", g, step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        one = [(n, p) for n, p in self._named(pl_module) if p.numel() == 1]
        if one and all(p.isfinite().all() for _, p in one):
            host = torch.stack([p.detach().reshape(()).to(torch.float64) for _, p in one]).tolist()
            log_scalars(trainer, {f"params/{n}": v for (n, _), v in zip(one, host)}, trainer.global_step)


RELU_TYPES: tuple[type[nn.Module], ...] = (models.ReLU, nn.ReLU)


class DeadReLUMonitor(Callback):
    """Logs, for every ReLU layer ``<layer>`` (a module of ``layer_types``, named relative to ``root``):

    - ``relu/dead_fraction/<layer>``: the fraction of units inactive (output ≤ 0) on every sample of
      the batch; a unit is an index along dim 1 (a feature, or a channel), all other dims are samples;
    - ``relu/zero_fraction/<layer>``: the fraction of the layer's activations exactly 0.

    It also records, per layer, the step from which every unit has stayed inactive
    (:attr:`dead_since`; ``None`` while any unit is alive), so a run can say when a layer died.
    """

    def __init__(self, root: str | None = None, layer_types: tuple[type[nn.Module], ...] = RELU_TYPES, log_every_n_steps: int | None = None):
        self.root = root
        self.layer_types = layer_types
        self.log_every_n_steps = log_every_n_steps
        self._outputs: dict[str, Tensor] = {}
        self._handles: list = []
        self.dead_since: dict[str, int | None] = {}
        self.last_dead_fraction: dict[str, float] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for name, module in _root(pl_module, self.root).named_modules():
            if isinstance(module, self.layer_types):
                self._handles.append(module.register_forward_hook(self._hook(name)))
                self.dead_since[name] = None

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._outputs.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                self._outputs[name] = output.detach()  # autograd keeps it alive anyway

        return hook

    @staticmethod
    def statistics(h: Tensor) -> tuple[Tensor, Tensor]:
        """(dead fraction, zero fraction) of one layer's activations ``h``."""
        units = h.movedim(1, 0).reshape(h.shape[1], -1) if h.dim() > 1 else h.reshape(-1, 1)
        alive = (units > 0).any(dim=1)
        dead = 1.0 - alive.to(torch.float32).mean()
        zero = (h == 0).to(torch.float32).mean()
        return dead, zero

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not self._outputs or not _is_log_step(trainer, self.log_every_n_steps):
            return
        step = trainer.global_step
        names = list(self._outputs)
        stats = [self.statistics(self._outputs[n]) for n in names]
        host = torch.stack([torch.stack(s) for s in stats]).tolist()  # the one sync
        scalars = {}
        for name, (dead, zero) in zip(names, host):
            scalars[f"relu/dead_fraction/{name}"] = dead
            scalars[f"relu/zero_fraction/{name}"] = zero
            self.last_dead_fraction[name] = dead
            if dead < 1.0:
                self.dead_since[name] = None
            elif self.dead_since[name] is None:
                self.dead_since[name] = step
        log_scalars(trainer, scalars, step)
