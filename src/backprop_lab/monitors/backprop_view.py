"""BackpropViewMonitor: the data of TensorBoard's Backprop tab (``backprop_lab.tensorboard_plugin``).

At each logged step k it writes what the tab draws, from the parameters *before* the k-th update: the
forward values, the gradients of that backward pass as the optimizer applied them (after clipping, over
every micro-batch) and the update (w, ∂L/∂w, η, and w′ read after the optimizer step, so momentum or
weight decay show as they are). After the last of N updates it writes one more forward pass, at step N
(``backward`` = 0: no gradient, no update). Every number comes from the one
:class:`~backprop_lab.monitors.record.StepRecorder`; this monitor hooks nothing itself.

- The post's networks (``LinearNet``: ŷ = w·x; ``SigmoidNet`` / ``ReLUNet``: z1 = w1·x, h = act(z1),
  ŷ = w2·h) go to the tag ``backprop/graph``: every node's value, every ∂L/∂(node), the local derivative
  of the activation, each parameter's value, gradient, learning rate and new value.
- Any other network with layers of a 2-D weight (``Linear``) goes to ``backprop/layers``, layers in the
  order the forward pass calls them (a reused activation once per call, ``act#0``, ``act#1``): per
  linear layer ‖W‖, ‖∂L/∂W‖, η and the update ratio ‖η·∂L/∂W‖/‖W‖; per ReLU entry the dead fraction
  (the record's definition), per activation entry its number of units.

Each step is one float64 vector tensor whose field names stand, once, in the summary's metadata
(``plugin_data.plugin_name = "backprop"``, ``content`` = the JSON layout); docs/backprop_view.md
lists them. With a batch of several samples a node's value is the batch mean and ∂L/∂(node) the sum over
the batch (what a weight's gradient adds up), so the chain rule reads as a product for a batch of one.

Cost: nothing of its own beyond writing the row; the record makes one host copy per recorded step.
"""

from __future__ import annotations

import functools
import json
import math
from array import array
from collections.abc import Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_TENSOR, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_DOUBLE, DT_FLOAT
from torch import nn

from backprop_lab import models
from backprop_lab.diagnoses import History
from backprop_lab.monitors.common import is_log_step, tensorboard_targets
from backprop_lab.monitors.record import ACTIVATION_KINDS, SATURATING, StepRecord, StepRecorder

PLUGIN_NAME = "backprop"
GRAPH_TAG = "backprop/graph"
LAYERS_TAG = "backprop/layers"
LAYOUT_VERSION = 1
SMALL_NET = 8  # networks of at most this many parameters are recorded at every step by default

ACTIVATIONS = ACTIVATION_KINDS  # the activation's name in the layout, by module type

GRAPH_FIELDS = {
    "linear": ["x", "y", "y_hat", "loss", "dL_dy_hat", "w", "dL_dw", "w_new", "lr_w", "batch", "backward"],
    "hidden": [
        *("x", "y", "z1", "h", "y_hat", "loss", "dh_dz1", "dL_dy_hat", "dL_dh", "dL_dz1"),
        *("w1", "w2", "dL_dw1", "dL_dw2", "w1_new", "w2_new", "lr_w1", "lr_w2", "batch", "backward"),
    ],
}


class BackpropViewMonitor(Callback):
    """Writes the Backprop tab's data for the watched network ``root`` (a submodule name; ``None``: the
    LightningModule's single network child, else the module itself), every ``every_n_steps`` (default:
    every step for a network of at most ``SMALL_NET`` parameters, else the trainer's
    ``log_every_n_steps``, counted from 1 as Lightning counts) and at step 0, to each
    ``TensorBoardLogger`` of the trainer, on global rank 0. Without one it writes nothing. Every number
    is the :class:`~backprop_lab.monitors.record.StepRecorder`'s (``recorder``, or the one shared by the
    trainer's monitors): the gradients are the applied ones (after clipping, over every micro-batch).
    :attr:`history` keeps what it wrote.
    """

    def __init__(self, root: str | None = None, every_n_steps: int | None = None, recorder: StepRecorder | None = None):
        self.root = root
        self.every_n_steps = every_n_steps
        self.recorder = recorder
        self._given = recorder
        self.history: History | None = None
        self._writers: list = []
        self._every = 1
        self._layout: dict | None = None
        self._kind: str | None = None
        self._typecode = "d"
        self._first: set[int] = set()  # ids of the writers that have had the layout
        self._resumed: dict | None = None  # the history of a checkpoint, until training starts
        self._drives = True  # whether this monitor's hooks drive the recorder's step

    def state_dict(self) -> dict:
        """The written history, so a resumed run keeps it: steps and values as two tensors (a checkpoint then
        copies memory, where a list would pickle each number on its own at every checkpoint)."""
        if self.history is None:
            return {}
        steps, values = self.history.steps, self.history.values
        return {
            "layout": self.history.layout,
            "steps": torch.frombuffer(bytearray(steps.tobytes()), dtype=torch.int64) if steps else torch.empty(0),
            "values": torch.frombuffer(bytearray(values.tobytes()), dtype=torch.float64) if values else torch.empty(0),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = state_dict or None

    # --- set-up --------------------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.recorder = recorder = StepRecorder.attach(trainer, pl_module, self.root, self._given)
        net = recorder.net
        n_params = sum(p.numel() for p in net.parameters())
        self._every = self.every_n_steps or (1 if n_params <= SMALL_NET else trainer.log_every_n_steps)
        recorder.record_every(self._every)
        recorder.want_final_pass()
        self._drives = not self.recorder.leads(trainer, self)  # else the recorder's own hooks ran first

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._writers = tensorboard_targets(trainer)  # (writer, the logger gathering a step's values, else None)
        self._layout = None

    # --- a step ----------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._drives:
            self.recorder.batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._drives:
            self.recorder.before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        recorder = self.recorder
        record = (
            recorder.batch_end(trainer, pl_module, outputs, batch, batch_idx) if self._drives else recorder.finished
        )
        if record is not None and (record.step == 0 or is_log_step(trainer, self._every, record.step)):
            self._write_record(trainer, record)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.train_end(trainer, pl_module)
        last = self.recorder.last
        if last is not None and not last.backward and last.step == trainer.global_step:
            self._write_record(trainer, last)  # the forward pass under the trained parameters, at step N

    def _write_record(self, trainer: Trainer, record: StepRecord) -> None:
        if not self._writers:
            return
        if self._layout is None:
            self._start(trainer, record)
            if self._layout is None:
                self._writers = []  # nothing this monitor can draw
                return
        if len(self.history) and self.history.steps[-1] >= record.step:
            return
        row = self._row(record)
        self.history.add(record.step, row)
        self._write(record.step, row)

    def _start(self, trainer: Trainer, record: StepRecord) -> None:
        """The layout, from the first record (the layers in call order), and the summary to fill."""
        net = self.recorder.net
        kind, layout = describe(net, record, trainer)
        if kind is None:
            return
        self._kind, self._layout = kind, layout
        self._row = row_maker(layout)
        self.history = History(layout)
        if self._resumed is not None and self._resumed.get("layout") == layout:  # a resumed run: its history so far
            for kept, saved in (
                (self.history.steps, self._resumed["steps"]),
                (self.history.values, self._resumed["values"]),
            ):
                kept.extend(saved.tolist() if isinstance(saved, torch.Tensor) else saved)  # lists: older checkpoints
        self._metadata = SummaryMetadata(
            summary_description="The Backprop tab's data (backprop_lab.monitors.BackpropViewMonitor)",
            data_class=DATA_CLASS_TENSOR,  # what TensorBoard's data provider serves through read_tensors
            plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=json.dumps(layout).encode("utf-8")),
        )
        shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(layout["fields"]))])
        tag = GRAPH_TAG if kind == "graph" else LAYERS_TAG
        # float32 numbers for a float32 network: half the bytes, and TensorBoard checksums every byte in Python
        double = any(p.dtype == torch.float64 for p in net.parameters())
        self._typecode = "d" if double else "f"
        tensor = TensorProto(dtype=DT_DOUBLE if double else DT_FLOAT, tensor_shape=shape)
        self._summary = Summary(value=[Summary.Value(tag=tag, tensor=tensor)])

    def _write(self, step: int, row: list[float]) -> None:
        value = self._summary.value[0]
        value.tensor.tensor_content = array(self._typecode, row).tobytes()
        for writer, gathers in self._writers:
            # The layout travels with a writer's first event: TensorBoard keeps a tag's first metadata.
            first = id(writer) not in self._first
            if first:
                value.metadata.CopyFrom(self._metadata)
                self._first.add(id(writer))
            if writer.file_writer is None:  # closed
                pass
            elif gathers is not None:  # backprop_lab's TensorBoardLogger: in the step's event with its scalars
                gathers.add_summary(self._summary, step)
            else:
                writer.file_writer.add_summary(self._summary, global_step=step)
            if first:
                value.ClearField("metadata")


# --- the layout and the rows: pure functions of the record ------------------------------------------------


def describe(net: nn.Module, record: StepRecord, trainer: Trainer | None = None) -> tuple[str | None, dict]:
    """("graph" | "layers" | None, the JSON layout of the tag's vector), layers in the record's call order."""
    common = {"version": LAYOUT_VERSION, **(_optimizer(trainer) if trainer is not None else {})}
    if isinstance(net, models.LinearNet):
        return "graph", {**common, "kind": "graph", "model": "linear", "fields": GRAPH_FIELDS["linear"]}
    if isinstance(net, models.HiddenUnitNet):
        activation = ACTIVATIONS.get(type(net.h), type(net.h).__name__)
        extra = {"activation": activation}
        if activation == "relu":
            extra["relu_grad_at_zero"] = int(getattr(net.h, "grad_at_zero", 0))
        if activation == "leaky_relu":
            extra["negative_slope"] = float(net.h.negative_slope)
        return "graph", {**common, "kind": "graph", "model": activation, **extra, "fields": GRAPH_FIELDS["hidden"]}
    layers, fields = [], ["loss"]
    for name, stats in record.layers.items():
        if stats.type == "linear":
            layers.append({"name": name, "type": "linear", "shape": list(stats.shape)})
            fields += [f"{name}/{k}" for k in ("weight_norm", "grad_norm", "lr", "update_ratio")]
        elif stats.kind is not None:
            layers.append({"name": name, "type": stats.kind, "units": stats.units})
            if stats.kind == "relu":
                fields.append(f"{name}/dead_fraction")
    linear = [layer for layer in layers if layer["type"] == "linear"]
    if not linear:
        return None, {}
    widths = [linear[0]["shape"][1]] + [layer["shape"][0] for layer in linear]
    acts = sorted({layer["type"] for layer in layers if layer["type"] != "linear"})
    model = type(net).__name__.lower()
    description = f"{model} {'→'.join(map(str, widths))}" + (f", {'/'.join(acts)}" if acts else "")
    return "layers", {
        **common,
        "kind": "layers",
        "model": model,
        "description": description,
        "layers": layers,
        "fields": fields + ["batch", "backward"],
    }


def view_row(layout: dict, record: StepRecord) -> list[float]:
    """The tag's vector of one step, field by field (NaN where the record has no value)."""
    return row_maker(layout)(record)


def row_maker(layout: dict) -> Callable[[StepRecord], list[float]]:
    """:func:`view_row` for ``layout``, with the place of every field worked out once: what a monitor calls at each
    step (a net of layers reads its record through a short table rather than building a dict of every field)."""
    fields = layout["fields"]
    if layout["kind"] == "graph":
        return functools.partial(_graph_row, fields)
    width = len(fields)
    index = {f: i for i, f in enumerate(fields)}

    def at(field: str) -> int:
        return index.get(field, width)  # a field the layout lacks goes to a spare place, dropped

    head = (at("loss"), at("batch"), at("backward"))
    # (a weight's name, and the places of its layer's weight norm, lr, gradient norm and update ratio)
    linear = [
        (
            f"{layer['name']}.weight",
            *(at(f"{layer['name']}/{k}") for k in ("weight_norm", "lr", "grad_norm", "update_ratio")),
        )
        for layer in layout["layers"]
        if layer["type"] == "linear"
    ]
    relus = [  # (an activation's entry, the place of its dead fraction)
        (layer["name"], index[f"{layer['name']}/dead_fraction"])
        for layer in layout["layers"]
        if layer["type"] != "linear" and f"{layer['name']}/dead_fraction" in index
    ]
    nan = math.nan

    def row(record: StepRecord) -> list[float]:
        out = [nan] * (width + 1)
        out[head[0]], out[head[1]], out[head[2]] = record.loss, float(record.batch), float(record.backward)
        params, backward = record.params, record.backward
        for weight, i_norm, i_lr, i_grad, i_ratio in linear:
            p = params.get(weight)
            if p is None:
                continue
            out[i_norm], out[i_lr] = p.value, p.lr
            if backward:
                out[i_grad], out[i_ratio] = p.grad, p.update_ratio
        layers = record.layers
        for name, i in relus:
            stats = layers.get(name)
            if stats is not None:
                out[i] = stats.dead_fraction
        out.pop()  # the spare place
        return out

    return row


def _graph_row(fields: list[str], record: StepRecord) -> list[float]:
    values: dict[str, float] = {"loss": record.loss, "batch": float(record.batch), "backward": float(record.backward)}
    values.update(x=record.x, y=record.y, y_hat=record.y_hat, dL_dy_hat=record.dL_dy_hat)
    unit = record.layers.get("h")
    if unit is not None:
        values.update(z1=unit.z, h=unit.h, dh_dz1=unit.prime, dL_dh=unit.dL_dh, dL_dz1=unit.dL_dz)
    for name, p in record.params.items():
        values[name], values[f"lr_{name}"] = p.value, p.lr
        if record.backward:
            values[f"dL_d{name}"], values[f"{name}_new"] = p.grad, p.value_new
    return [values.get(f, math.nan) for f in fields]


def history_of(recorder: StepRecorder, trainer: Trainer | None = None, extra: bool = True) -> History | None:
    """The record as a :class:`~backprop_lab.diagnoses.History` in the tab's layout (None where the tab has
    no layout for the network): what the diagnoses read, whatever the loggers. With ``extra``, the layers'
    ``<entry>/saturation`` fields too (sigmoid/tanh layers; the tab's own data does not carry them)."""
    if not recorder.history or recorder.net is None:
        return None
    kind, layout = describe(recorder.net, recorder.history[0], trainer)
    if kind is None:
        return None
    first = recorder.history[0].layers
    saturating = [n for n, s in first.items() if s.kind in SATURATING] if extra and kind == "layers" else []
    if saturating:
        layout = {**layout, "fields": layout["fields"] + [f"{n}/saturation" for n in saturating]}
    rows = []
    make_row = row_maker(layout)
    for record in recorder.history:
        row = make_row(record)
        for n in saturating:
            stats = record.layers.get(n)
            row[layout["fields"].index(f"{n}/saturation")] = stats.saturation if stats is not None else math.nan
        rows.append((record.step, row))
    return History.from_rows(layout, rows)


def _optimizer(trainer: Trainer) -> dict:
    """The optimizer's name and, for the post's figures, its momentum and weight decay."""
    optimizers = trainer.optimizers
    if not optimizers:
        return {}
    opt = optimizers[0]
    group = opt.param_groups[0]
    return {
        "optimizer": type(opt).__name__,
        "momentum": float(group.get("momentum", 0.0) or 0.0),
        "weight_decay": float(group.get("weight_decay", 0.0) or 0.0),
    }
