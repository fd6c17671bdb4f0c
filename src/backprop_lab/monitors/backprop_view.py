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
from tensorboard.compat.proto.types_pb2 import DT_DOUBLE, DT_FLOAT
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


def _reduce(t: Tensor, how: str) -> Tensor:
    """``t`` as a 1-element tensor: itself for one element, else its batch mean (values) or sum (∂L/∂)."""
    if t.numel() == 1:
        return t.reshape(1)
    t = t.double()
    return (t.sum() if how == "sum" else t.mean()).reshape(1)


def _prime(kind: str, z: Tensor, h: Tensor, at_zero: int, slope: float) -> Tensor:
    """dh/dz of the activation, elementwise, from the values the forward pass made."""
    if kind == "sigmoid":
        return h * (1 - h)  # σ′(z) = σ(z)·(1 − σ(z))
    if kind == "relu":
        return ((z >= 0) if at_zero else (z > 0)).double()  # ReLU′(z) = 1 for z > 0, 0 for z < 0, grad_at_zero at 0
    if kind == "leaky_relu":
        return torch.where(z > 0, 1.0, slope).double()
    if kind == "tanh":
        return 1 - h * h
    return torch.full_like(z, math.nan)


def _prime_of_number(kind: str, z: float, h: float, at_zero: int, slope: float) -> float:
    """:func:`_prime` for a batch of one, on the numbers already copied to the host (no more tensor ops)."""
    if kind == "sigmoid":
        return h * (1 - h)
    if kind == "relu":
        return 1.0 if z > 0 or (z == 0 and at_zero) else 0.0
    if kind == "leaky_relu":
        return 1.0 if z > 0 else slope
    if kind == "tanh":
        return 1 - h * h
    return math.nan


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
        self._layout: dict = {}
        self._every = 1
        self._hooks: list = []
        self._names: list[str] = []
        self._params: list[nn.Parameter] = []
        self._linear: list[nn.Module] = []
        self._act = (0, 0.0)  # ReLU′(0) and the leaky slope of the hidden unit
        self._typecode = "d"
        self._first: set[int] = set()  # ids of the writers that have had the layout
        self._last_batch = None
        self._armed = False  # the forward hooks keep values only while a logged step runs
        self._fwd: dict[str, Tensor] = {}  # forward values (and dead counts) the hooks kept
        self._grads: dict[str, Tensor] = {}  # ∂L/∂(node) the tensor hooks kept
        self._resumed: dict | None = None  # the history of a checkpoint, until training starts
        self._clear()

    def state_dict(self) -> dict:
        """The recorded history, so a resumed run's diagnoses cover the whole run."""
        if self.history is None:
            return {}
        return {"layout": self.history.layout, "steps": list(self.history.steps), "values": list(self.history.values)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = state_dict or None

    def _clear(self) -> None:
        self._step: int | None = None  # the step being recorded; None when this one is not
        self._fwd.clear()  # in place: the hooks hold these dicts
        self._grads.clear()
        self._before: Tensor | None = None  # parameters (graph: values, then gradients; layers: norms)
        self._rates: list[float] = []  # the learning rate of each parameter (graph) or linear layer (layers)
        self._has_grad = False

    # --- set-up and tear-down --------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._writers = []
        if not trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        net = pl_module.get_submodule(self.root) if self.root else pl_module
        kind, layout = _describe(net, trainer)
        if kind is None or not writers:
            return
        self._writers, self._net, self._kind, self._layout = writers, net, kind, layout
        named = list(net.named_parameters()) if kind == "graph" else []
        self._names, self._params = [n for n, _ in named], [p for _, p in named]
        act = getattr(net, "h", None)  # the hidden unit's activation (graph kind)
        self._act = (int(getattr(act, "grad_at_zero", 0)), float(getattr(act, "negative_slope", 0.0)))
        self._linear = [
            net.get_submodule(layer["name"]) for layer in layout.get("layers", []) if layer["type"] == "linear"
        ]
        n_params = sum(p.numel() for p in net.parameters())
        self._every = self.every_n_steps or (1 if n_params <= SMALL_NET else trainer.log_every_n_steps)
        self.history = History(layout)
        if self._resumed is not None and self._resumed.get("layout") == layout:  # a resumed run: its history so far
            self.history.steps.extend(self._resumed["steps"])
            self.history.values.extend(self._resumed["values"])
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
        self._add_hooks()

    def _add_hooks(self) -> None:
        """Forward hooks, on for the whole run and idle between logged steps (one flag test). They keep the
        step's first forward pass only, the training one: a probe pass another monitor makes is left out."""
        fwd, grads = self._fwd, self._grads

        def keep_grad(name: str):
            def hook(g: Tensor) -> None:
                grads[name] = g

            return hook

        def on_output(module, inputs, output) -> None:
            if self._armed:
                self._armed = False  # the network's forward pass is over
                fwd["y_hat"] = output
                if output.requires_grad:
                    output.register_hook(keep_grad("y_hat"))

        if self._kind == "graph" and isinstance(self._net, models.HiddenUnitNet):

            def on_act(module, inputs, output) -> None:
                if self._armed:
                    fwd["z1"], fwd["h"] = inputs[0], output
                    if output.requires_grad:
                        output.register_hook(keep_grad("h"))
                        inputs[0].register_hook(keep_grad("z1"))

            self._hooks.append(self._net.h.register_forward_hook(on_act))
        for layer in self._layout.get("layers", []):
            if layer["type"] == "relu":
                module = self._net.get_submodule(layer["name"])
                self._hooks.append(module.register_forward_hook(self._dead_count(layer["name"])))
        self._hooks.append(self._net.register_forward_hook(on_output))

    def _dead_count(self, name: str):
        """A forward hook counting the units of a ReLU layer with h ≤ 0 on every sample of the batch."""
        key = f"{name}/dead_fraction"

        def hook(module, inputs, output: Tensor) -> None:
            if self._armed and key not in self._fwd:
                h = output.detach()
                h = h.reshape(-1, h.shape[-1]) if h.dim() != 2 else h
                # amax over the batch, a float reduction (faster than a boolean any), then a count; no sync
                self._fwd[key] = (h.amax(0) <= 0).sum().reshape(1)

        return hook

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            self._final_pass(trainer, pl_module)
        finally:
            self._remove_hooks()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._armed = False

    # --- a logged step -----------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if not self._writers:
            return
        self._last_batch = batch
        step = trainer.global_step
        if step == 0 or (step + 1) % self._every == 0:  # Lightning's cadence, and the run's start
            self._clear()
            self._step, self._armed = step, True

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        """The parameters before the update and the gradients of this step's backward pass."""
        if self._step is None:
            return
        self._armed = False
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            if self._kind == "graph":
                grads = [p.grad for p in self._params]
                self._has_grad = all(g is not None for g in grads)
                parts = [p.reshape(-1) for p in self._params] + (
                    [g.reshape(-1) for g in grads] if self._has_grad else []
                )
                self._before = torch.cat(parts)  # a copy: the update changes the parameters in place
                self._rates = [float(lr_of.get(id(p), math.nan)) for p in self._params]
            else:
                weights = [m.weight for m in self._linear]
                self._has_grad = all(w.grad is not None for w in weights)
                norms = [torch.linalg.vector_norm(w) for w in weights]
                if self._has_grad:
                    norms += [torch.linalg.vector_norm(w.grad) for w in weights]
                self._before = torch.stack(norms)
                self._rates = [float(lr_of.get(id(w), math.nan)) for w in weights]

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._step is None:
            return
        self._armed = False
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        with torch.no_grad():
            if not isinstance(loss, Tensor) and "y_hat" in self._fwd and hasattr(pl_module, "loss_fn"):
                loss = pl_module.loss_fn(self._fwd["y_hat"], batch[1])  # the step was skipped (a non-finite loss)
            self._record(self._step, batch, loss, after_update=self._before is not None and self._has_grad)
        self._clear()

    def _final_pass(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The forward pass under the trained parameters, at step N (forward values only)."""
        if not self._writers or self._last_batch is None or self.history is None:
            return
        step = trainer.global_step
        if len(self.history) and (self.history.steps[-1] >= step or not math.isfinite(self.history.column("loss")[-1])):
            return  # this step is recorded already (it was not taken), or the run diverged
        self._clear()
        x, y = self._last_batch
        self._armed = True
        try:
            with torch.no_grad():
                loss = pl_module.loss_fn(self._net(x), y) if hasattr(pl_module, "loss_fn") else None
        finally:
            self._armed = False
        self._record(step, self._last_batch, loss, after_update=False)
        self._clear()

    # --- the step's numbers -----------------------------------------------------------------------

    def _record(self, step: int, batch, loss: Tensor | None, after_update: bool) -> None:
        """Every field of the step, copied to the host in one go, into the history and the event files."""
        if len(self.history) and self.history.steps[-1] >= step:
            return  # recorded already (several micro-batches make one step under gradient accumulation)
        names: list[str] = []
        parts: list[Tensor] = []

        def add(name: str, t: Tensor, how: str = "mean") -> None:
            names.append(name)
            parts.append(_reduce(t, how))

        x, y = batch[0], batch[1]
        fwd, grads = self._fwd, self._grads
        if isinstance(loss, Tensor):
            add("loss", loss)
        layout, n_batch = self._layout, len(x)
        if self._kind == "graph":
            add("x", x)
            add("y", y)
            for key in ("z1", "h", "y_hat"):
                if key in fwd:
                    add(key, fwd[key])
            if "z1" in fwd and n_batch > 1:
                add("dh_dz1", _prime(layout["activation"], fwd["z1"], fwd["h"], *self._act))
            for key in ("y_hat", "h", "z1"):
                if key in grads:
                    add(f"dL_d{key}", grads[key], "sum")
            names_p = self._names
            before = self._before if self._before is not None else torch.cat([p.reshape(-1) for p in self._params])
            names += names_p + ([f"dL_d{n}" for n in names_p] if self._before is not None and self._has_grad else [])
            parts.append(before)
            if after_update:
                names += [f"{n}_new" for n in names_p]
                parts += [p.reshape(-1) for p in self._params]
        else:
            linear = [layer["name"] for layer in layout["layers"] if layer["type"] == "linear"]
            if self._before is None:
                self._before = torch.stack([torch.linalg.vector_norm(m.weight) for m in self._linear])
            names += [f"{n}/weight_norm" for n in linear] + (
                [f"{n}/grad_norm" for n in linear] if self._has_grad else []
            )
            parts.append(self._before)
            for key, t in fwd.items():
                if key != "y_hat":
                    names.append(key)
                    parts.append(t)
        # The one host copy of the step (on a GPU, its one device sync).
        values = dict(zip(names, torch.cat(parts).tolist()))  # cat promotes float32, float64 and counts alike
        values["batch"], values["backward"] = float(n_batch), float(after_update or self._has_grad)
        if self._kind == "graph":
            for name, rate in zip(self._names, self._rates):
                values[f"lr_{name}"] = rate
            if "z1" in values and "dh_dz1" not in values:
                values["dh_dz1"] = _prime_of_number(layout["activation"], values["z1"], values["h"], *self._act)
        else:
            for layer in layout["layers"]:
                name = layer["name"]
                if layer["type"] == "linear":
                    rate = self._rates[linear.index(name)] if self._rates else math.nan
                    w, g = values.get(f"{name}/weight_norm", math.nan), values.get(f"{name}/grad_norm", math.nan)
                    values[f"{name}/lr"] = rate
                    values[f"{name}/update_ratio"] = rate * g / w if w > 0 else math.nan  # ‖η·g‖/‖w‖
                elif f"{name}/dead_fraction" in values:
                    values[f"{name}/dead_fraction"] /= layer["units"] or math.nan
        row = [values.get(field, math.nan) for field in layout["fields"]]
        self.history.add(step, row)
        self._write(step, row)

    def _write(self, step: int, row: list[float]) -> None:
        value = self._summary.value[0]
        value.tensor.tensor_content = array(self._typecode, row).tobytes()
        for writer in self._writers:
            # The layout travels with a writer's first event: TensorBoard keeps a tag's first metadata.
            first = id(writer) not in self._first
            if first:
                value.metadata.CopyFrom(self._metadata)
                self._first.add(id(writer))
            if writer.file_writer is not None:  # None once the writer is closed
                writer.file_writer.add_summary(self._summary, global_step=step)
            if first:
                value.ClearField("metadata")


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
