"""Monitors: Lightning callbacks that log gradients and dead-ReLU statistics of any LightningModule.

Both read what training already computed: parameters and gradients in ``on_before_optimizer_step``
(after backward, before the update, so step k shows the gradients that update k applies), and the
activations of the training forward pass through forward hooks. Neither runs an extra forward pass
per step; the dead-ReLU monitor passes a fixed probe set through the network only every
``probe_every_n_steps``. On a device, values are gathered there and copied to the host once per log
step (one sync); small CPU tensors (:func:`on_host`) are read straight into Python, which is cheaper
than the torch ops that would reduce them first. Both keep a small host-side history that
:mod:`backprop_lab.pictures` draws.

To use them on your own LightningModule (grouped: Lightning dispatches a group as one callback)::

    monitors = CallbackGroup(GradientMonitor(), DeadReLUMonitor())   # backprop_lab.callback_group
    trainer = L.Trainer(callbacks=[monitors], logger=TensorBoardLogger(...))
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


def _one_element_values(tensors: list[Tensor], many: list[tuple[str, nn.Parameter]] = ()) -> list[float]:
    """The values of one-element ``tensors``, then ‖g‖ for the parameters ``many``, then their ‖w‖.

    On the CPU the one-element values are read one by one (nothing to sync); on a device, everything
    is gathered there and copied to the host once (one sync).
    """
    if not many and all(on_host(t) for t in tensors):
        return [t.item() for t in tensors]
    with torch.no_grad():
        parts = [_joined(tensors)] if tensors else []
        if many:
            norms = torch._foreach_norm([p.grad for _, p in many]) + torch._foreach_norm([p for _, p in many])
            parts.append(torch.stack(norms))
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).tolist()  # cat promotes dtypes


def _joined(tensors: list[Tensor]) -> Tensor:
    """One-element tensors as one 1-D tensor: one ``cat`` where their shapes agree (each op costs
    5–10 µs in a training step, more than the post's whole forward pass of a layer)."""
    shape = tensors[0].shape
    if len(shape) and all(t.shape == shape for t in tensors):
        return torch.cat(tensors).view(-1)
    return torch.stack([t.reshape(()) for t in tensors])


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
        self.values: dict[str, array] = {}  # params/<name> of one-element parameters at history_steps
        self._watched: list[tuple[str, nn.Parameter]] | None = None
        self._tags: dict[str, tuple[str, str, str, str]] = {}  # per parameter: its four tags

    @property
    def grad_norm_history(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.asarray(self.history_steps), {n: np.asarray(v) for n, v in self.history.items()}

    @property
    def value_history(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(steps, {name: values})`` of the one-element parameters at the logged steps (the path
        :class:`~backprop_lab.pictures.PictureMonitor` draws on the loss surface)."""
        return np.asarray(self.history_steps), {n: np.asarray(v) for n, v in self.values.items()}

    def _named(self, pl_module: LightningModule) -> list[tuple[str, nn.Parameter]]:
        """The trainable parameters under ``root`` and their tags, looked up once per fit (not every step)."""
        if self._watched is None:
            self._watched = [(n, p) for n, p in _root(pl_module, self.root).named_parameters() if p.requires_grad]
            self._tags = {n: (f"params/{n}", f"grads/{n}", f"grad_norm/{n}", f"update_ratio/{n}") for n, _ in self._watched}
        return self._watched

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._watched = None

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if not _is_log_step(trainer, self.log_every_n_steps):
            return
        step = trainer.global_step
        named = self._named(pl_module)
        if any(p.grad is None for _, p in named):
            named = [(n, p) for n, p in named if p.grad is not None]
        if not named:
            return
        one = [(n, p) for n, p in named if p.numel() == 1]
        many = [(n, p) for n, p in named if p.numel() > 1]
        # The one-element parameters and gradients themselves (their norms and ratios follow on the
        # host), then ‖g‖ and ‖w‖ of the larger ones: read directly on the CPU, gathered into one copy
        # (one sync) on a device.
        host = _one_element_values([p for _, p in one] + [p.grad for _, p in one], many)
        k, m = len(one), len(many)
        grad_norms = [abs(v) for v in host[k : 2 * k]] + host[2 * k : 2 * k + m]
        weight_norms = [abs(v) for v in host[:k]] + host[2 * k + m :]
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        out: dict[str, float] = {}
        for i, (n, _) in enumerate(one):
            params_tag, grads_tag, *_ = self._tags[n]
            out[params_tag], out[grads_tag] = host[i], host[k + i]
        ordered = one + many
        for (n, p), g, w in zip(ordered, grad_norms, weight_norms):
            tags = self._tags[n]
            out[tags[2]] = g
            ratio = float(lr_of.get(id(p), math.nan)) * g / w if w > 0 else math.nan
            if math.isfinite(ratio):  # ‖w‖ = 0, or a parameter no optimizer updates: nothing to chart
                out[tags[3]] = ratio
        log_scalars(trainer, out, step)
        self._remember(step, dict(zip([n for n, _ in ordered], grad_norms)), {n: host[i] for i, (n, _) in enumerate(one)})
        if step % self.histogram_every_n_steps == 0:
            for n, p in many:
                log_histogram(trainer, f"params/{n}", p.detach(), step)
                log_histogram(trainer, f"grads/{n}", p.grad.detach(), step)

    def _remember(self, step: int, norms: dict[str, float], values: dict[str, float]) -> None:
        self.history_steps.append(step)
        for table, new in ((self.history, norms), (self.values, values)):
            for n in new.keys() - table.keys():  # a parameter without a gradient before: NaN there
                table[n] = array("d", [math.nan] * (len(self.history_steps) - 1))
            for n, column in table.items():
                column.append(new.get(n, math.nan))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        one = [(n, p) for n, p in self._named(pl_module) if p.numel() == 1]
        values = _one_element_values([p for _, p in one]) if one else []
        if values and all(math.isfinite(v) for v in values):
            log_scalars(trainer, {self._tags[n][0]: v for (n, _), v in zip(one, values)}, trainer.global_step)


# Leaky ReLU layers are watched too: with a slope a > 0 no unit is ever dead (see statistics).
RELU_TYPES: tuple[type[nn.Module], ...] = (models.ReLU, nn.ReLU, models.LeakyReLU, nn.LeakyReLU)


def _units(h: Tensor) -> Tensor:
    """``h`` as (units, samples): a unit is an index along dim 1, every other dim is a sample."""
    return h.movedim(1, 0).reshape(h.shape[1], -1) if h.dim() > 1 else h.reshape(-1, 1)


# Float kernels and no fresh full-size temporaries, every step: on this CPU build boolean kernels
# ((h > 0).any(), h == 0) and new 1 MiB tensors (page faults) cost 0.5–4 ms on a 1024×256 activation,
# against ~20 µs for a float reduction or an in-place op (scripts/bench.py); _units copies. Same values:
# a unit is alive iff its largest output is > 0, and sgn(|h|) is 0 exactly where h == 0.
SMALL = 4096  # elements: up to here a boolean kernel is as fast as the float ones


def _unit_alive(h: Tensor) -> Tensor:
    """Per unit: ``(_units(h) > 0).any(dim=1)``, from one max-reduction and no copy."""
    if h.dim() == 2:  # (samples, units): the common case, without building a list of dims
        return h.amax(dim=0) > 0
    return (h.amax(dim=[d for d in range(h.dim()) if d != 1]) if h.dim() > 1 else h) > 0


# Tensors this small on the CPU are read straight into Python: there is no device to sync with, and
# reading one (~2 µs) costs less than the several torch ops (5–10 µs each inside a training step) that
# would reduce it first. This is what keeps monitoring the post's 1×1 networks cheap.
HOST_MAX = 64  # elements


def on_host(t: Tensor) -> bool:
    """Whether ``t`` is small and on the CPU, so best read into Python than reduced with torch ops."""
    return t.device.type == "cpu" and t.numel() <= HOST_MAX


def host_list(t: Tensor) -> list[float]:
    """The values of ``t`` as a flat list of Python numbers (no reshape op: the nesting is undone here)."""
    values = t.tolist()
    while isinstance(values, list) and values and isinstance(values[0], list):
        values = [v for row in values for v in row]
    return values if isinstance(values, list) else [values]


def _host_units(h: Tensor) -> list[list[float]]:
    """``_units(h)`` as nested lists: one row of samples per unit."""
    return [list(col) for col in zip(*h.tolist())] if h.dim() == 2 else _units(h).tolist()


def _nonzero_count(h: Tensor, scratch: Tensor | None = None) -> Tensor:
    """How many entries of ``h`` are not 0, as ``(h != 0).sum()`` (a 0-d tensor, no sync).

    Small tensors: one ``count_nonzero`` (each op costs 5–10 µs in a training step, so fewer is
    faster). Large ones: sgn(|h|) summed in ``scratch`` (a flat tensor of ``h``'s dtype and device, at
    least as long, reused instead of allocating), as the boolean kernel is slow on them (above)."""
    if h.numel() <= SMALL:
        return torch.count_nonzero(h)
    s = torch.abs(h, out=scratch[: h.numel()].view_as(h)) if scratch is not None else h.abs()
    return torch.sgn(s, out=s).sum(dtype=torch.float32)


def _on_the_host(items: list) -> list:
    """``items`` with every tensor among them replaced by its number, through one copy (one sync);
    numbers and None pass through."""
    tensors = [t for t in items if isinstance(t, Tensor)]
    numbers = iter(torch.stack(tensors).tolist() if tensors else ())  # stack promotes mixed dtypes
    return [next(numbers) if isinstance(t, Tensor) else t for t in items]


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
        # The training step whose forward pass the hooks see (None between batches), what to compute
        # in it, and the step of the last forward pass that ran a watched layer.
        self._step: int | None = None
        self._log_now = False
        self._keep_outputs = False  # a probe step without a probe set: the batch's activations are the probe
        self._seen_step: int | None = None
        self._outputs: dict[str, Tensor] = {}  # this step's activations, only where _keep_outputs
        self._probe_outputs: dict[str, Tensor] | None = None  # a dict only during the probe pass
        self._slopes: dict[str, float] = {}
        self._last_active: dict[str, Tensor | list[int]] = {}  # per unit: the last training step it was alive
        # per layer, at a log step: (alive units or None, nonzero entries, units, entries); the counts
        # are 0-d tensors, or ints where the layer was counted on the host
        self._batch_stats: dict[str, tuple] = {}
        self._scratch: Tensor | None = None
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
        self._batch_stats.clear()
        self._step = None

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            if self._probe_outputs is not None:
                self._probe_outputs[name] = output.detach()
            elif self._step is not None and module.training and torch.is_grad_enabled():
                self._record(name, output)

        return hook

    def _record(self, name: str, h: Tensor) -> None:
        """One layer's statistics of a training forward pass, computed in the forward hook while ``h``
        is still in cache (after backward, reading a 1 MiB activation again cost ~100 µs, 5× more).
        On the device, no sync: who is alive (every step), and at log steps the counts to log."""
        step = self._step
        self._seen_step = step
        if on_host(h):
            if self._keep_outputs:
                self._outputs[name] = h.detach()
            self._record_on_host(name, h, step)  # tolist() reads it without a detach op
            return
        h = h.detach()
        if self._keep_outputs:
            self._outputs[name] = h
        alive = None if self._slopes[name] > 0 else _unit_alive(h)  # a leaky unit is never dead
        if alive is not None:
            if name not in self._last_active:  # once per layer, not a fresh tensor every step
                self._last_active[name] = torch.full_like(alive, -1, dtype=torch.int64)
            self._last_active[name].masked_fill_(alive, step)
        if self._log_now:
            if h.numel() > SMALL:
                self._scratch = _scratch_for(self._scratch, h)
            alive_count = alive.sum() if alive is not None else None
            units = h.shape[1] if h.dim() > 1 else 1
            self._batch_stats[name] = (alive_count, _nonzero_count(h, self._scratch), units, h.numel())

    def _record_on_host(self, name: str, h: Tensor, step: int) -> None:
        """:meth:`_record` for a small CPU activation, in Python: the same numbers, no torch ops."""
        rows = _host_units(h)
        alive = None if self._slopes[name] > 0 else [any(v > 0 for v in row) for row in rows]
        if alive is not None:
            last = self._last_active.get(name)
            if last is None:
                last = self._last_active[name] = [-1] * len(rows)
            for unit, active in enumerate(alive):
                if active:
                    last[unit] = step
        if self._log_now:
            nonzero = sum(v != 0 for row in rows for v in row)
            self._batch_stats[name] = (sum(alive) if alive is not None else None, nonzero, len(rows), h.numel())

    @property
    def negative_slopes(self) -> dict[str, float]:
        """Per watched layer, its slope for z ≤ 0 (0 for ReLU; a leaky layer's units are never dead)."""
        return dict(self._slopes)

    @staticmethod
    def statistics(h: Tensor, negative_slope: float = 0.0) -> tuple[Tensor, Tensor]:
        """(dead fraction, zero fraction) of one layer's activations ``h``.

        Dead means "passes no gradient back": output ≤ 0 on every sample with slope 0 (ReLU). A leaky
        unit (``negative_slope`` > 0) passes a·g for z ≤ 0, so it is never dead: its dead fraction is 0.
        """
        alive = _unit_alive(h) | (negative_slope > 0)
        dead = 1.0 - alive.to(torch.float32).mean()
        return dead, 1.0 - _nonzero_count(h) / h.numel()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        step = self._step = trainer.global_step
        self._log_now = _is_log_step(trainer, self.log_every_n_steps)
        self._keep_outputs = step % self.probe_every_n_steps == 0 and probe_set(trainer) is None
        self._outputs.clear()
        self._batch_stats.clear()

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        step = self._step
        if step is None or self._seen_step != step:  # no watched layer ran in this step's forward pass
            return
        if self._batch_stats:
            self._log_batch(trainer, step)
        if step % self.probe_every_n_steps == 0:
            self._log_probe(trainer, pl_module, step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        self._step = None  # forward passes between batches are not training batches
        self._outputs.clear()  # do not hold on to activations between steps

    def _log_batch(self, trainer: Trainer, step: int) -> None:
        stats = self._batch_stats
        counts = _on_the_host([c for alive, nonzero, *_ in stats.values() for c in (alive, nonzero)])
        scalars = {}
        for (name, (_, _, units, entries)), alive, nonzero in zip(stats.items(), counts[::2], counts[1::2]):
            dead = 1.0 - alive / units if alive is not None else 0.0  # None: a leaky layer
            scalars[f"relu/dead_fraction/{name}"] = dead
            scalars[f"relu/zero_fraction/{name}"] = 1.0 - nonzero / entries
            self.last_dead_fraction[name] = dead
            if dead < 1.0:
                self.dead_since[name] = None
            elif self.dead_since[name] is None:
                self.dead_since[name] = step
        stats.clear()
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
        for name, slope in self._slopes.items():
            last = self._last_active.get(name)
            if slope > 0:  # never dead (no alive tracking for it)
                out[name] = np.zeros(len(steps))
                continue
            if last is None:  # not run in a training forward pass
                continue
            # A unit is dead from s on iff its last active step is before s (−1: never active).
            last_sorted = torch.as_tensor(last, dtype=torch.int64).cpu().sort().values
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
