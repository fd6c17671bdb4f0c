"""K copies of the MLP (``model=mlp``) as one stacked network, and what each copy's separate run logs from it.

:class:`StackedMLP` holds copy k's ``fc1.weight`` as ``fc1.weight[k]`` (shape (K, out, in)) and its bias as
``fc1.bias[k, 0]`` (shape (K, 1, out)), the layers named as :class:`backprop_lab.models.MLP` names them, each
copy starting from the weights its separate run draws (:func:`stacked_mlp`). The forward pass is the batched
linear map (``baddbmm``) and the hand-written activations on the stacked tensors, so backward is still the
formulas of :mod:`backprop_lab.batched.functions` and :mod:`backprop_lab.functions`.

:class:`MLPRecorder` takes, from the stacked pass, the numbers a separate run's monitors take from its
:class:`~backprop_lab.monitors.record.StepRecorder` (by the same definitions: ``local_derivative``,
``max_derivative``, ``passing_fraction``, ‖·‖₂ of a larger parameter, the number itself of a one-element one),
for every copy at once, and writes each copy's share to its own run:

* ``grad_norm/<p>``, ``update_ratio/<p>`` (and ``params/<p>``, ``grads/<p>`` for a one-element parameter) at
  every step the copy takes an update (:class:`~backprop_lab.monitors.GradientMonitor`);
* ``params/<p>`` and ``grads/<p>`` histograms of the larger parameters every ``histogram_every_n_steps``;
* ``relu/dead_fraction/<act>``, ``relu/zero_fraction/<act>``, ``relu/probe_dead_fraction/<act>``,
  ``relu/dead_forever_fraction/<act>`` and the result's ``dead_since`` and ``final_dead_fraction``
  (:class:`~backprop_lab.monitors.DeadReLUMonitor`, ReLU and leaky-ReLU layers);
* ``backprop/layers``: the Backprop tab's row of every step and of the final forward pass, with the layout of
  :func:`~backprop_lab.monitors.backprop_view.describe` and the copy's own momentum and weight decay;
* per copy, the history the closing diagnoses read (with the sigmoid layers' saturation, as ``history_of``).

Per step: a few reductions over the K copies and one host copy; each copy's events written from one event's
bytes (:class:`~backprop_lab.batched.events.ScalarColumns`).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from backprop_lab import functions as F
from backprop_lab import models
from backprop_lab.batched.events import CopiesLogger, ScalarColumns
from backprop_lab.batched.functions import stacked_linear
from backprop_lab.batched.step_record import TabRowEvents
from backprop_lab.diagnoses import SATURATION_THRESHOLD, Diagnosis, History, diagnose
from backprop_lab.monitors.backprop_view import LAYERS_TAG, describe
from backprop_lab.monitors.gradients import HISTOGRAM_BINS
from backprop_lab.monitors.record import (
    ACTIVATION_KINDS,
    RELU_KINDS,
    SATURATING,
    LayerStats,
    StepRecord,
    max_derivative,
    passing_fraction,
)

# --- the network -----------------------------------------------------------------------------------------


class StackedLinear(nn.Module):
    """K copies of :class:`backprop_lab.models.Linear`: ``weight`` (K, out, in), ``bias`` (K, 1, out)."""

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone().unsqueeze(1))

    def forward(self, x: Tensor) -> Tensor:
        return stacked_linear(x, self.weight, self.bias)


class StackedActivation(nn.Module):
    """An MLP's activation on the stacked tensors (elementwise: the unbatched Function serves as it is)."""

    def __init__(self, kind: str, grad_at_zero: int = 0, negative_slope: float = 0.0):
        super().__init__()
        self.kind, self.grad_at_zero, self.negative_slope = kind, int(grad_at_zero), float(negative_slope)

    def forward(self, z: Tensor) -> Tensor:
        if self.kind == "sigmoid":
            return F.sigmoid(z)
        if self.kind == "relu":
            return F.relu(z, self.grad_at_zero)
        return F.leaky_relu(z, self.negative_slope)


class StackedMLP(nn.Module):
    """K copies of an MLP: ``fc1, act1, …, out`` as :class:`backprop_lab.models.MLP` names them. ``nets``: the
    distinct starts, ``start[k]``: copy k's. :attr:`nodes` keeps the last pass's (z, h) of each activation."""

    def __init__(self, nets: Sequence[models.MLP], start: Sequence[int]):
        super().__init__()
        index = torch.as_tensor(list(start), dtype=torch.long)
        # one copy's network, not a submodule (its parameters are not the program's): its layout is every copy's
        self.__dict__["template"] = nets[0]
        for name, module in nets[0].named_children():
            if isinstance(module, models.Linear):
                weights = torch.stack([getattr(n, name).weight.detach() for n in nets])[index]
                biases = torch.stack([getattr(n, name).bias.detach() for n in nets])[index]
                self.add_module(name, StackedLinear(weights, biases))
            else:
                kind = ACTIVATION_KINDS[type(module)]
                self.add_module(
                    name,
                    StackedActivation(kind, getattr(module, "grad_at_zero", 0), getattr(module, "negative_slope", 0.0)),
                )
        self.nodes: dict[str, tuple[Tensor, Tensor]] = {}

    def forward(self, x: Tensor) -> Tensor:
        nodes = {}
        for name, module in self.named_children():
            z, x = x, module(x)
            if isinstance(module, StackedActivation):
                nodes[name] = (z, x)
        self.nodes = nodes
        return x

    def copies_pass(self, x: Tensor, index: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """A no-grad pass of the copies ``index`` only (x of shape (1 or len(index), N, in)): each activation's
        (z, h), per copy the numbers the whole stack's pass gives it."""
        nodes = {}
        for name, module in self.named_children():
            if isinstance(module, StackedLinear):
                x = stacked_linear(x, module.weight[index], module.bias[index])
            else:
                z, x = x, module(x)
                nodes[name] = (z, x)
        return nodes

    def copy_state(self, k: int) -> dict[str, Tensor]:
        """Copy k's parameters, named and shaped as its separate run's network has them."""
        out = {}
        for name, p in self.named_parameters():
            w = p.detach()[k]
            out[name] = w.reshape(-1).clone() if name.endswith(".bias") else w.clone()
        return out


def stacked_mlp(cfgs, data_for_seed, in_features: int, out_features: int) -> StackedMLP:
    """The copies of ``cfgs`` (one group), each starting from the weights its separate run draws: the global RNG
    seeded with the job's seed (``L.seed_everything``, as :func:`backprop_lab.train.build_run`), then the MLP
    built by ``instantiate`` in the same order of draws; copies of one seed share the draw."""
    import lightning as L
    from hydra.utils import instantiate

    seeds = list(dict.fromkeys(int(c.seed) for c in cfgs))
    nets = []
    for seed in seeds:
        cfg = next(c for c in cfgs if int(c.seed) == seed)
        L.seed_everything(seed, workers=True, verbose=False)
        data_for_seed(seed)  # as a separate run: its data drawn (from its own generator) before the network
        nets.append(instantiate(cfg.model, in_features=in_features, out_features=out_features))
    return StackedMLP(nets, [seeds.index(int(c.seed)) for c in cfgs])


# --- what each copy logs -------------------------------------------------------------------------------------


def _numbers(params: Sequence[Tensor]) -> Tensor:
    """(params, K): per copy, a one-element parameter's number, else its L2 norm (``record._number``'s)."""
    out = []
    for p in params:
        p = p.detach()
        if p.dtype is not torch.float32 and p.dtype is not torch.float64:
            p = p.float()
        k = p.shape[0]
        out.append(p.reshape(k) if p[0].numel() == 1 else torch.linalg.vector_norm(p.reshape(k, -1), dim=1))
    return torch.stack(out)


def stacked_histograms(values: Tensor, bins: int = HISTOGRAM_BINS) -> list[dict | None]:
    """:func:`~backprop_lab.monitors.gradients.histogram_stats` of each row of ``values`` (copies × numbers), for all
    rows at once: the same extremes, equal-width buckets (``equal_width_counts``: histc's), edges (``linspace``, per
    row) and sum, bit for bit; the sum of squares is ``torch.dot``'s in the values' dtype, here summed in another
    order (equal to its rounding). Rows with a non-finite value go through the monitor's own function."""
    from backprop_lab.monitors.gradients import equal_width_counts, histograms_stats

    v = values if values.dtype == torch.float64 else values.float()
    k = v.shape[0]
    smallest, largest = torch.aminmax(v, dim=1)
    same = smallest == largest
    lo = torch.where(same, smallest.double() - 0.5, smallest.double())  # as np.histogram (and the monitor)
    hi = torch.where(same, largest.double() + 0.5, largest.double())
    counts = equal_width_counts(v, lo.to(v.dtype).unsqueeze(1), hi.to(v.dtype).unsqueeze(1), bins)
    sums = v.sum(dim=1, dtype=torch.float64)
    squares = torch.bmm(v.unsqueeze(1), v.unsqueeze(2)).reshape(k).double()
    host = torch.cat([smallest.double().unsqueeze(1), largest.double().unsqueeze(1), sums.unsqueeze(1),
                      squares.unsqueeze(1), counts], dim=1).cpu().numpy()  # fmt: skip
    out: list[dict | None] = []
    for j, row in enumerate(host.tolist()):
        if not (math.isfinite(row[0]) and math.isfinite(row[1])):  # NaN or ±inf among its values
            out.append(histograms_stats([values[j]], bins)[0])
            continue
        lo, hi = (row[0] - 0.5, row[1] + 0.5) if row[0] == row[1] else (row[0], row[1])
        limits = torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist()  # its own rounding (fused on a CPU)
        out.append(
            {
                "min": row[0],
                "max": row[1],
                "num": v.shape[1],
                "sum": row[2],
                "sum_squares": row[3],
                "bucket_limits": limits,
                "bucket_counts": [0.0, *row[4 : 4 + bins]],
            }
        )
    return out


def _columns(copies: CopiesLogger, tags: list[str], step: int, which: np.ndarray, values: np.ndarray, cache: dict):
    """Scalar events of the copies ``which`` (indices) with ``values`` (copies × tags): rows with a non-finite
    value leave that tag out, as a monitor skips it; the copies with every value finite share one template."""
    if not which.size:
        return
    finite = np.isfinite(values)
    whole = finite.all(axis=1)
    if whole.any():
        key = tuple(tags)
        columns = cache.get(key) or cache.setdefault(key, ScalarColumns(tags))
        copies.log_copy_events(columns.events(step, which[whole], values[whole]))
    for i in np.flatnonzero(~whole).tolist():
        row = {t: float(v) for t, v, ok in zip(tags, values[i], finite[i]) if ok}
        copies.log_copy_metrics({int(which[i]): row}, step)


class MLPRecorder:
    """The step record of K stacked MLP copies and what their monitors log (see the module's docstring).

    ``lrs``, ``momenta``, ``weight_decays``: per copy; ``gradients``, ``dead_relu``, ``view``: the monitors on;
    ``probe_every``: ``monitor.probe_every_n_steps``; ``histogram_every``: ``monitor.histogram_every_n_steps``;
    ``probe_x``: the probe set, (1 or K, P, in), or None.
    """

    def __init__(
        self,
        net: StackedMLP,
        optimizer: str,
        lrs: np.ndarray,
        momenta: list[float],
        weight_decays: list[float],
        copies: CopiesLogger,
        gradients: bool,
        dead_relu: bool,
        view: bool,
        probe_every: int,
        histogram_every: int,
        probe_x: Tensor | None,
        double: bool = False,
        saturation_threshold: float = SATURATION_THRESHOLD,
    ):
        self.copies, self.lrs = copies, np.asarray(lrs, dtype=np.float64)
        k = len(self.lrs)
        self.gradients, self.view, self.probe_every, self.histogram_every = (
            gradients,
            view,
            probe_every,
            histogram_every,
        )
        self.probe_x, self.threshold = probe_x, saturation_threshold
        named = list(net.named_parameters())
        self.names = [n for n, _ in named]
        self.one = np.array([p[0].numel() == 1 for _, p in named])
        self.acts = [(n, m) for n, m in net.named_children() if isinstance(m, StackedActivation)]
        self.relu_layers = [n for n, m in self.acts if m.kind in RELU_KINDS] if dead_relu else []
        self.relu = bool(self.relu_layers)
        self.saturating = [n for n, m in self.acts if m.kind in SATURATING]
        # the layout, from a record of the template's layers in call order (as the recorder's first record)
        record = StepRecord(step=0, backward=True, batch=0, loss=math.nan)
        for name, module in net.named_children():
            if isinstance(module, StackedLinear):
                record.layers[name] = LayerStats(module=name, type="linear", shape=list(module.weight.shape[1:]))
            else:
                record.layers[name] = LayerStats(
                    module=name, type=module.kind, kind=module.kind, unit_dim=1, units=self._units(net, name)
                )
        _, base = describe(net.template, record, None)
        self.layouts = [
            {"version": base["version"], "optimizer": optimizer, "momentum": float(m), "weight_decay": float(wd)}
            | {key: v for key, v in base.items() if key != "version"}
            for m, wd in zip(momenta, weight_decays)
        ]
        self.fields = list(base["fields"])
        self.col = {f: j for j, f in enumerate(self.fields)}
        self.events = TabRowEvents(LAYERS_TAG, self.layouts, double) if view else None
        self._scalar_cache: dict = {}
        # the history of every copy (the rows and, for the diagnoses, the sigmoid layers' saturation)
        self._copy_idx: list[np.ndarray] = []
        self._steps: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        # the dead-ReLU monitor's state, per copy and ReLU layer
        n_relu = len(self.relu_layers)
        self.first_step = np.zeros(k, dtype=np.int64)
        self.last_step = np.full(k, -1, dtype=np.int64)
        self.dead_since_step = np.full((k, n_relu), -1, dtype=np.int64)  # −1: not dead
        self.last_dead = np.full((k, n_relu), math.nan)
        self.last_probe = np.full(k, -1, dtype=np.int64)
        self.last_active: dict[str, Tensor] = {}  # per ReLU layer: (K, units), the last step each unit passed
        self._changed = np.empty(0, dtype=np.int64)
        self._before: Tensor | None = None
        self._nodes: dict[str, tuple[Tensor, Tensor]] = {}
        self._batch = 0

    @staticmethod
    def _units(net: StackedMLP, act: str) -> int:
        names = [n for n, _ in net.named_children()]
        previous = getattr(net, names[names.index(act) - 1])
        return int(previous.weight.shape[1])

    # --- a training step ----------------------------------------------------------------------------------

    def forward(self, x: Tensor, y: Tensor, nodes: dict, params: list[Tensor], step: int, live: np.ndarray) -> None:
        """The step's forward pass: its nodes, the parameters before the update (their numbers, and the
        histograms of the larger ones at their steps)."""
        self._nodes, self._batch = nodes, x.shape[1]
        self._before = _numbers(params).clone()
        if self.gradients and step % self.histogram_every == 0:
            self._histograms("params", params, live, step)

    def _activation_stats(self, nodes: dict) -> dict[str, Tensor]:
        """Per copy and activation: dead fraction, zero fraction (ReLU kinds), saturation (sigmoid), and per ReLU
        layer the units' largest derivative (> 0: the unit passed a gradient), by the record's definitions."""
        out: dict[str, Tensor] = {}
        for name, module in self.acts:
            z, h = (t.detach() for t in nodes[name])
            numel, units = h[0].numel(), h.shape[-1]
            if module.kind == "relu" and not module.grad_at_zero:  # ReLU′ = sign(h): samples passing, per unit
                top = h.sign().sum(dim=1, dtype=torch.float32 if numel < 2**24 else torch.float64)
                zero = (numel - top.sum(dim=1, dtype=torch.float64)) / max(numel, 1)
            else:
                nonzero = h.sign().abs().sum(dim=(1, 2), dtype=torch.float32 if numel < 2**24 else torch.float64)
                zero = (numel - nonzero.double()) / max(numel, 1)
                top = max_derivative(module.kind, z, h, module.grad_at_zero, module.negative_slope, [1])
            out[f"{name}/dead"] = (top == 0).double().sum(dim=1) / units
            out[f"{name}/zero"] = zero.double()
            if module.kind in SATURATING:
                out[f"{name}/saturation"] = (top < self.threshold).double().sum(dim=1) / units
            if name in self.relu_layers:
                out[f"{name}/top"] = top
        return out

    def step_rows(self, step: int, live: np.ndarray, stepping: np.ndarray, losses: Tensor, params, grads) -> None:
        """After the update of ``step``: what the copies ``live`` at it log (``stepping``: those updated)."""
        if not live.any():
            return
        stats = self._activation_stats(self._nodes)
        nan = torch.full((len(self.lrs),), math.nan, dtype=torch.float64, device=losses.device)
        grad_numbers = [
            _numbers([g])[0].double() if g is not None else nan for g in grads
        ]  # the applied gradient: no clipping, so backprop's
        for name in self.relu_layers:  # every step, on the device: each unit's last step with a gradient
            top = stats.pop(f"{name}/top")
            last = self.last_active.get(name)
            if last is None:
                last = self.last_active[name] = torch.full(top.shape, -1, dtype=torch.int64, device=top.device)
            mask = (top > 0) & torch.as_tensor(live, device=top.device).unsqueeze(1)
            last.masked_fill_(mask, step)
        names = list(stats)
        parts = [losses.detach().float().double(), self._before.double(), torch.stack(grad_numbers)]
        parts += [stats[n] for n in names]
        host = torch.cat([p.reshape(-1, len(self.lrs)) for p in parts]).cpu().numpy()  # one host copy a step
        loss, before, grad = host[0], host[1 : 1 + len(self.names)], host[1 + len(self.names) : 1 + 2 * len(self.names)]
        got = dict(zip(names, host[1 + 2 * len(self.names) :]))
        which = np.flatnonzero(live)
        backward = stepping & np.isfinite(grad).any(axis=0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ratio = np.where(before != 0, np.abs(self.lrs * grad / before), math.nan)
        ratio[~np.isfinite(ratio)] = math.nan
        rows = self._rows_of(which, loss, before, np.where(backward, grad, math.nan), np.where(backward, ratio, math.nan),
                             self.lrs, got, step)  # fmt: skip
        self._write(which, rows, step)
        if self.gradients:  # GradientMonitor: the copies that took an update, the parameters with a finite gradient
            self._gradient_scalars(step, np.flatnonzero(backward & live), before, grad, ratio)
            if step % self.histogram_every == 0:
                self._histograms("grads", grads, stepping, step)
        if self.relu:
            self._relu_step(step, which, got)

    def _rows_of(self, which, loss, before, grad, ratio, lrs, got, step) -> np.ndarray:
        """The ``backprop/layers`` rows (and the saturation the diagnoses read) of the copies ``which``."""
        rows = np.full((len(which), len(self.fields) + len(self.saturating)), math.nan)
        c = self.col
        rows[:, c["loss"]] = loss[which]
        rows[:, c["batch"]] = self._batch
        rows[:, c["backward"]] = np.isfinite(grad[:, which]).any(axis=0) if grad is not None else 0.0
        for i, name in enumerate(self.names):
            layer, _, what = name.rpartition(".")
            if what != "weight" or f"{layer}/weight_norm" not in c:
                continue
            rows[:, c[f"{layer}/weight_norm"]] = before[i, which]
            rows[:, c[f"{layer}/lr"]] = lrs[which] if lrs is not None else math.nan
            if grad is not None:
                rows[:, c[f"{layer}/grad_norm"]] = grad[i, which]
                rows[:, c[f"{layer}/update_ratio"]] = ratio[i, which]
        for name, _ in self.acts:
            if f"{name}/dead_fraction" in c:
                rows[:, c[f"{name}/dead_fraction"]] = got[f"{name}/dead"][which]
        for j, name in enumerate(self.saturating):
            rows[:, len(self.fields) + j] = got[f"{name}/saturation"][which]
        return rows

    def _write(self, which: np.ndarray, rows: np.ndarray, step: int) -> None:
        self._copy_idx.append(which)
        self._steps.append(np.full(len(which), step, dtype=np.int64))
        self._rows.append(rows)
        if self.events is not None:
            self.copies.log_copy_events(self.events.events(which, rows[:, : len(self.fields)], step))

    def _gradient_scalars(self, step: int, which: np.ndarray, before, grad, ratio) -> None:
        if not which.size:
            return
        tags, cols = [], []
        for i, name in enumerate(self.names):
            if self.one[i]:
                tags += [f"params/{name}", f"grads/{name}"]
                cols += [before[i, which], grad[i, which]]
            tags.append(f"grad_norm/{name}")
            cols.append(np.abs(grad[i, which]))
            tags.append(f"update_ratio/{name}")
            cols.append(ratio[i, which])
        values = np.stack(cols, axis=1)
        # a parameter with a non-finite gradient logs nothing; a non-finite update ratio alone is left out
        ok = np.isfinite(values).all(axis=1)
        _columns(self.copies, tags, step, which[ok], values[ok], self._scalar_cache)
        for r in np.flatnonzero(~ok).tolist():
            row, j = {}, 0
            for i, name in enumerate(self.names):
                g = grad[i, which[r]]
                width = 4 if self.one[i] else 2
                if math.isfinite(g):
                    row.update({t: float(v) for t, v in zip(tags[j : j + width], values[r, j : j + width])})
                    if not math.isfinite(ratio[i, which[r]]):
                        row.pop(f"update_ratio/{name}")
                j += width
            self.copies.log_copy_metrics({int(which[r]): row}, step)

    def _histograms(self, prefix: str, tensors: Sequence[Tensor | None], which: np.ndarray, step: int) -> None:
        """``params/<p>``/``grads/<p>`` histograms of the larger parameters of the copies ``which`` (a mask), each
        copy's as the monitor makes it from its tensor (:func:`stacked_histograms`)."""
        from torch.utils.tensorboard.summary import histogram_raw

        idx = np.flatnonzero(which)
        named = [(n, t) for n, t, one in zip(self.names, tensors, self.one) if not one and t is not None]
        if not idx.size or not named:
            return
        index = torch.as_tensor(idx, device=named[0][1].device)
        stats = [stacked_histograms(t.detach()[index].reshape(len(idx), -1)) for _, t in named]
        for j, k in enumerate(idx.tolist()):
            summaries = [histogram_raw(f"{prefix}/{n}", **st[j]) for (n, _), st in zip(named, stats) if st[j]]
            self.copies.log_copy_summaries(k, summaries, step)

    def final_rows(self, which: np.ndarray, step: int, nodes: dict, losses: Tensor, params) -> None:
        """The final forward pass (no gradient) of the copies ``which`` (a mask) at ``step``, where they end."""
        if not which.any():
            return
        stats = self._activation_stats(nodes)
        for name in self.relu_layers:
            stats.pop(f"{name}/top")
        names = list(stats)
        parts = [losses.detach().float().double(), _numbers(params).double()] + [stats[n] for n in names]
        host = torch.cat([p.reshape(-1, len(self.lrs)) for p in parts]).cpu().numpy()
        loss, before = host[0], host[1 : 1 + len(self.names)]
        got = dict(zip(names, host[1 + len(self.names) :]))
        batch, self._batch = self._batch, next(iter(nodes.values()))[1].shape[1]
        idx = np.flatnonzero(which)
        self._write(idx, self._rows_of(idx, loss, before, None, None, None, got, step), step)
        self._batch = batch

    # --- the dead-ReLU monitor's numbers ---------------------------------------------------------------

    def _relu_step(self, step: int, which: np.ndarray, got: dict[str, np.ndarray]) -> None:
        tags, cols = [], []
        for name in self.relu_layers:
            tags += [f"relu/dead_fraction/{name}", f"relu/zero_fraction/{name}"]
            cols += [got[f"{name}/dead"][which], got[f"{name}/zero"][which]]
        self.copies.log_copy_events(self._tags(tags).events(step, which, np.stack(cols, axis=1)))
        never = self.last_step[which] < 0
        self.first_step[which[never]] = step
        self.last_step[which] = step
        dead = np.stack([got[f"{name}/dead"][which] for name in self.relu_layers], axis=1)
        self.last_dead[which] = dead
        was = self.dead_since_step[which] >= 0
        now = dead >= 1.0  # a layer is dead when every unit is (dead < 1.0: one passed a gradient)
        since = self.dead_since_step[which]
        since = np.where(now & ~was, step, np.where(now, since, -1))
        self.dead_since_step[which] = since
        changed = which[(now != was).any(axis=1)]
        if changed.size and (step + 1) % self.probe_every != 0:
            self._changed = changed  # probed right after this update, at step + 1 (:meth:`after_update`)
        else:
            self._changed = np.empty(0, dtype=np.int64)

    def _tags(self, tags: list[str]) -> ScalarColumns:
        key = tuple(tags)
        return self._scalar_cache.get(key) or self._scalar_cache.setdefault(key, ScalarColumns(tags))

    def probe(self, net: StackedMLP, which: np.ndarray, step: int) -> None:
        """``relu/probe_dead_fraction/<layer>`` of the copies ``which`` (a mask) at ``step``: a layer's units dead on
        the whole probe set (ReLU′ = 0 on every sample), from one no-grad pass of the stacked network."""
        if not self.relu or self.probe_x is None or not which.any():
            return
        idx = np.flatnonzero(which)
        with torch.no_grad():
            p = next(net.parameters())
            index = torch.as_tensor(idx, device=p.device)
            x = self.probe_x.to(device=p.device, dtype=p.dtype)
            nodes = net.copies_pass(x if x.shape[0] == 1 else x[index], index)  # only the copies probed
            cols = []
            for name, module in self.acts:
                if name in self.relu_layers:
                    z, h = nodes[name]
                    passing = passing_fraction(module.kind, z, h, module.grad_at_zero, module.negative_slope, [1])
                    cols.append((passing == 0).double().mean(dim=1))
            dead = torch.stack(cols, dim=1).cpu().numpy()
        tags = [f"relu/probe_dead_fraction/{n}" for n in self.relu_layers]
        self.copies.log_copy_events(self._tags(tags).events(step, idx, dead))
        self.last_probe[idx] = step

    def after_update(self, net: StackedMLP, step: int) -> None:
        """Right after the update of ``step``: the probe of the copies whose layer died or revived in it."""
        if self._changed.size:
            mask = np.zeros(len(self.lrs), dtype=bool)
            mask[self._changed] = True
            self.probe(net, mask, step + 1)
        self._changed = np.empty(0, dtype=np.int64)

    def end(self, net: StackedMLP, which: np.ndarray, step: int) -> None:
        """The copies ``which`` (a mask) end at ``step``: the probe under their last weights (unless taken at this
        step), then ``relu/dead_forever_fraction/<layer>`` at every step they logged."""
        if not self.relu or not which.any():
            return
        self.probe(net, which & (self.last_probe != step), step)
        idx = np.flatnonzero(which & (self.last_step >= 0))
        if not idx.size:
            return
        last = {n: t[torch.as_tensor(idx, device=t.device)].cpu().numpy() for n, t in self.last_active.items()}
        tags = [f"relu/dead_forever_fraction/{n}" for n in self.relu_layers]
        columns = self._tags(tags)
        for s in range(int(self.first_step[idx].min()), int(self.last_step[idx].max()) + 1):
            at = (self.first_step[idx] <= s) & (self.last_step[idx] >= s)
            if at.any():  # a unit is dead from s on iff its last active step is before s
                values = np.stack([(last[n][at] < s).mean(axis=1) for n in self.relu_layers], axis=1)
                self.copies.log_copy_events(columns.events(s, idx[at], values))

    # --- each copy's result --------------------------------------------------------------------------------

    def dead_since(self, k: int) -> dict[str, int | None]:
        if not self.relu or self.last_step[k] < 0:
            return {}
        return {n: (int(s) if s >= 0 else None) for n, s in zip(self.relu_layers, self.dead_since_step[k])}

    def final_dead_fraction(self, k: int) -> float | None:
        if not self.relu or self.last_step[k] < 0:
            return None
        return float(sum(self.last_dead[k].tolist()) / len(self.relu_layers))

    def monitor_states(self, k: int) -> dict[str, dict]:
        """Copy k's monitors' states for its checkpoint at an interrupt, in the monitors' own formats: the dead-ReLU
        monitor's, its units' last active steps, and (``view``) the Backprop tab's rows written so far as the
        :class:`~backprop_lab.diagnoses.History` the view monitor keeps; the step record's history and the probe
        activity are not kept per copy."""
        out: dict = {}
        if self.events is not None and self._rows:
            mine = [(at[0], rows[idx == k]) for idx, at, rows in zip(self._copy_idx, self._steps, self._rows)]
            written = [(int(step), rows[0, : len(self.fields)]) for step, rows in mine if len(rows)]
            out["view"] = History.from_rows(self.layouts[k], written)
        if not self.relu or self.last_step[k] < 0:
            return out
        return out | {
            "recorder": {
                "activity_steps": [],
                "activity": {},
                "last_active": {f"{n}\x000": t[k].cpu() for n, t in self.last_active.items()},
                "calls_per_pass": dict.fromkeys(self.relu_layers, 1),
            },
            "dead_relu": {
                "logged_steps": list(range(int(self.first_step[k]), int(self.last_step[k]) + 1)),
                "dead_since": self.dead_since(k),
                "last_dead_fraction": dict(zip(self.relu_layers, map(float, self.last_dead[k]))),
            },
        }

    def diagnoses(self) -> list[list[Diagnosis] | None]:
        """Per copy, :func:`~backprop_lab.diagnoses.diagnose` of its history (``history_of``'s, saturation included)."""
        k = len(self.lrs)
        if not self._rows:
            return [[] for _ in range(k)]
        copy_idx = np.concatenate(self._copy_idx)
        order = np.argsort(copy_idx, kind="stable")
        steps, rows = np.concatenate(self._steps)[order], np.concatenate(self._rows)[order]
        bounds = np.searchsorted(copy_idx[order], np.arange(k + 1))
        extra = [f"{n}/saturation" for n in self.saturating]
        out: list[list[Diagnosis] | None] = []
        for j in range(k):
            lo, hi = bounds[j], bounds[j + 1]
            layout = {**self.layouts[j], "fields": self.fields + extra} if extra else self.layouts[j]
            history = History(layout, steps=array("q", steps[lo:hi].tobytes()))
            history.values.frombytes(np.ascontiguousarray(rows[lo:hi]).tobytes())
            out.append(diagnose(history))
        return out


# --- the data of several seeds ---------------------------------------------------------------------------


class _Epoch:
    """The epoch the loader is in, shared by its sampler (which Lightning tells) and its data set."""

    value = 0


class _Positions(torch.utils.data.Sampler):
    """Positions 0 … n−1 of an epoch; each seed's data set maps them through its own order of that epoch."""

    def __init__(self, n: int, epoch: _Epoch):
        self.n, self.epoch = n, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch.value = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(range(self.n))


class _SeedsPairs(torch.utils.data.Dataset):
    """Per step, every seed's batch: the indices at the step's positions of seed s's order of the epoch (the
    order its separate run's :class:`~backprop_lab.data.EpochSampler` draws), gathered from its own data set."""

    def __init__(self, datas, epoch: _Epoch):
        from backprop_lab.data import EpochSampler

        self.x = torch.stack([d.train_set.x for d in datas])
        self.y = torch.stack([d.train_set.y for d in datas])
        self.samplers = [EpochSampler(len(d.train_set), d.seed, d.shuffle) for d in datas]
        self.epoch, self._orders = epoch, (None, None)

    def __len__(self) -> int:
        return self.x.shape[1]

    def __getitems__(self, positions: list[int]) -> tuple[Tensor, Tensor]:
        if self._orders[0] != self.epoch.value:
            for s in self.samplers:
                s.set_epoch(self.epoch.value)
            self._orders = (self.epoch.value, torch.tensor([list(s) for s in self.samplers]))
        idx = self._orders[1][:, positions]  # (seeds, batch)
        rows = torch.arange(len(self.samplers)).unsqueeze(1)
        return self.x[rows, idx], self.y[rows, idx]


def seeds_data(datas):
    """A LightningDataModule whose batch at each step stacks every seed's batch of its separate run, (seeds, B, …):
    ``datas`` are the seeds' data modules (set up), equal but for the seed."""
    import lightning as L
    from torch.utils.data import DataLoader

    from backprop_lab.data import EpochSampler, ResumableLoader, _keep_batch

    class SeedsData(L.LightningDataModule):
        def __init__(self):
            super().__init__()
            self.task = datas[0].task
            self.probe_x = torch.stack([d.probe_x for d in datas])
            self.probe_y = torch.stack([d.probe_y for d in datas])

        def setup(self, stage: str | None = None) -> None:
            """The seeds' data modules are set up already."""

        def train_dataloader(self) -> DataLoader:
            epoch = _Epoch()
            pairs = _SeedsPairs(datas, epoch)
            batch = datas[0].batch_size
            # its state is where training stands, as a separate run's loader's: what a copy's checkpoint carries
            return ResumableLoader(
                pairs, batch_size=batch, sampler=_Positions(len(pairs), epoch), collate_fn=_keep_batch,
                epoch_sampler=EpochSampler(len(pairs), 0), global_batch=batch, position=self._position,
            )  # fmt: skip

        def _position(self) -> tuple[int, int]:
            trainer = self.trainer
            return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed

    return SeedsData()
