"""BackpropViewMonitor: the data of TensorBoard's Backprop tab (``backprop_lab.tensorboard_plugin``).

At each logged step k it records what the tab draws, computed from the parameters *before* the k-th
update: the forward values, the gradients of that backward pass (as ``on_before_optimizer_step`` sees
them) and the update (w, ∂L/∂w, η, and w′ read after the optimizer step, so momentum or weight decay
show as they are). After the last of N updates it records one more forward pass, at step N.

- The post's networks (``LinearNet``: ŷ = w·x; ``SigmoidNet`` / ``ReLUNet``: z1 = w1·x, h = act(z1),
  ŷ = w2·h) go to the tag ``backprop/graph``: every node's value, every ∂L/∂(node), the local derivative
  of the activation, each parameter's value, gradient, learning rate and new value.
- Any other chain of linear and activation modules under ``root`` (the ``MLP``) goes to
  ``backprop/layers``: per linear layer ‖W‖, ‖∂L/∂W‖, η and the update ratio ‖η·∂L/∂W‖/‖W‖; per ReLU
  layer the dead fraction (units with h ≤ 0 on every sample of the batch), first layer to last.

Each step is one float64 vector tensor whose field names stand, once, in the summary's metadata
(``plugin_data.plugin_name = "backprop"``, ``content`` = the JSON layout); docs/backprop_view.md
lists them. With a batch of several samples a node's value is the batch mean and ∂L/∂(node) the sum over
the batch (what a weight's gradient adds up), so the chain rule reads as a product for a batch of one.

Cost: one host copy per logged step (a ``torch.cat`` of the step's numbers, then ``tolist``); on the
steps between, nothing but a modulo. Hooks are put on only for a logged step and taken off after it.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Mapping

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.compat.proto.summary_pb2 import DATA_CLASS_TENSOR, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.compat.proto.types_pb2 import DT_DOUBLE
from torch import Tensor, nn

from backprop_lab import models
from backprop_lab.diagnoses import History

PLUGIN_NAME = "backprop"
GRAPH_TAG = "backprop/graph"
LAYERS_TAG = "backprop/layers"
LAYOUT_VERSION = 1
SMALL_NET = 8  # networks of at most this many parameters are recorded at every step by default

ACTIVATIONS: dict[type[nn.Module], str] = {
    models.Sigmoid: "sigmoid",
    models.ReLU: "relu",
    models.LeakyReLU: "leaky_relu",
    nn.Sigmoid: "sigmoid",
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Tanh: "tanh",
}

GRAPH_FIELDS = {
    "linear": ["x", "y", "y_hat", "loss", "dL_dy_hat", "w", "dL_dw", "w_new", "lr_w", "batch", "backward"],
    "hidden": [
        *("x", "y", "z1", "h", "y_hat", "loss", "dh_dz1", "dL_dy_hat", "dL_dh", "dL_dz1"),
        *("w1", "w2", "dL_dw1", "dL_dw2", "w1_new", "w2_new", "lr_w1", "lr_w2", "batch", "backward"),
    ],
}


def _scalar(t: Tensor, how: str = "mean") -> Tensor:
    """A one-element view of ``t``: itself for one element, else its batch mean (or sum)."""
    t = t.detach()
    if t.numel() == 1:
        return t.reshape(1)
    t = t.double()
    return (t.sum() if how == "sum" else t.mean()).reshape(1)


def _local_derivative(act: nn.Module, z: Tensor, h: Tensor) -> Tensor:
    """dh/dz of the activation, elementwise, from the values the forward pass made."""
    kind = ACTIVATIONS.get(type(act))
    if kind == "sigmoid":
        return h * (1 - h)  # σ′(z) = σ(z)·(1 − σ(z))
    if kind == "relu":
        at_zero = getattr(act, "grad_at_zero", 0)
        return (z >= 0) if at_zero else (z > 0)  # ReLU′(z) = 1 for z > 0, 0 for z < 0, grad_at_zero at 0
    if kind == "leaky_relu":
        return torch.where(z > 0, 1.0, act.negative_slope)
    if kind == "tanh":
        return 1 - h * h
    return torch.full_like(z, math.nan)


class BackpropViewMonitor(Callback):
    """Writes the Backprop tab's data for the network at ``root`` of the LightningModule (``None``: the
    LightningModule itself), every ``every_n_steps`` (default: every step for a network of at most
    ``SMALL_NET`` parameters, else the trainer's ``log_every_n_steps``, counted from 1 as Lightning counts)
    and at step 0, to each ``TensorBoardLogger`` of the trainer, on global rank 0. Without one it does
    nothing. :attr:`history` keeps what it wrote, for :func:`backprop_lab.diagnoses.diagnose`.
    """

    def __init__(self, root: str | None = "net", every_n_steps: int | None = None):
        self.root = root
        self.every_n_steps = every_n_steps
        self.history: History | None = None
        self._writers: list = []
        self._net: nn.Module | None = None
        self._kind: str | None = None  # "graph" | "layers" | None (nothing this monitor can draw)
        self._every = 1
        self._tag = ""
        self._layout: dict = {}
        self._first: set[int] = set()  # ids of the writers that have the layout already
        self._summary: Summary | None = None
        self._reset_step()
        self._last_batch = None

    def _reset_step(self) -> None:
        self._step: int | None = None  # the step being recorded, None when this one is not
        self._handles: list = []
        self._fwd: dict[str, Tensor] = {}
        self._grads: dict[str, Tensor] = {}
        self._before: dict[str, Tensor | float] = {}

    # --- set-up ------------------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._writers = []
        if not trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        net = pl_module.get_submodule(self.root) if self.root else pl_module
        self._net = net
        self._kind, self._layout = _describe(net, trainer)
        if self._kind is None or not writers:
            return
        self._writers = writers
        n_params = sum(p.numel() for p in net.parameters())
        self._every = self.every_n_steps or (1 if n_params <= SMALL_NET else trainer.log_every_n_steps)
        self._tag = GRAPH_TAG if self._kind == "graph" else LAYERS_TAG
        self.history = History(self._layout)
        metadata = SummaryMetadata(
            summary_description="The Backprop tab's data (backprop_lab.monitors.BackpropViewMonitor)",
            data_class=DATA_CLASS_TENSOR,  # what TensorBoard's data provider serves through read_tensors
            plugin_data=SummaryMetadata.PluginData(
                plugin_name=PLUGIN_NAME, content=json.dumps(self._layout).encode("utf-8")
            ),
        )
        shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(self._layout["fields"]))])
        self._metadata = metadata
        self._summary = Summary(value=[Summary.Value(tag=self._tag, tensor=TensorProto(dtype=DT_DOUBLE, tensor_shape=shape))])

    def _due(self, step: int) -> bool:
        return step == 0 or (step + 1) % self._every == 0

    # --- a logged step -----------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if not self._writers:
            return
        self._last_batch = batch
        self._reset_step()
        step = trainer.global_step
        if self._due(step):
            self._step = step
            self._hook(record_grads=True)

    def _hook(self, record_grads: bool) -> None:
        """Forward hooks that keep the values the tab draws (and, in training, their gradients)."""
        fwd, grads = self._fwd, self._grads

        def keep_grad(name: str):
            def hook(g: Tensor) -> None:
                grads[name] = g

            return hook

        def on_output(module, inputs, output) -> None:
            fwd["y_hat"] = output
            if record_grads and output.requires_grad:
                output.register_hook(keep_grad("y_hat"))
            for handle in self._handles:  # one forward pass a step: off again at once
                handle.remove()
            self._handles = []

        if self._kind == "graph":
            if isinstance(self._net, models.HiddenUnitNet):

                def on_act(module, inputs, output) -> None:
                    fwd["z1"], fwd["h"] = inputs[0], output
                    if record_grads and output.requires_grad:
                        output.register_hook(keep_grad("h"))
                        inputs[0].register_hook(keep_grad("z1"))

                self._handles.append(self._net.h.register_forward_hook(on_act))
        else:
            for layer in self._layout["layers"]:
                if layer["type"] == "relu":
                    self._handles.append(self._net.get_submodule(layer["name"]).register_forward_hook(_dead_count(fwd, layer["name"])))
        self._handles.append(self._net.register_forward_hook(on_output))

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._step is None:
            return
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        before = self._before
        with torch.no_grad():
            if self._kind == "graph":
                for name, p in self._net.named_parameters():
                    before[name] = p.detach().reshape(1).clone()  # the update changes p in place
                    before[f"dL_d{name}"] = p.grad.detach().reshape(1).clone() if p.grad is not None else math.nan
                    before[f"lr_{name}"] = float(lr_of.get(id(p), math.nan))
            else:
                for layer in self._layout["layers"]:
                    if layer["type"] != "linear":
                        continue
                    w = self._net.get_submodule(layer["name"]).weight
                    name = layer["name"]
                    before[f"{name}/weight_norm"] = torch.linalg.vector_norm(w.detach()).reshape(1)
                    g = w.grad
                    before[f"{name}/grad_norm"] = torch.linalg.vector_norm(g.detach()).reshape(1) if g is not None else math.nan
                    before[f"{name}/lr"] = float(lr_of.get(id(w), math.nan))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._step is None:
            return
        for handle in self._handles:
            handle.remove()
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is None and "y_hat" in self._fwd and hasattr(pl_module, "loss_fn"):
            with torch.no_grad():  # training_step skipped the update (e.g. a non-finite loss): the loss anew
                loss = pl_module.loss_fn(self._fwd["y_hat"], batch[1])
        backward = any(isinstance(v, Tensor) for k, v in self._before.items() if "grad" in k or k.startswith("dL_d"))
        if not self._before:  # no optimizer step was taken: the parameters as they are
            self._before = self._parameters()
        values = self._values(batch, loss, backward=backward)
        self._write(self._step, values)
        self._reset_step()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The forward pass under the trained parameters, at step N (forward values only)."""
        if not self._writers or self._last_batch is None or self.history is None:
            return
        step = trainer.global_step
        if len(self.history) and (self.history.steps[-1] >= step or not math.isfinite(self.history.column("loss")[-1])):
            return  # already recorded (a step that was not taken), or diverged: no further pass
        self._reset_step()
        x, y = self._last_batch
        self._hook(record_grads=False)
        with torch.no_grad():
            y_hat = self._net(x)
            loss = pl_module.loss_fn(y_hat, y) if hasattr(pl_module, "loss_fn") else None
        for handle in self._handles:
            handle.remove()
        self._before = self._parameters()
        self._write(step, self._values(self._last_batch, loss, backward=False))
        self._reset_step()

    # --- the step's numbers -----------------------------------------------------------------------

    def _parameters(self) -> dict[str, Tensor]:
        """The parameters as they are now: values (graph) or weight norms (layers), without gradients."""
        with torch.no_grad():
            if self._kind == "graph":
                return {name: p.detach().reshape(1).clone() for name, p in self._net.named_parameters()}
            return {
                f"{layer['name']}/weight_norm": torch.linalg.vector_norm(self._net.get_submodule(layer["name"]).weight.detach()).reshape(1)
                for layer in self._layout["layers"]
                if layer["type"] == "linear"
            }

    def _values(self, batch, loss: Tensor | None, backward: bool) -> dict[str, Tensor | float]:
        """Every field of the step as a one-element tensor (copied to the host together) or a number."""
        fwd, grads = self._fwd, self._grads
        x = batch[0]
        v: dict[str, Tensor | float] = {"loss": _scalar(loss) if isinstance(loss, Tensor) else math.nan}
        if self._kind == "graph":
            v["x"], v["y"] = _scalar(x), _scalar(batch[1])
            if "z1" in fwd:
                z1, h = fwd["z1"].detach(), fwd["h"].detach()
                v["z1"], v["h"] = _scalar(z1), _scalar(h)
                v["dh_dz1"] = _scalar(_local_derivative(self._net.h, z1, h))
            if "y_hat" in fwd:
                v["y_hat"] = _scalar(fwd["y_hat"])
            for name, g in grads.items():
                v[f"dL_d{name}"] = _scalar(g, "sum")
            v.update(self._before)
            if backward:
                for name, p in self._net.named_parameters():
                    v[f"{name}_new"] = p.detach().reshape(1)
        else:
            v.update(self._before)
            v.update({k: t for k, t in fwd.items() if k != "y_hat"})
        v["batch"], v["backward"] = float(len(x)), float(backward)
        return v

    def _write(self, step: int, values: dict[str, Tensor | float]) -> None:
        names = [k for k, t in values.items() if isinstance(t, Tensor)]
        if names:
            # The one host copy of the step (a device sync on a GPU).
            numbers = dict(zip(names, torch.cat([values[k].reshape(1) for k in names]).tolist()))
        else:
            numbers = {}
        row = []
        for field in self._layout["fields"]:
            value = numbers.get(field, values.get(field, math.nan))
            row.append(float(value) if not isinstance(value, Tensor) else math.nan)
        if self._kind == "layers":
            row = self._layer_ratios(row)
        self.history.add(step, row)
        value = self._summary.value[0]
        value.tensor.tensor_content = array("d", row).tobytes()
        for writer in self._writers:
            # The layout travels with the first event of each writer; TensorBoard keeps a tag's first metadata.
            first = id(writer) not in self._first
            if first:
                value.metadata.CopyFrom(self._metadata)
                self._first.add(id(writer))
            if writer.file_writer is not None:  # None once the writer is closed
                writer.file_writer.add_summary(self._summary, global_step=step)
            if first:
                value.ClearField("metadata")

    def _layer_ratios(self, row: list[float]) -> list[float]:
        """Fill in the update ratios ‖η·g‖/‖w‖ and turn dead counts into fractions, in Python (no more ops)."""
        at = {f: j for j, f in enumerate(self._layout["fields"])}
        for layer in self._layout["layers"]:
            name = layer["name"]
            if layer["type"] == "linear":
                w, g, lr = (row[at[f"{name}/{k}"]] for k in ("weight_norm", "grad_norm", "lr"))
                row[at[f"{name}/update_ratio"]] = lr * g / w if w > 0 else math.nan
            elif f"{name}/dead_fraction" in at:
                j = at[f"{name}/dead_fraction"]
                row[j] = row[j] / layer["units"] if layer.get("units") else math.nan
        return row


def _dead_count(fwd: dict[str, Tensor], name: str):
    """A forward hook counting the units of a ReLU layer with h ≤ 0 on every sample of the batch."""

    def hook(module, inputs, output: Tensor) -> None:
        h = output.detach()
        h = h.reshape(-1, h.shape[-1]) if h.dim() != 2 else h
        # amax over the batch: one float reduction (a boolean any() is slower), then a count (no sync)
        fwd[f"{name}/dead_fraction"] = (h.amax(0) <= 0).sum().reshape(1)

    return hook


def _describe(net: nn.Module, trainer: Trainer) -> tuple[str | None, dict]:
    """("graph" | "layers" | None, the JSON layout of the tag's vector)."""
    common = {"version": LAYOUT_VERSION, **_optimizer(trainer)}
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
    for name, module in net.named_modules():
        if not name or any(True for _ in module.children()):
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() == 2:
            layers.append({"name": name, "type": "linear", "shape": list(weight.shape)})
            fields += [f"{name}/{k}" for k in ("weight_norm", "grad_norm", "lr", "update_ratio")]
        elif type(module) in ACTIVATIONS:
            units = layers[-1]["shape"][0] if layers and layers[-1]["type"] == "linear" else None
            layers.append({"name": name, "type": ACTIVATIONS[type(module)], "units": units})
            if layers[-1]["type"] == "relu":
                fields.append(f"{name}/dead_fraction")
    if not any(layer["type"] == "linear" for layer in layers):
        return None, {}
    widths = [layers[0]["shape"][1]] + [layer["shape"][0] for layer in layers if layer["type"] == "linear"]
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
