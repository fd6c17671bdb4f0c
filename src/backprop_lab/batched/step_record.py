"""What each copy's separate run writes from its monitors' step record, from the stacked tensors of the group.

A separate run's :class:`~backprop_lab.monitors.record.StepRecorder` hooks its network and feeds the Backprop
tab (:class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor`), the dead-ReLU statistics
(:class:`~backprop_lab.monitors.dead_relu.DeadReLUMonitor`) and the closing diagnoses. A batched group has one
network of K stacked copies; :class:`CopiesRecorder` takes the same numbers from its real forward and backward
pass, for every copy at once, and writes each copy's share to its own run:

* ``backprop/graph``: per step, the forward values (batch means of z1, h, ŷ and dh/dz1 by
  :func:`~backprop_lab.monitors.record.local_derivative`), the gradients that reached ŷ, h and z1
  (``retain_grad`` on the stacked tensors, summed over the batch), each weight before and after the update,
  its gradient and η; the final forward pass (no gradient) at the step the copy ends; the layout of
  :func:`~backprop_lab.monitors.backprop_view.describe` with the copy's own momentum and weight decay;
* ``relu/dead_fraction/h``, ``relu/zero_fraction/h`` at every step the copy trains, ``relu/probe_dead_fraction/h``
  on the data module's probe set (every ``monitor.probe_every_n_steps``, right after the update where the unit
  dies or revives, and at the copy's end), ``relu/dead_forever_fraction/h`` at its end, and the result's
  ``dead_since`` and ``final_dead_fraction``;
* the history the closing diagnoses read (:func:`~backprop_lab.diagnoses.diagnose`), per copy.

Per step: a few tensor ops over the K copies and one host copy; the rows reach each copy's event file as one
serialized event each (the tensor's bytes after a prefix that is the same for every copy of a step).
"""

from __future__ import annotations

import math
import time
from array import array

import numpy as np
import torch
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_TENSOR, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_DOUBLE, DT_FLOAT
from torch import Tensor, nn

from backprop_lab.batched.events import CopiesLogger, ScalarColumns
from backprop_lab.diagnoses import Diagnosis, History, diagnose
from backprop_lab.monitors.backprop_view import GRAPH_TAG, PLUGIN_NAME, describe
from backprop_lab.monitors.record import local_derivative, max_derivative, passing_fraction

RELU_LAYER = "h"  # the post's hidden unit: the activation module's name in a separate run


class TabRowEvents:
    """The Backprop tab's events of K copies under ``tag`` (``backprop/graph`` of a post net, ``backprop/layers``
    of an MLP): the first of each copy with its layout (TensorBoard keeps a tag's first metadata), the others as
    the step's prefix and the copy's row of float32 (float64) bytes."""

    def __init__(self, tag: str, layouts: list[dict], double: bool):
        import json

        self.tag = tag
        self.n_fields = len(layouts[0]["fields"])
        self.dtype = np.float64 if double else np.float32
        dt = DT_DOUBLE if double else DT_FLOAT
        shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=self.n_fields)])
        self._tensor = TensorProto(dtype=dt, tensor_shape=shape)
        self._metadata = [
            SummaryMetadata(
                summary_description="The Backprop tab's data (backprop_lab.monitors.BackpropViewMonitor)",
                data_class=DATA_CLASS_TENSOR,
                plugin_data=SummaryMetadata.PluginData(
                    plugin_name=PLUGIN_NAME, content=json.dumps(lay).encode("utf-8")
                ),
            )
            for lay in layouts
        ]
        self._started = np.zeros(len(layouts), dtype=bool)

    def events(self, which: np.ndarray, rows: np.ndarray, step: int) -> dict[int, bytes]:
        """``{copy: serialized Event}`` for the copies ``which`` (indices) and their ``rows`` (float64)."""
        now = time.time()
        data = rows.astype(self.dtype)
        width = data.shape[1] * data.itemsize
        placeholder = b"\x7f" * width
        tensor = TensorProto()
        tensor.CopyFrom(self._tensor)
        tensor.tensor_content = placeholder
        whole = Event(
            wall_time=now, step=step, summary=Summary(value=[Summary.Value(tag=self.tag, tensor=tensor)])
        ).SerializeToString()
        assert whole.endswith(placeholder)  # the tensor's bytes come last: fields are written in number order
        prefix = whole[:-width]
        out: dict[int, bytes] = {}
        blob = data.tobytes()
        for i, k in enumerate(which.tolist()):
            content = blob[i * width : (i + 1) * width]
            if self._started[k]:
                out[k] = prefix + content
                continue
            self._started[k] = True
            value = Summary.Value(tag=self.tag, tensor=tensor, metadata=self._metadata[k])
            value.tensor.tensor_content = content
            out[k] = Event(wall_time=now, step=step, summary=Summary(value=[value])).SerializeToString()
        return out


class CopiesRecorder:
    """The step record of K stacked copies of a post network (see the module's docstring).

    ``net``: a post network of the group's kind (its layout); ``momenta``, ``weight_decays``, ``lrs``: per copy;
    ``view``: write ``backprop/graph`` (the rows are kept either way: the diagnoses read them); ``dead_relu``:
    the relu/* statistics (ReLU nets); ``probe_every``: ``monitor.probe_every_n_steps``; ``probe_x``: the data
    module's probe set (None: none).
    """

    def __init__(
        self,
        kind: str,
        net: nn.Module,
        optimizer: str,
        lrs: np.ndarray,
        momenta: list[float],
        weight_decays: list[float],
        copies: CopiesLogger,
        view: bool,
        dead_relu: bool,
        probe_every: int,
        probe_x: Tensor | None,
        relu_grad_at_zero: int = 0,
        double: bool = False,
    ):
        self.kind, self.copies, self.lrs = kind, copies, np.asarray(lrs, dtype=np.float64)
        k = len(self.lrs)
        _, base = describe(net, None)  # type: ignore[arg-type] — the post's nets need no record
        self.layouts = [
            {"version": base["version"], "optimizer": optimizer, "momentum": float(m), "weight_decay": float(wd)}
            | {key: v for key, v in base.items() if key != "version"}
            for m, wd in zip(momenta, weight_decays)
        ]
        self.fields: list[str] = list(base["fields"])
        self.col = {f: j for j, f in enumerate(self.fields)}
        self.params = ("w",) if kind == "linear" else ("w1", "w2")
        self.view = view
        self.relu = dead_relu and kind == "relu"
        self.grad_at_zero = int(relu_grad_at_zero)
        self.probe_every, self.probe_x = probe_every, probe_x
        self.graph = TabRowEvents(GRAPH_TAG, self.layouts, double) if view else None
        # the history every copy's diagnoses read: per recorded step, (copies, steps, rows)
        self._copy_idx: list[np.ndarray] = []
        self._steps: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        # the dead-ReLU monitor's state, per copy
        self.first_step = np.zeros(k, dtype=np.int64)  # the relu/* steps are first_step … last_step
        self.last_step = np.full(k, -1, dtype=np.int64)
        self.last_active = np.full(k, -1, dtype=np.int64)  # the last step the unit passed a gradient (−1: never)
        self.dead_since: list[int | None] = [None] * k
        self.is_dead = np.zeros(k, dtype=bool)
        self.last_dead_fraction = np.full(k, math.nan)
        self.last_probe = np.full(k, -1, dtype=np.int64)
        self._probes: list[tuple[int, np.ndarray, np.ndarray]] = []  # (step, copies, their units' active fractions)
        self._step_nodes: dict[str, Tensor] = {}
        self._before: Tensor | None = None
        self._batch: tuple[Tensor, Tensor, int] | None = None  # the step's batch means of x and y, its size
        self._changed = np.empty(0, dtype=np.int64)  # copies whose unit died or revived at this step
        layer = RELU_LAYER
        self._batch_tags = ScalarColumns([f"relu/dead_fraction/{layer}", f"relu/zero_fraction/{layer}"])
        self._probe_tags = ScalarColumns([f"relu/probe_dead_fraction/{layer}"])
        self._forever_tags = ScalarColumns([f"relu/dead_forever_fraction/{layer}"])

    # --- a training step ---------------------------------------------------------------------------------

    def forward(self, x: Tensor, y: Tensor, nodes: dict[str, Tensor], params: list[Tensor]) -> None:
        """The step's forward pass: keep its nodes (their gradients are retained for the rows) and the
        weights before the update."""
        self._step_nodes = nodes
        for t in nodes.values():
            if t.requires_grad:
                t.retain_grad()
        self._before = torch.stack([p.detach().reshape(-1) for p in params]).clone()  # (params, K)
        # as the record's: sums in float64 over the batch, divided by the count (no host copy here)
        self._batch = (
            x.detach().double().sum() / max(x.numel(), 1),
            y.detach().double().sum() / max(y.numel(), 1),
            len(x),
        )

    def _forward_columns(self, nodes: dict[str, Tensor], losses: Tensor) -> dict[str, Tensor]:
        """Per copy, the forward values: batch means of the nodes, dh/dz1, the loss (as the record keeps it)."""
        k = losses.shape[0]
        x, y, _ = self._batch
        cols: dict[str, Tensor] = {"loss": losses.detach().float().double(), "x": x.expand(k), "y": y.expand(k)}
        for name in ("z1", "h", "y_hat"):
            t = nodes.get(name)
            if t is not None:
                t = t.detach()
                cols[name] = t.double().flatten(1).sum(1) / max(t[0].numel(), 1)
        if "h" in nodes:
            prime = local_derivative(self.kind, nodes["z1"].detach(), nodes["h"].detach(), self.grad_at_zero)
            cols["dh_dz1"] = prime.double().flatten(1).sum(1) / max(prime[0].numel(), 1)
        return cols

    def _relu_columns(self, nodes: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per copy: whether the unit passes a gradient on the batch (its largest ReLU′), and h's non-zeros."""
        z, h = nodes["z1"].detach(), nodes["h"].detach()
        over = list(range(1, h.dim() - 1))  # the samples; the last dim is the unit
        top = max_derivative("relu", z, h, self.grad_at_zero, 0.0, over)  # (K, units): 0 where dead
        numel = h[0].numel()
        return {
            "dead": (top == 0).double().mean(dim=-1),
            "zero": (numel - (h != 0).flatten(1).sum(1).double()) / max(numel, 1),
        }

    def step_rows(
        self,
        step: int,
        live: np.ndarray,
        stepping: np.ndarray,
        losses: Tensor,
        params: list[Tensor],
        grads: list[Tensor | None],
    ) -> None:
        """After the update of ``step``: the rows of the copies ``live`` at it (``stepping``: those updated;
        the others diverged there, no gradient, no update)."""
        if not live.any():
            return
        nodes = self._step_nodes
        cols = self._forward_columns(nodes, losses)
        for name, key in (("y_hat", "dL_dy_hat"), ("h", "dL_dh"), ("z1", "dL_dz1")):
            t = nodes.get(name)
            if t is not None and t.grad is not None:
                cols[key] = t.grad.double().flatten(1).sum(1)
        before = self._before.double()
        nan = torch.full((before.shape[1],), math.nan, dtype=torch.float64, device=before.device)
        for i, name in enumerate(self.params):
            cols[name] = before[i]
            g = grads[i]
            cols[f"dL_d{name}"] = g.detach().reshape(-1).double() if g is not None else nan
            cols[f"{name}_new"] = params[i].detach().reshape(-1).double()
        if self.relu:
            cols.update(self._relu_columns(nodes))
        names = list(cols)
        host = torch.stack([cols[n] for n in names]).cpu().numpy()  # one host copy for the step
        got = dict(zip(names, host))
        which = np.flatnonzero(live)
        self._write(which, self._rows_of(got, which, step, backward_of=stepping), step)
        if self.relu:
            self._relu_step(step, which, got)

    def _rows_of(self, got: dict[str, np.ndarray], which: np.ndarray, step: int, backward_of: np.ndarray | None):
        """The ``backprop/graph`` rows of the copies ``which``: with the backward pass and update where
        ``backward_of`` (and a gradient is finite), else the forward pass only."""
        n = len(which)
        rows = np.full((n, len(self.fields)), math.nan)
        c = self.col
        rows[:, c["batch"]] = self._batch[2]
        for name in ("x", "y", "z1", "h", "y_hat", "loss", "dh_dz1"):
            if name in c and name in got:
                rows[:, c[name]] = got[name][which]
        for name in self.params:
            rows[:, c[name]] = got[name][which]
        if backward_of is None:  # the final forward pass: no gradient, no update, no η (as the record's)
            rows[:, c["backward"]] = 0.0
            return rows
        stepped = backward_of[which]
        grads = np.stack([got[f"dL_d{p}"][which] for p in self.params], axis=1)
        backward = stepped & np.isfinite(grads).any(axis=1)
        rows[:, c["backward"]] = backward
        lrs = self.lrs[which]
        for p in self.params:
            rows[:, c[f"lr_{p}"]] = lrs  # a diverged step has its η too: the optimizer was called
            rows[:, c[f"dL_d{p}"]] = np.where(backward, got[f"dL_d{p}"][which], math.nan)
            rows[:, c[f"{p}_new"]] = np.where(backward, got[f"{p}_new"][which], math.nan)
        for key in ("dL_dy_hat", "dL_dh", "dL_dz1"):
            if key in c and key in got:
                rows[:, c[key]] = np.where(stepped, got[key][which], math.nan)
        return rows

    def final_rows(self, which: np.ndarray, step: int, nodes: dict[str, Tensor], losses: Tensor, params) -> None:
        """The final forward pass (no gradient) of the copies ``which`` (a mask) at ``step``, where they end."""
        if not which.any():
            return
        cols = self._forward_columns(nodes, losses)
        for i, name in enumerate(self.params):
            cols[name] = params[i].detach().reshape(-1).double()
        names = list(cols)
        got = dict(zip(names, torch.stack([cols[n] for n in names]).cpu().numpy()))
        idx = np.flatnonzero(which)
        self._write(idx, self._rows_of(got, idx, step, backward_of=None), step)

    def _write(self, which: np.ndarray, rows: np.ndarray, step: int) -> None:
        self._copy_idx.append(which)
        self._steps.append(np.full(len(which), step, dtype=np.int64))
        self._rows.append(rows)
        if self.graph is not None:
            self.copies.log_copy_events(self.graph.events(which, rows, step))

    # --- the dead-ReLU monitor's numbers ---------------------------------------------------------------

    def _relu_step(self, step: int, which: np.ndarray, got: dict[str, np.ndarray]) -> None:
        dead, zero = got["dead"][which], got["zero"][which]
        alive = dead < 1.0  # the post's one unit: it passed a gradient at this step
        self.copies.log_copy_events(self._batch_tags.events(step, which, np.stack([dead, zero], axis=1)))
        never = self.last_step[which] < 0
        self.first_step[which[never]] = step
        self.last_step[which] = step
        self.last_active[which[alive]] = step
        self.last_dead_fraction[which] = dead
        was = self.is_dead[which]
        now = ~alive
        self.is_dead[which] = now
        for k in which[now & ~was].tolist():
            self.dead_since[k] = step
        for k in which[~now & was].tolist():
            self.dead_since[k] = None
        changed = which[now != was]
        if changed.size and (step + 1) % self.probe_every != 0:
            self._changed = changed  # probed right after this update, at step + 1 (:meth:`after_update`)
        else:
            self._changed = np.empty(0, dtype=np.int64)

    def probe(self, net: nn.Module, which: np.ndarray, step: int) -> None:
        """``relu/probe_dead_fraction/h`` of the copies ``which`` (a mask) at ``step``: the unit is dead on the
        probe set where ReLU′ is 0 on every sample, from one no-grad pass of the stacked network."""
        if not self.relu or self.probe_x is None or not which.any():
            return
        with torch.no_grad():
            p = next(net.parameters())
            net(self.probe_x.to(device=p.device, dtype=p.dtype))  # the probe set where the copies are (a GPU)
            z, h = net.nodes["z1"], net.nodes["h"]
            over = list(range(1, h.dim() - 1))
            passing = passing_fraction("relu", z, h, self.grad_at_zero, 0.0, over).cpu().numpy()  # (K, units)
            dead = (passing == 0).mean(axis=-1, dtype=np.float64)
        idx = np.flatnonzero(which)
        self._probes.append((step, idx, passing[idx]))
        self.copies.log_copy_events(self._probe_tags.events(step, idx, dead[idx]))
        self.last_probe[idx] = step

    def after_update(self, net: nn.Module, step: int) -> None:
        """Right after the update of ``step``: the probe of the copies whose unit died or revived in it."""
        if self._changed.size:
            mask = np.zeros(len(self.lrs), dtype=bool)
            mask[self._changed] = True
            self.probe(net, mask, step + 1)
        self._changed = np.empty(0, dtype=np.int64)

    def end(self, net: nn.Module, which: np.ndarray, step: int) -> None:
        """The copies ``which`` (a mask) end at ``step``: the probe under their last weights (unless taken at
        this step), then ``relu/dead_forever_fraction/h`` at every step they logged."""
        if not self.relu or not which.any():
            return
        self.probe(net, which & (self.last_probe != step), step)
        idx = np.flatnonzero(which & (self.last_step >= 0))
        if not idx.size:
            return
        for s in range(int(self.first_step[idx].min()), int(self.last_step[idx].max()) + 1):
            at = idx[(self.first_step[idx] <= s) & (self.last_step[idx] >= s)]
            if at.size:  # the unit is dead from s on iff its last active step is before s
                self.copies.log_copy_events(self._forever_tags.events(s, at, (self.last_active[at] < s).astype(float)))

    # --- a copy's monitors' state, for its checkpoint -----------------------------------------------------

    def monitor_states(self, k: int) -> dict[str, dict]:
        """What copy k's separate run would keep in its checkpoint from its monitors, each in the format of the
        monitor's own ``load_state_dict`` (``recorder``: :class:`~backprop_lab.monitors.record.StepRecorder`'s
        probe activity and each unit's last active step, not its step history; ``dead_relu``:
        :class:`~backprop_lab.monitors.dead_relu.DeadReLUMonitor`'s), or (``view``) the rows written so far as
        the :class:`~backprop_lab.diagnoses.History` that
        :class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor` keeps as its ``history``."""
        out: dict = {}
        if self.relu and self.last_step[k] >= 0:
            steps = [s for s, idx, _ in self._probes if k in idx]
            activity = [passing[np.flatnonzero(idx == k)[0]] for _, idx, passing in self._probes if k in idx]
            out["recorder"] = {
                "activity_steps": steps,
                "activity": {RELU_LAYER: torch.tensor(np.stack(activity))} if activity else {},
                "last_active": {f"{RELU_LAYER}\x000": torch.tensor([int(self.last_active[k])])},
                "calls_per_pass": {RELU_LAYER: 1},
            }
            out["dead_relu"] = {
                "logged_steps": list(range(int(self.first_step[k]), int(self.last_step[k]) + 1)),
                "dead_since": {RELU_LAYER: self.dead_since[k]},
                "last_dead_fraction": {RELU_LAYER: float(self.last_dead_fraction[k])},
            }
        if self.graph is not None and self._rows:
            mine = [(at[0], rows[idx == k]) for idx, at, rows in zip(self._copy_idx, self._steps, self._rows)]
            written = [(int(step), rows[0]) for step, rows in mine if len(rows)]
            out["view"] = History.from_rows(self.layouts[k], written)
        return out

    # --- the end: each copy's diagnoses -----------------------------------------------------------------

    def diagnoses(self) -> list[list[Diagnosis] | None]:
        """Per copy, :func:`~backprop_lab.diagnoses.diagnose` of its history."""
        k = len(self.lrs)
        if not self._rows:
            return [[] for _ in range(k)]
        copy_idx = np.concatenate(self._copy_idx)
        order = np.argsort(copy_idx, kind="stable")  # each copy's rows in step order
        steps, rows = np.concatenate(self._steps)[order], np.concatenate(self._rows)[order]
        bounds = np.searchsorted(copy_idx[order], np.arange(k + 1))
        out: list[list[Diagnosis] | None] = []
        for j in range(k):
            lo, hi = bounds[j], bounds[j + 1]
            history = History(self.layouts[j], steps=array("q", steps[lo:hi].tobytes()))
            history.values.frombytes(np.ascontiguousarray(rows[lo:hi]).tobytes())
            out.append(diagnose(history))
        return out
