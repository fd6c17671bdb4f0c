"""DeadReLUMonitor: which ReLU units pass no gradient, on the training batch and on a fixed probe set."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from backprop_lab import models
from backprop_lab.monitors.common import callable_root, is_log_step, log_metrics, probe_set, watched_module

# Leaky ReLU layers are watched too: with a slope a > 0 no unit is ever dead (see statistics).
RELU_TYPES: tuple[type[nn.Module], ...] = (models.ReLU, nn.ReLU, models.LeakyReLU, nn.LeakyReLU)
# A network with none of these modules most likely calls its activations as functions (F.relu),
# which no forward hook can see: the monitor then says so.
ACTIVATION_TYPES = (*RELU_TYPES, models.Sigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus)


def _calls_activations_as_functions(net: nn.Module) -> bool:
    """Whether ``net`` looks like layers whose activations are functions: two or more layers with
    parameters and no activation module between them (the post's linear net has no layer at all)."""
    layers = [m for m in net.modules() if m is not net and any(True for _ in m.parameters(recurse=False))]
    return len(layers) >= 2 and not any(isinstance(m, ACTIVATION_TYPES) for m in net.modules())


def units(h: Tensor) -> Tensor:
    """``h`` as (units, samples): a unit is an index along dim 1, every other dim is a sample."""
    return h.movedim(1, 0).reshape(h.shape[1], -1) if h.dim() > 1 else h.reshape(-1, 1)


def unit_alive(h: Tensor) -> Tensor:
    """Per unit, whether it is active (h > 0) on at least one sample: one max-reduction, no copy."""
    if h.dim() <= 1:
        return h.reshape(-1) > 0
    return h.amax(dim=[d for d in range(h.dim()) if d != 1]) > 0


def statistics(h: Tensor, negative_slope: float = 0.0) -> tuple[float, float]:
    """(dead fraction, zero fraction) of one layer's activations ``h``.

    Dead means "passes no gradient back": output ≤ 0 on every sample with slope 0 (ReLU). A leaky unit
    (``negative_slope`` > 0) passes a·g for z ≤ 0, so it is never dead: its dead fraction is 0.
    """
    dead = 0.0 if negative_slope > 0 else 1.0 - unit_alive(h).float().mean().item()
    return dead, 1.0 - torch.count_nonzero(h).item() / h.numel()


class _StepCounts:
    """One layer's counts over the forward passes of one optimizer step (every micro-batch)."""

    def __init__(self, alive: Tensor, nonzero: Tensor, entries: int):
        self.alive, self.nonzero, self.entries = alive, nonzero, entries

    def add(self, alive: Tensor, nonzero: Tensor, entries: int) -> None:
        self.alive = self.alive | alive
        self.nonzero = self.nonzero + nonzero
        self.entries += entries


class DeadReLUMonitor(Callback):
    """Dead-ReLU statistics of every ReLU layer ``<layer>`` (a module of ``layer_types``, named relative
    to ``root``). A unit is an index along dim 1 of the layer's output h (a feature, or a channel);
    every other dim is a sample. A unit is *active* on a sample where h > 0, and *dead* on a set of
    samples where it is active on none of them (so ReLU′ = 0 there and no gradient passes). Leaky ReLU
    units (``negative_slope`` > 0) always pass a·g, so they never count as dead.

    Every ``log_every_n_steps`` (default: the trainer's), from the step's training forward passes (all
    micro-batches of an accumulated step):

    - ``relu/dead_fraction/<layer>``: the fraction of units dead on the step's batch;
    - ``relu/zero_fraction/<layer>``: the fraction of the layer's activations exactly 0.

    Every ``probe_every_n_steps`` and at the end, when ``trainer.datamodule`` has ``probe_x`` (a fixed
    held-out set):

    - ``relu/probe_dead_fraction/<layer>``: the fraction of units dead on the whole probe set, from one
      no-grad, eval-mode pass of ``probe_x`` through ``root`` (the hooks keep it apart from training).

    At the end of training (or when it stops on an exception), for every logged step s:

    - ``relu/dead_forever_fraction/<layer>``: the fraction of units dead on every training batch from
      step s to the last step (dead since s or earlier and never revived).

    :attr:`dead_since` holds, per layer, the step from which every unit has stayed dead on the batch
    (None while any unit is alive); :attr:`activity` each unit's active fraction at every probe step
    (of the probe set, or of the batch where there is none) for the unit-activity picture.
    Layers are found by forward hooks on modules: a ReLU called as a function (``torch.relu``) is not
    seen, and the monitor warns once when a network of several layers has no activation module.
    """

    def __init__(
        self,
        root: str | None = None,
        layer_types: tuple[type[nn.Module], ...] = RELU_TYPES,
        log_every_n_steps: int | None = None,
        probe_every_n_steps: int = 50,
    ):
        self.root = root
        self.layer_types = layer_types
        self.log_every_n_steps = log_every_n_steps
        self.probe_every_n_steps = probe_every_n_steps
        self._step: int | None = None  # the training step whose forward passes the hooks see
        self._counts: dict[str, _StepCounts] = {}
        self._batch_outputs: dict[str, Tensor] = {}  # activations kept at a probe step without a probe set
        self._probe_outputs: dict[str, Tensor] | None = None  # a dict only during the probe pass
        self._slopes: dict[str, float] = {}
        self._last_active: dict[str, Tensor] = {}  # per unit: the last training step it was alive (−1: never)
        self._handles: list = []
        self._logged_steps: list[int] = []
        self._finished = False
        self.dead_since: dict[str, int | None] = {}
        self.last_dead_fraction: dict[str, float] = {}
        self.activity_steps: list[int] = []
        self.activity: dict[str, list[np.ndarray]] = {}

    @property
    def negative_slopes(self) -> dict[str, float]:
        """Per watched layer, its slope for z ≤ 0 (0 for ReLU; a leaky layer's units are never dead)."""
        return dict(self._slopes)

    def state_dict(self) -> dict:
        """What the statistics of later steps and the end of the run depend on, for a resumed run."""
        return {
            "last_active": {n: t.cpu() for n, t in self._last_active.items()},
            "logged_steps": list(self._logged_steps),
            "dead_since": dict(self.dead_since),
            "last_dead_fraction": dict(self.last_dead_fraction),
            "activity_steps": list(self.activity_steps),
            "activity": {n: [a.tolist() for a in column] for n, column in self.activity.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._last_active = dict(state_dict["last_active"])
        self._logged_steps = list(state_dict["logged_steps"])
        self.dead_since = dict(state_dict["dead_since"])
        self.last_dead_fraction = dict(state_dict["last_dead_fraction"])
        self.activity_steps = list(state_dict["activity_steps"])
        self.activity = {
            n: [np.asarray(a, dtype=np.float32) for a in column] for n, column in state_dict["activity"].items()
        }
        self._finished = False  # the end of the resumed run writes dead_forever_fraction/* again, over the whole run

    # --- hooks on the watched layers ------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for name, module in watched_module(pl_module, self.root).named_modules():
            if isinstance(module, self.layer_types):
                self._handles.append(module.register_forward_hook(self._hook(name)))
                self.dead_since.setdefault(name, None)
                self._slopes[name] = float(getattr(module, "negative_slope", 0.0))
        if not self._slopes and _calls_activations_as_functions(watched_module(pl_module, self.root)):
            where = f"'{self.root}'" if self.root else type(pl_module).__name__
            rank_zero_warn(
                f"DeadReLUMonitor found no ReLU layer in {where} (it watches modules of "
                f"{', '.join(t.__name__ for t in self.layer_types)}); a ReLU called as a function "
                "(torch.relu, F.relu) cannot be seen: use nn.ReLU modules to get relu/* statistics."
            )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._counts.clear()
        self._batch_outputs.clear()
        self._step = None

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            if self._probe_outputs is not None:
                self._probe_outputs[name] = output.detach()
            elif self._step is not None and module.training and torch.is_grad_enabled():
                self._record(name, output.detach())

        return hook

    def _record(self, name: str, h: Tensor) -> None:
        """One layer's counts of a training forward pass, taken in the hook (no sync, nothing kept)."""
        alive = unit_alive(h) | (self._slopes[name] > 0)
        counts = self._counts.get(name)
        if counts is None:
            self._counts[name] = _StepCounts(alive, torch.count_nonzero(h), h.numel())
        else:
            counts.add(alive, torch.count_nonzero(h), h.numel())
        if self._step % self.probe_every_n_steps == 0:
            self._batch_outputs[name] = h

    # --- per step ---------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._step != trainer.global_step:  # the first micro-batch of a new step
            self._step = trainer.global_step
            self._counts.clear()
            self._batch_outputs.clear()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        step = self._step
        if step is None or not self._counts:  # no watched layer ran in this step's forward passes
            return
        self._remember_alive(step)
        changed = self._log_batch(trainer, step) if is_log_step(trainer, self.log_every_n_steps) else False
        # Also at the step a layer dies or revives: the unit-activity picture shows the event where it happens.
        if step % self.probe_every_n_steps == 0 or changed:
            self._log_probe(trainer, pl_module, step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if trainer.global_step != self._step:  # the update is taken: the next forward pass is another step
            self._step = None
            self._batch_outputs.clear()

    def _remember_alive(self, step: int) -> None:
        for name, counts in self._counts.items():
            last = self._last_active.get(name)
            if last is None:
                last = torch.full_like(counts.alive, -1, dtype=torch.int64)
            elif last.device != counts.alive.device:  # loaded from a checkpoint onto the CPU
                last = last.to(counts.alive.device)
            self._last_active[name] = last.masked_fill_(counts.alive, step)

    def _log_batch(self, trainer: Trainer, step: int) -> bool:
        """Log the step's batch statistics; whether a layer died or revived at this step."""
        names = list(self._counts)
        counts = [self._counts[n] for n in names]
        alive = torch.stack([c.alive.sum() for c in counts] + [c.nonzero for c in counts]).tolist()  # one sync
        metrics, changed = {}, False
        for i, (name, c) in enumerate(zip(names, counts)):
            dead = 1.0 - alive[i] / c.alive.numel()
            metrics[f"relu/dead_fraction/{name}"] = dead
            metrics[f"relu/zero_fraction/{name}"] = 1.0 - alive[len(names) + i] / c.entries
            self.last_dead_fraction[name] = dead
            before = self.dead_since[name]
            if dead < 1.0:
                self.dead_since[name] = None
            elif self.dead_since[name] is None:
                self.dead_since[name] = step
            changed |= (before is None) != (self.dead_since[name] is None)
        log_metrics(trainer, metrics, step)
        self._logged_steps.append(step)
        return changed

    # --- the probe set ----------------------------------------------------------------------------------

    def _log_probe(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        """Units' active fractions on the probe set (or on the batch, where there is none)."""
        probe = probe_set(trainer)
        outputs = self._batch_outputs
        if probe is not None:
            outputs = self._probe_pass(pl_module, probe[0].to(pl_module.device)) or {}
        names = [n for n in self._slopes if n in outputs]
        if not names:
            return
        active = [(units(outputs[n]) > 0).float().mean(dim=1) for n in names]
        host = torch.cat(active).cpu().numpy()  # one sync
        self.activity_steps.append(step)
        metrics, start = {}, 0
        for n, a in zip(names, active):
            fraction = host[start : start + len(a)]
            start += len(a)
            self.activity.setdefault(n, []).append(fraction)
            if probe is not None:
                metrics[f"relu/probe_dead_fraction/{n}"] = 0.0 if self._slopes[n] > 0 else float(np.mean(fraction == 0))
        log_metrics(trainer, metrics, step)

    def _probe_pass(self, pl_module: LightningModule, x: Tensor) -> dict[str, Tensor] | None:
        net = callable_root(pl_module, self.root, list(self._slopes))
        if net is None:
            return None  # nothing to call the probe set with (no forward, no single network child)
        was_training = net.training
        self._probe_outputs = {}
        try:
            net.eval()
            with torch.no_grad():
                net(x.to(dtype=next(pl_module.parameters()).dtype))
            return self._probe_outputs
        finally:
            self._probe_outputs = None
            net.train(was_training)

    # --- the end of the run -----------------------------------------------------------------------------

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        recorded = self.activity_steps and self.activity_steps[-1] == trainer.global_step
        if probe_set(trainer) is not None and self._slopes and not recorded:
            self._log_probe(trainer, pl_module, trainer.global_step)  # the parameters the run ends with
        self._log_dead_forever(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            self._log_dead_forever(trainer)
        except Exception as error:  # noqa: BLE001 — a failing run's logger (a full disk) may fail again
            rank_zero_warn(
                f"DeadReLUMonitor could not write relu/dead_forever_fraction/* while the run failed: {error}"
            )

    def dead_forever_fractions(self) -> dict[str, np.ndarray]:
        """Per layer, at each logged step s: the fraction of units alive on no training batch from s on."""
        steps = torch.tensor(self._logged_steps, dtype=torch.int64)
        out = {}
        for name, slope in self._slopes.items():
            last = self._last_active.get(name)
            if slope > 0:
                out[name] = np.zeros(len(steps))
            elif last is not None:
                # A unit is dead from s on iff its last active step is before s (−1: never active).
                dead = torch.searchsorted(last.cpu().sort().values, steps, right=False)
                out[name] = (dead.to(torch.float64) / last.numel()).numpy()
        return out

    def _log_dead_forever(self, trainer: Trainer) -> None:
        if self._finished or not self._logged_steps:
            return
        self._finished = True
        fractions = self.dead_forever_fractions()
        for i, step in enumerate(self._logged_steps):
            log_metrics(trainer, {f"relu/dead_forever_fraction/{n}": float(f[i]) for n, f in fractions.items()}, step)
