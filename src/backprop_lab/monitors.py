"""Monitors: Lightning callbacks that log gradients and dead-ReLU statistics of any LightningModule.

Both read what training already computed: parameters and gradients in ``on_before_optimizer_step``
(after backward, before the update, so step k shows the gradients that update k applies), and the
activations of the training forward pass through forward hooks. Neither runs an extra forward pass
per step; the dead-ReLU monitor passes a fixed probe set through the network only every
``probe_every_n_steps``. Values are gathered on the device and copied to the host once per log step
(one sync). Both keep a small host-side history that :mod:`backprop_lab.pictures` draws.

To use them on your own LightningModule::

    trainer = L.Trainer(callbacks=[GradientMonitor(), DeadReLUMonitor()], logger=TensorBoardLogger(...))
    trainer.logger.experiment.add_custom_scalars(custom_scalars_layout())   # optional: grouped charts
"""

from __future__ import annotations

import math
from array import array

import numpy as np
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


def probe_set(trainer: Trainer) -> tuple[Tensor, Tensor] | None:
    """``(probe_x, probe_y)`` of the trainer's datamodule, or None where it has none."""
    data = getattr(trainer, "datamodule", None)
    x, y = getattr(data, "probe_x", None), getattr(data, "probe_y", None)
    return (x, y) if x is not None and y is not None else None


def custom_scalars_layout() -> dict:
    """TensorBoard's Custom Scalars layout: loss, gradient norms and dead fractions, one chart per group.

    Each chart draws every tag its regular expression matches as one line, so ``grad_norm/.*``
    puts the first layer's weight-gradient norm beside the last one's (switch the chart to a log scale to
    see a vanishing gradient). Write it once per run with ``SummaryWriter.add_custom_scalars``.
    """
    return {
        "loss": {"training loss": ["Multiline", [r"train/loss"]]},
        "gradients": {
            # weights only (w, w1, w2 of the post; <layer>.weight of an MLP): biases would crowd them
            "gradient norm of every weight (first layer to last)": ["Multiline", [r"grad_norm/(.*weight|w\d*)$"]],
            "update-to-weight ratio ‖η·g‖/‖w‖": ["Multiline", [r"update_ratio/(.*weight|w\d*)$"]],
        },
        "dead ReLU": {
            "dead fraction on the batch": ["Multiline", [r"relu/dead_fraction/.*"]],
            "dead fraction on the probe set": ["Multiline", [r"relu/probe_dead_fraction/.*"]],
            "dead from a step on, never revived": ["Multiline", [r"relu/dead_forever_fraction/.*"]],
            "zero fraction": ["Multiline", [r"relu/zero_fraction/.*"]],
        },
    }


class GradientMonitor(Callback):
    """Logs, for every parameter ``<name>`` (named relative to the submodule ``root``):

    - ``params/<name>`` and ``grads/<name>``: scalars for one-element parameters, histograms
      (every ``histogram_every_n_steps``) for larger ones;
    - ``grad_norm/<name>``: the gradient's L2 norm ‖g‖;
    - ``update_ratio/<name>``: ‖η·g‖/‖w‖, the relative size of the gradient step, with η the
      ``lr`` of the optimizer's param group that holds the parameter. For plain SGD (no momentum,
      no weight decay) this is exactly ‖Δw‖/‖w‖; it is not logged while ‖w‖ = 0.

    Scalars are logged every ``log_every_n_steps`` (default: the Trainer's). After training,
    ``params/*`` is logged once more at the final step (the parameters the run ends with).
    :attr:`grad_norm_history` keeps ``(steps, {name: norms})`` of the logged steps, host-side, for
    the per-layer picture (:class:`backprop_lab.pictures.PictureMonitor`).
    """

    def __init__(self, root: str | None = None, log_every_n_steps: int | None = None, histogram_every_n_steps: int = 50):
        self.root = root
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.history_steps = array("q")
        self.history: dict[str, array] = {}  # grad_norm/<name> at history_steps, 8 bytes a value

    @property
    def grad_norm_history(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.asarray(self.history_steps), {n: np.asarray(v) for n, v in self.history.items()}

    def _named(self, pl_module: LightningModule) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in _root(pl_module, self.root).named_parameters() if p.requires_grad]

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not _is_log_step(trainer, self.log_every_n_steps):
            return
        step = trainer.global_step
        named = [(n, p) for n, p in self._named(pl_module) if p.grad is not None]
        if not named:
            return
        one = [(n, p) for n, p in named if p.numel() == 1]
        many = [(n, p) for n, p in named if p.numel() > 1]
        # On the device: the one-element parameters and gradients themselves (their norms and ratios
        # follow on the host), and ‖g‖, ‖w‖ of the larger ones. Then one copy to the host (one sync).
        parts = []
        if one:
            parts += [p.detach().reshape(1) for _, p in one] + [p.grad.detach().reshape(1) for _, p in one]
        if many:
            parts += torch._foreach_norm([p.grad.detach() for _, p in many])
            parts += torch._foreach_norm([p.detach() for _, p in many])
        host = torch.cat([t.reshape(1) for t in parts]).tolist()  # cat promotes mixed dtypes

        k, m = len(one), len(many)
        w = {n: abs(host[i]) for i, (n, _) in enumerate(one)} | {n: host[2 * k + m + i] for i, (n, _) in enumerate(many)}
        g = {n: abs(host[k + i]) for i, (n, _) in enumerate(one)} | {n: host[2 * k + i] for i, (n, _) in enumerate(many)}
        lr_of = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
        out: dict[str, float] = {}
        for i, (n, _) in enumerate(one):
            out[f"params/{n}"], out[f"grads/{n}"] = host[i], host[k + i]
        for n, p in named:
            out[f"grad_norm/{n}"] = g[n]
            ratio = lr_of.get(id(p), math.nan) * g[n] / w[n] if w[n] > 0 else math.nan
            if math.isfinite(ratio):  # ‖w‖ = 0, or a parameter no optimizer updates: nothing to chart
                out[f"update_ratio/{n}"] = ratio
        log_scalars(trainer, out, step)
        self._remember(step, [n for n, _ in named], [g[n] for n, _ in named])
        if step % self.histogram_every_n_steps == 0:
            for n, p in many:
                log_histogram(trainer, f"params/{n}", p.detach(), step)
                log_histogram(trainer, f"grads/{n}", p.grad.detach(), step)

    def _remember(self, step: int, names: list[str], norms: list[float]) -> None:
        self.history_steps.append(step)
        for n, v in zip(names, norms):
            if n not in self.history:  # a parameter without a gradient at earlier log steps is NaN there
                self.history[n] = array("d", [math.nan] * (len(self.history_steps) - 1))
            self.history[n].append(v)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        one = [(n, p) for n, p in self._named(pl_module) if p.numel() == 1]
        if one and all(p.isfinite().all() for _, p in one):
            host = torch.stack([p.detach().reshape(()).to(torch.float64) for _, p in one]).tolist()
            log_scalars(trainer, {f"params/{n}": v for (n, _), v in zip(one, host)}, trainer.global_step)


# Leaky ReLU layers are watched too: with a slope a > 0 no unit is ever dead (see statistics).
RELU_TYPES: tuple[type[nn.Module], ...] = (models.ReLU, nn.ReLU, models.LeakyReLU, nn.LeakyReLU)


def _units(h: Tensor) -> Tensor:
    """``h`` as (units, samples): a unit is an index along dim 1, every other dim is a sample."""
    return h.movedim(1, 0).reshape(h.shape[1], -1) if h.dim() > 1 else h.reshape(-1, 1)


# Float kernels and no fresh full-size temporaries, every step: on this CPU build boolean kernels
# ((h > 0).any(), h == 0) and new 1 MiB tensors (page faults) cost 0.5–4 ms on a 1024×256 activation,
# against ~20 µs for a float reduction or an in-place op (scripts/bench.py); _units copies. Same values:
# a unit is alive iff its largest output is > 0, and sgn(|h|) is 0 exactly where h == 0.
def _unit_alive(h: Tensor) -> Tensor:
    """Per unit: ``(_units(h) > 0).any(dim=1)``, from one max-reduction and no copy."""
    return (h.amax(dim=[d for d in range(h.dim()) if d != 1]) if h.dim() > 1 else h) > 0


def _zero_fraction(h: Tensor, scratch: Tensor | None = None) -> Tensor:
    """The fraction of ``h`` exactly 0, as ``(h == 0).float().mean()``; ``scratch``: a flat tensor of
    ``h``'s dtype and device, at least as long, reused instead of allocating a temporary."""
    s = torch.abs(h, out=scratch[: h.numel()].view_as(h)) if scratch is not None else h.abs()
    return 1.0 - torch.sgn(s, out=s).mean(dtype=torch.float32)


def _scratch_for(scratch: Tensor | None, h: Tensor) -> Tensor:
    """``scratch`` if it fits ``h``, else a new flat buffer that does (kept by the caller for next time)."""
    if scratch is None or scratch.numel() < h.numel() or scratch.dtype != h.dtype or scratch.device != h.device:
        return torch.empty(h.numel(), dtype=h.dtype, device=h.device)
    return scratch


class DeadReLUMonitor(Callback):
    """Dead-ReLU statistics of every ReLU layer ``<layer>`` (a module of ``layer_types``, named relative
    to ``root``). A unit is an index along dim 1 of the layer's output h (a feature, or a channel);
    every other dim is a sample. A unit is *active* on a sample where h > 0, and *dead* on a set of
    samples where it is active on none of them (so ReLU′ = 0 there and no gradient passes). Leaky
    ReLU units (``negative_slope`` > 0) always pass a·g, so they never count as dead.

    Every ``log_every_n_steps`` (default: the Trainer's), from the training batch's forward pass:

    - ``relu/dead_fraction/<layer>``: the fraction of units dead on the batch;
    - ``relu/zero_fraction/<layer>``: the fraction of the layer's activations exactly 0.

    Every ``probe_every_n_steps``, when ``trainer.datamodule`` has ``probe_x`` (a fixed held-out set):

    - ``relu/probe_dead_fraction/<layer>``: the fraction of units dead on the whole probe set, from
      one no-grad, eval-mode pass of ``probe_x`` through the ``root`` module (the hooks keep this
      pass apart from the training statistics).

    At the end of training (or when it stops on an exception), for every step s that scalars were
    logged at:

    - ``relu/dead_forever_fraction/<layer>``: the fraction of units that are dead on every training
      batch from step s to the last training step — dead since step s or earlier and never revived.
      It rises with s, and at every s it is at most the batch dead fraction of step s. It needs the
      whole run, hence written at its end; every training step's batch counts, logged or not.

    It also records, per layer, the step from which every unit has stayed dead on the batch
    (:attr:`dead_since`; ``None`` while any unit is alive), so a run can say when a layer died, and,
    at every probe step, each unit's active fraction (of the probe set, or of the batch where there
    is no probe set) in :attr:`activity` for the unit-activity picture.
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
        self._outputs: dict[str, Tensor] = {}
        self._probe_outputs: dict[str, Tensor] | None = None  # a dict only during the probe pass
        self._slopes: dict[str, float] = {}
        self._last_active: dict[str, Tensor] = {}  # per unit: the last training step it was alive
        self._handles: list = []
        self._logged_steps: list[int] = []
        self._finished = False
        self.dead_since: dict[str, int | None] = {}
        self.last_dead_fraction: dict[str, float] = {}
        self.activity_steps: list[int] = []
        self.activity: dict[str, list[np.ndarray]] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for name, module in _root(pl_module, self.root).named_modules():
            if isinstance(module, self.layer_types):
                self._handles.append(module.register_forward_hook(self._hook(name)))
                self.dead_since[name] = None
                self._slopes[name] = float(getattr(module, "negative_slope", 0.0))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._outputs.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            if self._probe_outputs is not None:
                self._probe_outputs[name] = output.detach()
            elif module.training and torch.is_grad_enabled():
                self._outputs[name] = output.detach()  # autograd keeps it alive anyway

        return hook

    @property
    def negative_slopes(self) -> dict[str, float]:
        """Per watched layer, its slope for z ≤ 0 (0 for ReLU; a leaky layer's units are never dead)."""
        return dict(self._slopes)

    def _alive(self, name: str, h: Tensor) -> Tensor:
        """Per unit: active on at least one sample of ``h`` (always, for a leaky layer)."""
        alive = _unit_alive(h)
        return alive.fill_(True) if self._slopes.get(name, 0.0) > 0 else alive  # no tensor op for ReLU

    @staticmethod
    def statistics(h: Tensor, negative_slope: float = 0.0) -> tuple[Tensor, Tensor]:
        """(dead fraction, zero fraction) of one layer's activations ``h``.

        Dead means "passes no gradient back": output ≤ 0 on every sample with slope 0 (ReLU). A leaky
        unit (``negative_slope`` > 0) passes a·g for z ≤ 0, so it is never dead: its dead fraction is 0.
        """
        alive = _unit_alive(h) | (negative_slope > 0)
        dead = 1.0 - alive.to(torch.float32).mean()
        return dead, _zero_fraction(h)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not self._outputs:
            return
        step = trainer.global_step
        names = list(self._outputs)
        alive = {n: self._alive(n, self._outputs[n]) for n in names}
        for n in names:  # every step, on the device, no sync: who was alive when
            if n not in self._last_active:  # once per layer, not a fresh tensor every step
                self._last_active[n] = torch.full_like(alive[n], -1, dtype=torch.int64)
            self._last_active[n].masked_fill_(alive[n], step)
        if _is_log_step(trainer, self.log_every_n_steps):
            self._log_batch(trainer, step, names, alive)
        if step % self.probe_every_n_steps == 0:
            self._log_probe(trainer, pl_module, step)

    def _log_batch(self, trainer: Trainer, step: int, names: list[str], alive: dict[str, Tensor]) -> None:
        stats = []
        for n in names:
            self._scratch = _scratch_for(getattr(self, "_scratch", None), self._outputs[n])
            zero = _zero_fraction(self._outputs[n], self._scratch)
            stats.append(torch.stack([1.0 - alive[n].to(torch.float32).mean(), zero]))
        host = torch.stack(stats).tolist()  # the one sync
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
        self._logged_steps.append(step)

    def _log_probe(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        """Units' active fractions on the probe set (or on the batch, where there is none)."""
        probe = probe_set(trainer)
        outputs = self._outputs
        if probe is not None:
            outputs = self._probe_pass(_root(pl_module, self.root), probe[0].to(pl_module.device))
        names = [n for n in outputs if n in self._slopes]
        active = [(_units(outputs[n]) > 0).to(torch.float32).mean(dim=1) for n in names]
        if not active:
            return
        host = torch.cat(active).cpu().numpy()  # one sync
        self.activity_steps.append(step)
        scalars, start = {}, 0
        for n, a in zip(names, active):
            fraction = host[start : start + len(a)]
            start += len(a)
            self.activity.setdefault(n, []).append(fraction)
            if probe is not None:
                dead = 0.0 if self._slopes[n] > 0 else float(np.mean(fraction == 0))
                scalars[f"relu/probe_dead_fraction/{n}"] = dead
        log_scalars(trainer, scalars, step)

    def _probe_pass(self, net: nn.Module, x: Tensor) -> dict[str, Tensor]:
        was_training = net.training
        self._probe_outputs = {}
        try:
            net.eval()
            with torch.no_grad():
                net(x)
            return self._probe_outputs
        finally:
            self._probe_outputs = None
            net.train(was_training)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        recorded = self.activity_steps and self.activity_steps[-1] == trainer.global_step
        if probe_set(trainer) is not None and self._slopes and not recorded:
            self._log_probe(trainer, pl_module, trainer.global_step)  # the parameters the run ends with
        self._log_dead_forever(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._log_dead_forever(trainer)

    def dead_forever_fractions(self) -> dict[str, np.ndarray]:
        """Per layer, at each logged step s: the fraction of units alive on no training batch from s on."""
        steps = torch.tensor(self._logged_steps, dtype=torch.int64)
        out = {}
        for name, last in self._last_active.items():
            if self._slopes.get(name, 0.0) > 0:
                out[name] = np.zeros(len(steps))
                continue
            # A unit is dead from s on iff its last active step is before s (−1: never active).
            last_sorted = last.cpu().sort().values
            dead = torch.searchsorted(last_sorted, steps, right=False)
            out[name] = (dead.to(torch.float64) / len(last_sorted)).numpy()
        return out

    def _log_dead_forever(self, trainer: Trainer) -> None:
        if self._finished or not self._logged_steps:
            return
        self._finished = True
        fractions = self.dead_forever_fractions()
        # In ascending steps, after the run's last step: TensorBoard keeps them (it drops only a
        # tag's own later steps when a step goes back).
        for i, step in enumerate(self._logged_steps):
            log_scalars(trainer, {f"relu/dead_forever_fraction/{n}": float(f[i]) for n, f in fractions.items()}, step)
