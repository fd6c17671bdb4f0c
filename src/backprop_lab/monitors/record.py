"""StepRecorder: the one record of a training step that every monitor, the Backprop tab and the diagnoses read.

It is the only component that hooks the watched network. Once per training step it keeps, in the order
the forward pass calls them:

- per parameter ``<name>``: its value before the update (the number itself for a one-element parameter,
  else its L2 norm), the gradient **as backprop computed it** (``grad_backprop``: read in
  ``on_before_optimizer_step``: over the micro-batches of ``accumulate_grad_batches`` the sum of the gradients of
  each loss divided by k (Lightning's), so their mean; before
  Lightning's ``gradient_clip_val``) and **as the optimizer applied it** (``grad``: read after the
  update, so after clipping), the value after the update, the learning rate η of its param group and
  the update ratio ‖η·g‖/‖w‖ (g the applied gradient);
- per *call* of a module (a module called twice per forward pass gives two entries, ``act#0`` and
  ``act#1``; a module called once keeps its plain name): for activation modules the dead fraction,
  the zero fraction and (sigmoid, tanh) the saturation, over every micro-batch of the step.

**Units.** A unit is an index along ``unit_dim`` of the activation; every other dim is a sample. By
default ``unit_dim`` is the feature axis: dim 1 for a feature map (a tensor of 3 or more dims whose last
layer with parameters before it is a convolution or a normalisation over channels), else the last dim
(a ``Linear``-style activation on (batch, …, features), e.g. (batch, tokens, features)). Pass an int for
every activation, or a dict ``{entry or module name: dim}``.

**Dead, saturated.** A unit is *dead* on a step when the activation's local derivative is 0 on every
sample of the step, so no gradient passes it back: for ReLU, z < 0, or z ≤ 0 where ReLU′(0) = 0 (the
module's ``grad_at_zero``, backprop-lab's ``model.relu_grad_at_zero``; ``torch.nn.ReLU`` has
ReLU′(0) = 0); a leaky unit (slope a > 0) is never dead; σ and tanh only where σ′ rounds to 0. A
sigmoid/tanh unit is *saturated* when its derivative is below ``saturation_threshold`` on every sample.
:func:`local_derivative` is that definition, the only one: every reader counts with it.

**When.** Activation counts are taken at every training step (device reductions, no sync), so
"dead from step s on" holds across every step. Everything else is read, and copied to the host in one
``tolist`` per step, at the recorded steps: step 0, the steps ``(k + 1) % n == 0`` for the trainer's
``log_every_n_steps`` (Lightning's cadence) and for any interval a reader asks for
(:meth:`StepRecorder.record_every`), and a step that stops the run. :attr:`StepRecorder.history`
holds the records.

**Functional activations.** An activation called as a function in a ``forward`` (``F.relu``,
``torch.sigmoid``, ``x.tanh()``) has no module to hook. The first training forward pass runs under a
``torch.overrides.TorchFunctionMode`` that notices such calls, and the recorder names them in one
warning.

The monitors find a shared recorder with :meth:`StepRecorder.attach` (one per trainer and watched
module) or take the one you pass them. A monitor that Lightning calls after the recorder (a callback of the
trainer, or a :class:`~backprop_lab.monitors.group.MonitorGroup`'s member, that comes earlier) reads the step it
took (:attr:`StepRecorder.finished`); otherwise each drives it from its own hooks, and every step is taken once
whichever callback comes first.
"""

from __future__ import annotations

import functools
import math
import weakref
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from backprop_lab import models
from backprop_lab.diagnoses import SATURATION_THRESHOLD
from backprop_lab.monitors.common import all_callbacks, is_log_step

# SATURATION_THRESHOLD (σ′ < 1e-3 where |z| > 6.9, tanh′ where |z| > 3.8) is the diagnoses' own: one number for both.

# The activation modules the recorder knows, by kind. Kinds with a local derivative computed from the
# forward values get dead/saturation counts; the others (gelu, silu, elu, softplus) the zero fraction only.
ACTIVATION_KINDS: dict[type[nn.Module], str] = {
    models.ReLU: "relu",
    nn.ReLU: "relu",
    models.LeakyReLU: "leaky_relu",
    nn.LeakyReLU: "leaky_relu",
    models.Sigmoid: "sigmoid",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.ELU: "elu",
    nn.Softplus: "softplus",
}
SATURATING = ("sigmoid", "tanh")
RELU_KINDS = ("relu", "leaky_relu")
# Layers whose output's dim 1 is the channel axis: the units of a feature map that follows them.
CHANNEL_LAYERS = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.GroupNorm,
)  # fmt: skip
# What a call of a torch function named so is: an activation (for the one warning about functional ones).
FUNCTIONAL_ACTIVATIONS = {
    *("relu", "relu_", "leaky_relu", "leaky_relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu"),
    *("elu", "selu", "celu", "softplus", "relu6", "hardtanh", "mish", "hardswish", "hardsigmoid"),
}


def activation_kind(module: nn.Module) -> str | None:
    return ACTIVATION_KINDS.get(type(module))


def local_derivative(
    kind: str, z: Tensor | None, h: Tensor, grad_at_zero: int = 0, slope: float = 0.0
) -> Tensor | None:
    """dh/dz of the activation, elementwise, from the values of the forward pass: the one definition of
    "dead" (0 on every sample) and "saturated" (below a threshold on every sample). None where the kind
    has no closed form here (gelu, silu, …)."""
    if kind == "relu":
        if grad_at_zero and z is not None:
            return (z >= 0).to(h.dtype)  # ReLU′(0) = 1
        return _positive(h)  # ReLU′(0) = 0, as torch's: h > 0 ⇔ z > 0 (and right after an in-place ReLU)
    if kind == "leaky_relu":
        if slope == 0:
            return _positive(h)
        return torch.where(h > 0, 1.0, slope).to(h.dtype)
    if kind == "sigmoid":
        return h * (1 - h)  # σ′(z) = σ(z)·(1 − σ(z))
    if kind == "tanh":
        return 1 - h * h  # tanh′(z) = 1 − tanh²(z)
    return None


def _positive(h: Tensor) -> Tensor:
    """1 where ``h`` > 0, else 0 (−0 and NaN too), in ``h``'s dtype: ``(h > 0).to(h.dtype)``'s numbers in two float ops
    (torch's sign is (0 < h) − (h < 0), so 0 for NaN and −0), a quarter of its time on a CPU at every size: the
    comparison writes a bool mask that is then converted."""
    return torch.sign(h).clamp_(min=0)


def max_derivative(
    kind: str,
    z: Tensor | None,
    h: Tensor,
    grad_at_zero: int,
    slope: float,
    over: list[int],
    prime: Tensor | None = None,
) -> Tensor | None:
    """Per unit, the largest local derivative over the samples (dims ``over``), by the definition of
    :func:`local_derivative`: 0 for a dead unit, below the threshold for a saturated one. One reduction:
    for ReLU the derivative is 1 where h > 0 (ReLU′(0) = 0) or z ≥ 0 (ReLU′(0) = 1), so the largest h
    (or z) says it; a leaky unit (a > 0) always passes, its largest derivative is 1 wherever h > 0 else a."""
    if kind in ("relu", "leaky_relu"):
        if grad_at_zero and z is not None and kind == "relu":
            top, alive = (z.amax(dim=over) if over else z), 0.0  # ReLU′(z) = 1 for z ≥ 0
            return (top >= alive).to(h.dtype)
        top = h.amax(dim=over) if over else h
        if kind == "leaky_relu" and slope != 0:
            return torch.where(top > 0, 1.0, slope).to(h.dtype)
        return (top > 0).to(h.dtype)
    if prime is None:
        prime = local_derivative(kind, z, h, grad_at_zero, slope)
    if prime is None:
        return None
    return prime.amax(dim=over) if over else prime


def passing_fraction(kind: str, z: Tensor | None, h: Tensor, grad_at_zero: int, slope: float, over: list[int]):
    """Per unit, the fraction of samples on which the local derivative is not 0 (a probe set's activity)."""
    prime = local_derivative(kind, z, h, grad_at_zero, slope)
    if prime is None:
        return None
    already_0_or_1 = kind == "relu" or (kind == "leaky_relu" and slope == 0)
    if not already_0_or_1:
        # prime != 0 as 0/1 (NaN counts as ≠ 0, so it is made 1 before torch's sign, which takes NaN to 0), in place
        # on the fresh ``prime``: a fifth of the time of the comparison and its conversion from bool on a CPU
        prime = prime.nan_to_num_(nan=1.0).abs_().sign_()
    passing = prime.to(torch.float32)
    return passing.mean(dim=over) if over else passing


def default_root(pl_module: nn.Module) -> nn.Module:
    """The network a monitor watches by default: the LightningModule's single child with parameters
    (``self.net``, ``self.seq``) when all its parameters are there, else the LightningModule itself."""
    children = [c for c in pl_module.children() if any(True for _ in c.parameters())]
    if len(children) == 1:
        own = sum(p.numel() for p in pl_module.parameters())
        if own == sum(p.numel() for p in children[0].parameters()):
            return children[0]
    return pl_module


def resolve_root(pl_module: nn.Module, root: str | None) -> nn.Module:
    """The submodule named ``root``, or for ``None`` the :func:`default_root`."""
    return pl_module.get_submodule(root) if root else default_root(pl_module)


def is_callable(net: nn.Module) -> bool:
    """Whether ``net(x)`` runs a forward pass (a LightningModule without ``forward`` does not)."""
    return not (isinstance(net, LightningModule) and type(net).forward is LightningModule.forward)


# --- the record --------------------------------------------------------------------------------------


@dataclass(slots=True)  # made per step: slots make that and reading it cheaper
class ParamStats:
    """One parameter at one step: numbers for a one-element parameter, L2 norms for a larger one."""

    value: float  # before the update
    grad_backprop: float  # ∂L/∂w as backprop computed it (every micro-batch, before clipping); NaN: none
    grad: float  # ∂L/∂w as the optimizer applied it (after clipping); NaN: no update
    value_new: float  # after the update, for a one-element parameter (NaN for a larger one: see update_ratio)
    lr: float  # η of the param group holding it; NaN: in none
    numel: int
    module: str  # the name of the module that owns it

    @property
    def update_ratio(self) -> float:
        """‖η·g‖/‖w‖ with g the applied gradient (NaN while ‖w‖ = 0 or without a gradient)."""
        ratio = abs(self.lr * self.grad / self.value) if self.value != 0 else math.nan
        return ratio if math.isfinite(ratio) else math.nan


@dataclass(slots=True)
class LayerStats:
    """One call of a module at one step, in call order."""

    module: str  # the module's name (the entry's name without ``#k``)
    type: str  # an activation kind, "linear" (a 2-D weight), or the module's class name
    shape: list[int] | None = None  # the weight's shape, for layers with a weight
    kind: str | None = None  # the activation kind; None for other layers
    unit_dim: int | None = None
    units: int | None = None
    dead_fraction: float = math.nan  # units whose derivative is 0 on every sample (kinds with a derivative)
    zero_fraction: float = math.nan  # activations exactly 0
    saturation: float = math.nan  # sigmoid/tanh: units whose derivative is below the threshold on every sample
    # the batch means of z, h and dh/dz, and the batch sums of ∂L/∂h and ∂L/∂z (with detail, else NaN)
    z: float = math.nan
    h: float = math.nan
    prime: float = math.nan
    dL_dh: float = math.nan
    dL_dz: float = math.nan


@dataclass(slots=True)
class StepRecord:
    """Everything recorded at one step: the parameters before the ``step``-th update, the gradient it applies."""

    step: int
    backward: bool  # a backward pass and an update belong to this record (False: the final forward pass)
    batch: int  # samples in the step's batch (every micro-batch)
    loss: float
    params: dict[str, ParamStats] = field(default_factory=dict)  # in the network's order
    layers: dict[str, LayerStats] = field(default_factory=dict)  # in call order
    # with detail: the batch means of x, y and the network's output ŷ, and the sum of ∂L/∂ŷ
    x: float = math.nan
    y: float = math.nan
    y_hat: float = math.nan
    dL_dy_hat: float = math.nan


_RECORD_NUMBERS = ("step", "backward", "batch", "loss", "x", "y", "y_hat", "dL_dy_hat")
_PARAM_NUMBERS = ("value", "grad_backprop", "grad", "value_new", "lr", "numel")
_LAYER_NUMBERS = (
    "unit_dim",
    "units",
    "dead_fraction",
    "zero_fraction",
    "saturation",
    "z",
    "h",
    "prime",
    "dL_dh",
    "dL_dz",
)
_RECORD_GET, _PARAM_GET, _LAYER_GET = (
    attrgetter(*names) for names in (_RECORD_NUMBERS, _PARAM_NUMBERS, _LAYER_NUMBERS)
)


def _signature(r: StepRecord) -> tuple[list, list]:
    """What a segment's records share: each parameter's name and module, each entry's name, module, type, kind
    and weight shape."""
    return (
        [(n, p.module) for n, p in r.params.items()],
        [(n, s.module, s.type, s.kind, s.shape) for n, s in r.layers.items()],
    )


def _pack_row(r: StepRecord, segments: list[dict], signature: tuple[list, list] | None = None) -> None:
    """Add ``r`` to ``segments``: stretches of records with the same parameters and entries (``signature``,
    worked out from ``r`` where not given), each a flat array of doubles (a checkpoint then copies memory,
    however long the run)."""
    params, layers = signature if signature is not None else _signature(r)
    last = segments[-1] if segments else None
    if (
        last is None
        or not (last["params"] is params and last["layers"] is layers)
        and (last["params"] != params or last["layers"] != layers)
    ):
        segments.append({"params": params, "layers": layers, "rows": array("d")})
    row = segments[-1]["rows"]
    row.extend(_RECORD_GET(r))
    for p in r.params.values():
        row.extend(_PARAM_GET(p))
    for s in r.layers.values():
        values = _LAYER_GET(s)
        row.extend(values if None not in values else [math.nan if v is None else v for v in values])


def _width(seg: dict) -> int:
    return len(_RECORD_NUMBERS) + len(seg["params"]) * len(_PARAM_NUMBERS) + len(seg["layers"]) * len(_LAYER_NUMBERS)


def _pack(segments: list[dict]) -> list[dict]:
    """The segments as checkpoint data: each array of doubles as a (records, numbers) float64 tensor."""
    out = []
    for seg in segments:
        rows = (
            torch.frombuffer(bytearray(seg["rows"].tobytes()), dtype=torch.float64) if seg["rows"] else torch.empty(0)
        )
        out.append({**seg, "rows": rows.reshape(-1, _width(seg))})
    return out


def _unpack(segments: list[dict]) -> list[StepRecord]:
    history = []
    for seg in segments:
        for row in seg["rows"].reshape(-1, _width(seg)).tolist():
            head = dict(zip(_RECORD_NUMBERS, row))
            r = StepRecord(step=int(head.pop("step")), backward=bool(head.pop("backward")), batch=int(head.pop("batch")),
                           **head)  # fmt: skip
            i = len(_RECORD_NUMBERS)
            for name, module in seg["params"]:
                values = dict(zip(_PARAM_NUMBERS, row[i : i + len(_PARAM_NUMBERS)]))
                values["numel"] = int(values["numel"])
                r.params[name] = ParamStats(module=module, **values)
                i += len(_PARAM_NUMBERS)
            for name, module, typ, kind, shape in seg["layers"]:
                values = dict(zip(_LAYER_NUMBERS, row[i : i + len(_LAYER_NUMBERS)]))
                for k in ("unit_dim", "units"):
                    values[k] = None if math.isnan(values[k]) else int(values[k])
                r.layers[name] = LayerStats(module=module, type=typ, kind=kind, shape=shape, **values)
                i += len(_LAYER_NUMBERS)
            history.append(r)
    return history


class _Counts:
    """One entry's device-side counts over the forward passes of one step (every micro-batch)."""

    __slots__ = ("numel", "units", "nonzero", "max_prime", "passing", "sums", "grads")

    def __init__(self, units: int):
        self.units = units
        self.numel = 0
        self.nonzero: Tensor | None = None
        self.max_prime: Tensor | None = None  # per unit: the largest derivative (0: dead; < threshold: saturated)
        self.passing: Tensor | None = None  # ReLU, recorded steps: per unit, the samples with ReLU′ ≠ 0 (h > 0)
        self.sums: dict[str, Tensor] = {}  # detail: sums of z, h, dh/dz
        self.grads: dict[str, Tensor] = {}  # detail: sums of ∂L/∂h, ∂L/∂z

    def add(self, key: str, value: Tensor, table: dict) -> None:
        table[key] = table[key] + value if key in table else value


def _acc(old: Tensor | None, new: Tensor, how) -> Tensor:
    return new if old is None else how(old, new)


# --- the recorder --------------------------------------------------------------------------------------

_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # trainer -> {id(net): recorder}


class StepRecorder(Callback):
    """The one record of each training step (see the module's docstring). ``root``: the network to watch
    (a submodule name; ``None``: :func:`default_root`). ``every_n_steps``: the recorded steps (default:
    the trainer's ``log_every_n_steps``). A callback itself, so its history is checkpointed when it is in
    the trainer's callbacks; the monitors drive it from their hooks too, in whatever order they run.
    """

    def __init__(
        self,
        root: str | None = None,
        unit_dim: int | dict[str, int] | None = None,
        saturation_threshold: float = SATURATION_THRESHOLD,
        every_n_steps: int | None = None,
    ):
        self.root = root
        self.unit_dim = unit_dim
        self.saturation_threshold = saturation_threshold
        self.every_n_steps = every_n_steps
        self.history: list[StepRecord] = []
        self._segments: list[dict] = []  # the history packed as it grows, for checkpoints
        self.activity_steps: list[int] = []  # steps of :meth:`probe` results kept for pictures
        self.activity: dict[str, list[np.ndarray]] = {}  # per entry: each unit's active fraction at those steps
        self.functional: list[str] = []  # "torch.relu in 'block'": activations called as functions
        self.net: nn.Module | None = None
        self._pl_module: LightningModule | None = None
        self._intervals: set[int] = set()
        self._detail = False
        self._final = False
        self._handles: list = []
        self._kinds: dict[str, str] = {}  # module name -> activation kind
        self._modules: dict[str, nn.Module] = {}
        self._named_params: list[tuple[str, nn.Parameter]] = []
        self._params: list[nn.Parameter] = []
        self._ones: list[nn.Parameter] = []  # the one-element parameters, whose new value is recorded too
        self._param_info: list[tuple[str, bool, int, str]] = []  # per parameter: name, one element, numel, module
        self._group_of: tuple = (None, [])  # (the optimizer's param groups, each parameter's group index)
        self._info: dict[tuple[str, int], tuple | None] = {}  # per entry: what the record takes of it once
        self._entries: dict[tuple, list[str]] = {}  # entries(kinds, types), until the entries or their names change
        self._signatures: dict[tuple[str, ...], tuple[list, list]] = {}  # entry names -> _signature, once
        self._param_module: dict[str, str] = {}
        self._unit_dims: dict[str, int] = {}  # entry -> the dim it was resolved to
        # entry -> (h.dim(), unit dim, other dims, the module's ReLU′(0), its slope): worked out once per entry
        self._plans: dict[tuple[str, int], tuple[int, int, list[int], int, float]] = {}
        self._order: dict[tuple[str, int], None] = {}  # entries (module, call) in call order
        self._calls_per_pass: dict[str, int] = {}  # module -> the most calls seen in one forward pass
        self._last_active: dict[tuple[str, int], Tensor] = {}  # per unit: last step it passed a gradient (−1: never)
        self._active_checked: set[tuple[str, int]] = set()  # entries whose _last_active matches their counts
        self._active_queue: list[tuple[int, list[tuple[tuple[str, int], Tensor]]]] = []  # steps not folded yet
        self._reset_step(None)
        self._batch_key = None
        self._finished_step: int | None = None
        self._before_step: int | None = None
        self._discovery: _FunctionalActivations | None = None
        self._discovered = False
        self._last_batch = None
        # CPU only, per dtype: one flat buffer the size of the largest activation (up to SCRATCH_UP_TO elements), which
        # each per-element reduction writes into (see _scratch_for), and its view per activation shape
        self._scratch: dict[tuple, Tensor] = {}
        self.finished: StepRecord | None = None  # what the latest batch_end returned: the step's record or None

    # --- the shared recorder --------------------------------------------------------------------------

    @classmethod
    def attach(cls, trainer: Trainer, pl_module: LightningModule, root: str | None, given: StepRecorder | None = None):
        """The recorder a monitor reads: ``given``, else a ``StepRecorder`` among the trainer's callbacks
        watching the same network, else one shared by every monitor of this trainer on that network."""
        net = resolve_root(pl_module, root)
        if given is None:
            given = next(
                (cb for cb in all_callbacks(trainer) if isinstance(cb, StepRecorder) and cb._watches(pl_module, net)),
                None,
            )
        if given is None:
            shared = _SHARED.setdefault(trainer, {})
            given = shared.get(id(net))
            if given is None:
                given = shared[id(net)] = cls(root=root)
        given._bind(pl_module)
        return given

    def leads(self, trainer: Trainer, callback: Callback) -> bool:
        """Whether Lightning runs this recorder's hooks before ``callback``'s: it is a callback of the trainer (a
        :class:`~backprop_lab.monitors.group.MonitorGroup`'s member too) that comes earlier. Then ``callback``
        reads the step (:attr:`finished`) without driving it: ~10 µs a step less than each monitor's calls."""
        order = all_callbacks(trainer)
        return any(cb is self for cb in order) and any(cb is callback for cb in order[order.index(self) + 1 :])

    def _watches(self, pl_module: LightningModule, net: nn.Module) -> bool:
        return resolve_root(pl_module, self.root) is net

    def record_every(self, n: int) -> None:
        """Also record every ``n`` steps (a reader's own cadence; 1: every step)."""
        self._intervals.add(int(n))

    def want_detail(self) -> None:
        """Also keep the batch means of x, y, z, h, ŷ and the sums of ∂L/∂h, ∂L/∂z, ∂L/∂ŷ (tensor hooks on
        the recorded steps): what the Backprop tab draws for the post's networks."""
        self._detail = True

    def want_final_pass(self) -> None:
        """After training, record one forward pass under the trained parameters (``backward`` False)."""
        self._final = True

    # --- set-up and tear-down -------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._bind(pl_module)

    def _bind(self, pl_module: LightningModule) -> None:
        if self._handles:
            return
        self._pl_module = pl_module
        self.net = net = resolve_root(pl_module, self.root)
        if isinstance(net, (models.LinearNet, models.HiddenUnitNet)):
            self._detail = True  # the post's graph, node by node: a few numbers, for the tab and the diagnoses
        self._named_params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        owner = {id(p): name for name, m in net.named_modules() for p in m.parameters(recurse=False)}
        self._param_module = {n: owner.get(id(p), "") for n, p in self._named_params}
        self._params = [p for _, p in self._named_params]
        self._ones = [p for p in self._params if p.numel() == 1]
        self._param_info = [(n, p.numel() == 1, p.numel(), self._param_module[n]) for n, p in self._named_params]
        self._info.clear()
        self._entries.clear()
        self._signatures.clear()
        self._plans.clear()
        for name, module in net.named_modules():
            kind = activation_kind(module)
            if kind is None and (module is net or any(True for _ in module.children())):
                continue  # containers: their calls are their children's
            self._modules[name] = module
            if kind is not None:
                self._kinds[name] = kind
            self._handles.append(module.register_forward_hook(self._hook(name)))
        if is_callable(net):
            self._handles.append(net.register_forward_hook(self._on_output))

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._stop_discovery()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._modules.clear()
        self._kinds.clear()
        self._info.clear()
        self._entries.clear()
        self._signatures.clear()
        self._scratch.clear()
        self._mode = None

    def state_dict(self) -> dict:
        """The history (packed: a float64 table per stretch of steps with the same parameters and entries, so a
        checkpoint stays small and quick to write), the probe activity and each unit's last active step."""
        return {
            "history": _pack(self._segments),
            "activity_steps": list(self.activity_steps),
            "activity": {n: torch.tensor(np.stack(col)) for n, col in self.activity.items() if col},
            "last_active": {f"{m}\x00{k}": t.cpu() for (m, k), t in self._folded_active().items()},
            "calls_per_pass": dict(self._calls_per_pass),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        segments = state_dict.get("history", [])
        self.history = _unpack(segments)
        self._segments = [{**seg, "rows": array("d", seg["rows"].reshape(-1).tolist())} for seg in segments]
        self.activity_steps = list(state_dict.get("activity_steps", []))
        self.activity = {n: list(t.numpy()) for n, t in state_dict.get("activity", {}).items()}
        self._last_active = {
            (key.split("\x00")[0], int(key.split("\x00")[1])): t for key, t in state_dict.get("last_active", {}).items()
        }
        self._active_checked.clear()
        self._active_queue = []  # steps before the checkpoint's: it holds them
        self._calls_per_pass.update(state_dict.get("calls_per_pass", {}))
        self._info.clear()  # entry names follow the calls per pass
        self._entries.clear()
        self._signatures.clear()

    def extend(self, records: Iterable[StepRecord]) -> None:
        """Add records of earlier steps, taken elsewhere (a batched run's copy resumed from its checkpoint, say), to
        :attr:`history` in step order, before the steps this recorder takes: its readers, its diagnoses and its
        checkpoints then hold them as its own."""
        for r in records:
            if self.history and r.step < self.history[-1].step:
                raise ValueError(f"StepRecorder.extend: step {r.step} comes after step {self.history[-1].step}")
            self.history.append(r)
            _pack_row(r, self._segments)

    # --- which steps ------------------------------------------------------------------------------------

    def wants(self, trainer: Trainer, step: int) -> bool:
        """Whether ``step`` is recorded: step 0, Lightning's log cadence and the readers' intervals."""
        if step == 0 or is_log_step(trainer, self.every_n_steps, step):
            return True
        return any(is_log_step(trainer, n, step) for n in self._intervals)

    # --- the training step, driven by each reader's hooks (each part runs once per step) ------------------

    def _reset_step(self, step: int | None) -> None:
        self._step = step
        self._armed = False
        self._mode: str | None = None
        self._counts: dict[tuple[str, int], _Counts] = {}
        self._calls: dict[str, int] = {}
        self._last_param_layer: nn.Module | None = None
        self._before: tuple[Tensor, list[float]] | None = None  # values and gradients (one stack), η of each
        self._grads_change = True  # whether .grad may change between on_before_optimizer_step and the update
        self._out: dict[str, Tensor] = {}  # detail: y_hat sum and count, ∂L/∂ŷ, x, y sums
        self._y_hat: Tensor | None = None
        self._samples = 0
        self._loss: float = math.nan

    def batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        key = (trainer.current_epoch, batch_idx, trainer.global_step)
        if key == self._batch_key:
            return
        self._batch_key = key
        step = key[2]
        if step != self._step:
            self._reset_step(step)
            self._armed = self.wants(trainer, step)
        self._new_pass()
        self._mode = "train"
        self._last_batch = batch
        x, y = _pair(batch)
        if x is not None:
            self._samples += len(x)
            if self._armed and self._detail:
                self._add_out("x", x.detach().double().sum(), x.numel())
                if y is not None:
                    self._add_out("y", y.detach().double().sum(), y.numel())
        if not self._discovered:
            self._discovered = True
            self._discovery = _FunctionalActivations(self.net, set(self._kinds))
            self._discovery.__enter__()

    def _new_pass(self) -> None:
        for name, calls in self._calls.items():
            if calls > self._calls_per_pass.get(name, 0):
                self._calls_per_pass[name] = calls
                self._info.clear()  # a module called more often than before: its entries are named act#k now
                self._entries.clear()
        self._calls = {}
        self._last_param_layer = None

    def _add_out(self, key: str, value: Tensor, count: int) -> None:
        self._out[key] = self._out[key] + value if key in self._out else value
        self._out[f"{key}#n"] = self._out.get(f"{key}#n", 0) + count

    def before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        """The parameters before the update and the gradient as backprop computed it (before clipping)."""
        step = trainer.global_step
        if self._before_step == step:
            return
        self._before_step = step
        self._stop_discovery()
        self._mode = None
        self._new_pass()
        self._remember_active(step)
        if not (self._armed or trainer.should_stop) or not self._named_params:
            return
        params = self._params
        groups = optimizer.param_groups
        shape = (id(optimizer), tuple(len(g["params"]) for g in groups))
        if self._group_of[0] != shape:  # each parameter's param group, looked up again when the groups change
            where = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
            self._group_of = (shape, [where.get(id(p), -1) for p in params])
        rates = [float(groups[i]["lr"]) if i >= 0 else math.nan for i in self._group_of[1]]
        with torch.no_grad():  # one stack: a copy of the values (the update is in place), then the gradients
            numbers = torch.stack([*map(_number, params), *[_number(p.grad, p) for p in params]])
        self._before = (numbers, rates)
        # Between here and the update only Lightning's clipping or the module's own hooks change .grad: without
        # them the applied gradient is this one, and its norms need not be taken again.
        self._grads_change = bool(trainer.gradient_clip_val) or _changes_grads(type(pl_module))

    def batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> StepRecord | None:
        """The step's record once its update is taken (None after a micro-batch of an accumulated step, or
        on a step that is not recorded)."""
        self._mode = None
        self._stop_discovery()
        step = self._step
        if step is None or trainer.global_step == step:
            self.finished = None
            return None  # no update yet: another micro-batch of this step follows
        if self._finished_step == step:
            return self.finished
        self._finished_step = step
        self.finished = None
        if self._before_step != step:  # no optimizer step was called (a manual or skipped one)
            self._remember_active(step)
        if not (self._armed or self._before is not None):
            return None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor) and self._y_hat is not None and hasattr(pl_module, "loss_fn"):
            _, y = _pair(batch)
            with torch.no_grad():
                loss = pl_module.loss_fn(self._y_hat, y)  # the step was skipped (a non-finite loss)
        self.finished = record = self._finish(step, loss, backward=True)
        return record

    def train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The final forward pass under the trained parameters, at step N, where a reader asked for it."""
        self._stop_discovery()
        step = trainer.global_step
        if not self._final or self._last_batch is None or self.net is None or not is_callable(self.net):
            return
        if self.history and (self.history[-1].step >= step or not math.isfinite(self.history[-1].loss)):
            return  # recorded already (the last step was not taken), or the run diverged
        self._reset_step(step)
        self._armed, self._mode = True, "final"
        x, y = _pair(self._last_batch)
        if x is None:
            return
        try:
            with torch.no_grad():
                if self._detail:
                    self._add_out("x", x.double().sum(), x.numel())
                    if y is not None:
                        self._add_out("y", y.double().sum(), y.numel())
                self._samples = len(x)
                out = self.net(x)
                loss = pl_module.loss_fn(out, y) if hasattr(pl_module, "loss_fn") and y is not None else None
        finally:
            self._mode = None
        self._new_pass()
        self._finish(step, loss, backward=False)

    # Lightning drives a recorder that is among the trainer's callbacks; the monitors drive it too.
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module):
        self.train_end(trainer, pl_module)

    def on_exception(self, trainer, pl_module, exception):
        self._stop_discovery()  # a step that failed in its first forward pass leaves no mode behind

    # --- the hooks ----------------------------------------------------------------------------------------

    def _hook(self, name: str):
        kind = self._kinds.get(name)
        module = self._modules[name]
        has_params = any(True for _ in module.parameters(recurse=False))

        def hook(mod: nn.Module, inputs, output) -> None:
            mode = self._mode
            if mode is None or (mode == "train" and not torch.is_grad_enabled()):
                return  # not a training forward pass of the watched network (a validation or probe pass)
            k = self._calls.get(name, 0)
            self._calls[name] = k + 1
            key = (name, k)
            if mode != "probe" and key not in self._order:
                self._order[key] = None
                self._entries.clear()
            if kind is not None and isinstance(output, Tensor):
                z = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
                self._activation(key, mod, kind, z, output, mode)
            if has_params:
                self._last_param_layer = mod

        return hook

    def _unit_dim(self, key: tuple[str, int], h: Tensor) -> int:
        """The unit axis of an entry's activations, resolved once per entry."""
        entry = f"{key[0]}#{key[1]}"
        if entry in self._unit_dims:
            return self._unit_dims[entry]
        if h.dim() <= 1:
            dim = 0
        elif isinstance(self.unit_dim, int):
            dim = self.unit_dim % h.dim()
        elif isinstance(self.unit_dim, dict) and (entry in self.unit_dim or key[0] in self.unit_dim):
            dim = self.unit_dim.get(entry, self.unit_dim.get(key[0])) % h.dim()
        elif h.dim() >= 3 and isinstance(self._last_param_layer, CHANNEL_LAYERS):
            dim = 1  # a feature map: (batch, channels, …)
        else:
            dim = h.dim() - 1  # (batch, …, features)
        self._unit_dims[entry] = dim
        return dim

    def _activation(self, key, module: nn.Module, kind: str, z: Tensor | None, output: Tensor, mode: str) -> None:
        h = output.detach()
        plan = self._plans.get(key)
        if plan is None or plan[0] != h.dim():  # the unit axis and the dims reduced over, per entry, once
            dim = self._unit_dim(key, h)
            at_zero, slope = int(getattr(module, "grad_at_zero", 0)), float(getattr(module, "negative_slope", 0.0))
            plan = self._plans[key] = (h.dim(), dim, [d for d in range(h.dim()) if d != dim], at_zero, slope)
        _, dim, over, at_zero, slope = plan
        zd = z.detach() if z is not None and (at_zero or self._detail) else None  # what reads z: ReLU′(0) = 1, detail
        if mode == "probe":
            fraction = passing_fraction(kind, zd, h, at_zero, slope, over)
            if fraction is not None:
                self._probe[key] = fraction
            return
        prime = local_derivative(kind, zd, h, at_zero, slope) if kind in SATURATING or self._detail else None
        c = self._counts.get(key)
        if c is None:
            c = self._counts[key] = _Counts(h.shape[dim] if h.dim() else 1)
        c.numel += h.numel()
        if self._armed and kind == "relu" and not at_zero and over:
            # ReLU′ = sign(h) (ReLU′(0) = 0, h ≥ 0): its per-unit sums are the samples each unit passes, which
            # give on the host both the zero count (their total) and the dead units (a sum of 0): one reduction
            sign = torch.sign(h, out=self._scratch_for(h))
            passing = sign.sum(dim=over, dtype=torch.float32 if h.numel() < 2**24 else torch.float64)
            c.passing = _acc(c.passing, passing, torch.add)
            top = None
        else:
            if self._armed:  # the zero fraction, on recorded steps only
                c.nonzero = _acc(c.nonzero, _nonzero(h, self._scratch_for(h)), torch.add)
            # Every step (no sync): whether each unit passed a gradient, for "dead from step s on".
            top = max_derivative(kind, zd, h, at_zero, slope, over, prime)
        if top is not None:
            c.max_prime = _acc(c.max_prime, top, torch.maximum)
        if self._armed and self._detail:
            c.add("h", h.double().sum(), c.sums)
            if zd is not None:
                c.add("z", zd.double().sum(), c.sums)
            if prime is not None:
                c.add("prime", prime.double().sum(), c.sums)
            if mode == "train":
                if output.requires_grad:
                    output.register_hook(lambda g, c=c: c.add("dL_dh", g.double().sum(), c.grads))
                if z is not None and z.requires_grad and z is not output:
                    z.register_hook(lambda g, c=c: c.add("dL_dz", g.double().sum(), c.grads))

    def _scratch_for(self, h: Tensor) -> Tensor | None:
        """A contiguous tensor shaped like ``h`` to write an elementwise result into, reused across calls and steps
        (each use is reduced before the next one writes it); None where a fresh temporary is better: a small ``h``
        (it costs less than the slice), a large one (a buffer kept between steps would hold that memory through the
        backward pass) and one off the CPU (a GPU's caching allocator hands temporaries out without new pages)."""
        if not SCRATCH_FROM <= h.numel() <= SCRATCH_UP_TO or h.device.type != "cpu":
            return None
        views = self._scratch.get((h.dtype, h.device, h.shape))
        if views is not None:
            return views
        key = (h.dtype, h.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < h.numel() or len(self._scratch) > SCRATCH_VIEWS:
            # the views of a smaller buffer go with it; so do views kept for many shapes (varying sequence lengths)
            self._scratch = {k: v for k, v in self._scratch.items() if len(k) == 2 and k != key}
            if buf is None or buf.numel() < h.numel():
                buf = torch.empty(h.numel(), dtype=h.dtype, device=h.device)
            self._scratch[key] = buf
        view = self._scratch[(h.dtype, h.device, h.shape)] = buf[: h.numel()].view(h.shape)  # made once per shape
        return view

    def _on_output(self, module: nn.Module, inputs, output) -> None:
        if self._mode not in ("train", "final") or not isinstance(output, Tensor):
            return
        if self._mode == "train" and not torch.is_grad_enabled():
            return
        self._y_hat = output.detach()
        if self._armed and self._detail:
            self._add_out("y_hat", output.detach().double().sum(), output.numel())
            if self._mode == "train" and output.requires_grad:
                output.register_hook(lambda g: self._add_out("dL_dy_hat", g.double().sum(), 0))

    def _remember_active(self, step: int) -> None:
        """Per unit, the last step it passed a gradient: every step. The step's per-unit tensors are kept and folded
        into :attr:`_last_active` every ``ACTIVE_FOLD`` steps (and before it is read), a few device ops for all of
        them where a fold per step took two ops a step and an entry (~8 µs of Python each)."""
        tops = []
        for key, c in self._counts.items():
            top = c.passing if c.passing is not None else c.max_prime  # > 0: the unit passed a gradient
            if top is not None:
                tops.append((key, top))
        if tops:
            self._active_queue.append((step, tops))
            if len(self._active_queue) >= ACTIVE_FOLD:
                self._fold_active()

    def _fold_active(self) -> None:
        """The queued steps into :attr:`_last_active` (on the device, no sync)."""
        queue, self._active_queue = self._active_queue, []
        per_key: dict[tuple[str, int], tuple[list[int], list[Tensor]]] = {}
        for step, tops in queue:
            for key, top in tops:
                steps, kept = per_key.setdefault(key, ([], []))
                steps.append(step)
                kept.append(top)
        with torch.no_grad():
            for key, (steps, kept) in per_key.items():
                last = self._last_for(key, kept[0])
                consecutive = steps == list(range(steps[0], steps[0] + len(steps)))
                if not consecutive or any(t.shape != last.shape for t in kept):
                    for step, top in zip(steps, kept):  # one at a time (a skipped step; a changed shape)
                        self._last_for(key, top).masked_fill_(top > 0, step)
                    continue
                alive = torch.stack(kept) > 0  # (steps, units …)
                order = torch.arange(1, len(kept) + 1, device=alive.device).reshape(-1, *[1] * (alive.dim() - 1))
                newest = (alive * order).amax(dim=0)  # 1 + the position of the last step alive; 0: none
                last.copy_(torch.where(newest > 0, newest + (steps[0] - 1), last))

    def _folded_active(self) -> dict[tuple[str, int], Tensor]:
        if self._active_queue:
            self._fold_active()
        return self._last_active

    def _last_for(self, key: tuple[str, int], top: Tensor) -> Tensor:
        """The entry's last-active steps, made to match ``top`` (its shape and device) once per entry."""
        last = self._last_active.get(key)
        if last is None or key not in self._active_checked or last.shape != top.shape:
            if last is None or last.shape != top.shape:
                last = torch.full(top.shape, -1, dtype=torch.int64, device=top.device)
            elif last.device != top.device:  # loaded from a checkpoint onto the CPU
                last = last.to(top.device)
            self._last_active[key] = last
            self._active_checked.add(key)
        return last

    # --- the step's numbers, copied to the host once ------------------------------------------------------

    def entry_name(self, key: tuple[str, int]) -> str:
        """``act`` for a module called once per forward pass, ``act#k`` for the k-th call of a reused one."""
        name, k = key
        return f"{name}#{k}" if self._calls_per_pass.get(name, 1) > 1 else name

    def _finish(self, step: int, loss, backward: bool) -> StepRecord:
        self._new_pass()
        params = self._params
        n_params = len(params)
        updated = backward and self._before is not None
        applied = new = False
        # The step's numbers in one flat tensor, in this order; read back in the same order below.
        parts: list[Tensor] = []
        entries: list[tuple[tuple[str, int], _Counts]] = []
        with torch.no_grad():
            has_loss = isinstance(loss, Tensor)
            if has_loss:
                loss = loss.detach()
                if loss.dtype is not torch.float32 and loss.dtype is not torch.float64:
                    loss = loss.float()  # a bf16/fp16 loss in float32; a float64 one stays exact
                parts.append((loss if loss.dim() == 0 else loss.mean()).reshape(1))
            if params:
                if self._before is not None:
                    numbers, rates = self._before  # the values, then the gradients as backprop computed them
                else:
                    values = torch.stack([_number(p) for p in params])
                    numbers = torch.cat([values, torch.full_like(values, math.nan)])
                    rates = [math.nan] * n_params
                parts.append(numbers)
                applied = updated and self._grads_change
                if applied:
                    parts.append(torch.stack([_number(p.grad, p) for p in params]))
                new = updated and bool(self._ones)
                if new:
                    ones = self._ones
                    parts.append(ones[0].reshape(1) if len(ones) == 1 else torch.cat([p.reshape(1) for p in ones]))
            for key in self._order:
                c = self._counts.get(key)
                if c is None:
                    continue
                entries.append((key, c))
                for t in (c.nonzero, c.passing, c.max_prime):  # per unit: counted on the host, no more device ops
                    if t is not None:
                        parts.append(t if t.dim() == 1 else t.reshape(-1))
                if c.sums:
                    parts.extend(t.reshape(1) for t in c.sums.values())
                if c.grads:
                    parts.extend(t.reshape(1) for t in c.grads.values())
            outs = [(what, t) for what, t in self._out.items() if isinstance(t, Tensor)]
            parts.extend(t.reshape(1) for _, t in outs)
            # The one host copy of the step (on a GPU, its one device sync).
            flat = torch.cat(parts) if parts else torch.empty(0)
            host = (flat if flat.device.type == "cpu" else flat.cpu()).numpy()
        numbers_host = host.tolist()  # float32 or float64 values: each one's Python float is exact
        i = 0
        loss_value = math.nan
        if has_loss:
            loss_value, i = numbers_host[0], 1
        record = StepRecord(step=step, backward=False, batch=self._samples, loss=loss_value)
        if params:
            values, grads_backprop = numbers_host[i : i + n_params], numbers_host[i + n_params : i + 2 * n_params]
            i += 2 * n_params
            grads = grads_backprop
            if applied:
                grads, i = numbers_host[i : i + n_params], i + n_params
            record.backward = updated and any(math.isfinite(g) for g in grads)
            if not updated:
                grads = None
            new_values = iter(())
            if new:
                new_values, i = iter(numbers_host[i : i + len(self._ones)]), i + len(self._ones)
            if grads is None:
                grads = [math.nan] * n_params
            nan = math.nan
            record.params = {
                name: ParamStats(value, grad_backprop, grad, next(new_values, nan) if one else nan, lr, numel, module)
                for (name, one, numel, module), value, grad_backprop, grad, lr in zip(
                    self._param_info, values, grads_backprop, grads, rates
                )
            }
        thr = self.saturation_threshold
        counted = dict(entries)
        for key in self._order:  # layers with a weight once, at their first call; activations at every call
            info = self._entry_info(key)
            if info is None:
                continue
            if info[0] == "layer":  # the same numbers every step: one object, shared by the records (read-only)
                record.layers[info[1]] = info[2]
                continue
            c = counted.get(key)
            if c is None:
                continue
            _, entry, kind, unit_dim = info
            stats = LayerStats(module=key[0], type=kind, kind=kind, unit_dim=unit_dim)
            stats.units = units = c.units
            n_h = max(c.numel, 1)
            if c.nonzero is not None:
                stats.zero_fraction = (c.numel - numbers_host[i]) / n_h
                i += 1
            for t in (c.passing, c.max_prime):
                if t is None:
                    continue
                n = t.numel()
                per_unit, i = numbers_host[i : i + n], i + n
                if t is c.passing:  # samples passing per unit: their total is the non-zero count (exact: integers)
                    stats.zero_fraction = (c.numel - sum(per_unit)) / n_h
                if units:
                    stats.dead_fraction = per_unit.count(0.0) / units
                    if t is c.max_prime and kind in SATURATING:
                        stats.saturation = int(np.count_nonzero(np.asarray(per_unit) < thr)) / units  # in float64
            for what in c.sums:  # z, h, dh/dz: batch means
                setattr(stats, what, numbers_host[i] / n_h)
                i += 1
            for what in c.grads:  # ∂L/∂h, ∂L/∂z: batch sums
                setattr(stats, what, numbers_host[i])
                i += 1
            record.layers[entry] = stats
        for what, _ in outs:
            value, i = numbers_host[i], i + 1
            if what in ("x", "y", "y_hat"):
                setattr(record, what, value / max(self._out.get(f"{what}#n", 1), 1))
            elif what == "dL_dy_hat":
                record.dL_dy_hat = value
        self.history.append(record)
        names = tuple(record.layers)  # the entries' types, kinds and shapes follow from their names (self._info)
        signature = self._signatures.get(names)
        if signature is None:
            signature = self._signatures[names] = _signature(record)
        _pack_row(record, self._segments, signature)
        return record

    def _entry_info(self, key: tuple[str, int]) -> tuple | None:
        """What the record needs of an entry that does not change from step to step, worked out once:
        ("layer", name, its LayerStats) for the first call of a module that is not an activation,
        ("activation", entry name, kind, unit dim) for an activation's call, None for the rest."""
        if key in self._info:
            return self._info[key]
        module = self._modules.get(key[0])
        kind = self._kinds.get(key[0])
        if module is None or (kind is None and key[1] > 0):
            info = None  # calls of a module after its first: its weight is the same
        elif kind is None:
            weight = getattr(module, "weight", None)
            shape = tuple(weight.shape) if isinstance(weight, Tensor) else None
            typ = "linear" if shape is not None and len(shape) == 2 else type(module).__name__
            info = ("layer", key[0], LayerStats(module=key[0], type=typ, shape=None if shape is None else list(shape)))
        else:
            info = ("activation", self.entry_name(key), kind, self._unit_dims.get(f"{key[0]}#{key[1]}"))
        if module is not None and (kind is None or f"{key[0]}#{key[1]}" in self._unit_dims):
            self._info[key] = info  # an activation's once its unit axis is known
        return info

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def last(self) -> StepRecord | None:
        return self.history[-1] if self.history else None

    def entries(self, kinds: tuple[str, ...] | None = None, types: tuple[type, ...] | None = None) -> list[str]:
        """The activation entries in call order (of ``kinds`` / module ``types`` where given)."""
        cached = self._entries.get((kinds, types))
        if cached is not None:
            return list(cached)
        out = []
        for key in self._order:
            kind = self._kinds.get(key[0])
            if kind is None or (kinds is not None and kind not in kinds):
                continue
            if types is not None and not isinstance(self._modules.get(key[0]), types):
                continue
            out.append(self.entry_name(key))
        self._entries[(kinds, types)] = out
        return list(out)

    def last_active(self) -> dict[str, Tensor]:
        """Per activation entry with a derivative: each unit's last step with a non-zero derivative (−1: never)."""
        return {self.entry_name(k): t for k, t in self._folded_active().items()}

    def probe(self, x: Tensor, keep: bool = True, step: int | None = None) -> dict[str, np.ndarray] | None:
        """Each unit's active fraction (derivative ≠ 0) on ``x``, per activation entry: one no-grad,
        eval-mode pass of the watched network (None where it cannot be called). With ``keep``, also added to
        :attr:`activity` at ``step``."""
        net = self.net
        if net is None or not is_callable(net):
            return None
        was_training = net.training
        self._probe: dict[tuple[str, int], Tensor] = {}
        saved_calls, saved_last, saved_mode = self._calls, self._last_param_layer, self._mode
        self._calls, self._mode = {}, "probe"
        try:
            net.eval()
            with torch.no_grad():
                net(x.to(dtype=next(net.parameters()).dtype) if any(True for _ in net.parameters()) else x)
        finally:
            net.train(was_training)
            self._calls, self._last_param_layer, self._mode = saved_calls, saved_last, saved_mode
        found = self._probe
        self._probe = {}
        if not found:
            return {}
        keys = list(found)
        host = torch.cat([found[k].reshape(-1).float() for k in keys]).cpu().numpy()  # one sync
        out, start = {}, 0
        for k in keys:
            n = found[k].numel()
            out[self.entry_name(k)] = host[start : start + n]
            start += n
        if keep and step is not None:
            self.activity_steps.append(step)
            for name, fraction in out.items():
                self.activity.setdefault(name, []).append(fraction)
        return out

    # --- functional activations ---------------------------------------------------------------------------

    def _stop_discovery(self) -> None:
        discovery, self._discovery = self._discovery, None
        if discovery is None:
            return
        discovery.__exit__(None, None, None)
        self.functional = discovery.report()
        if self.functional:
            where = type(self._pl_module).__name__ if self._pl_module is not None else "the module"
            rank_zero_warn(
                f"StepRecorder: activations called as functions in {where} have no module to hook, so their "
                f"dead, zero and saturation statistics are not recorded: {'; '.join(self.functional)}. "
                "Make them modules (nn.ReLU(), nn.GELU(), …) to get relu/* statistics and diagnoses for them."
            )


def _nonzero(h: Tensor, out: Tensor | None) -> Tensor:
    """The number of non-zero entries of ``h``, as a 0-d float tensor (no sync): |sign(h)| (written into ``out``
    where given) summed, about a thirtieth of ``count_nonzero``'s time on a CPU; in float32 (exact below 2²⁴
    entries) where it fits."""
    return torch.sign(h, out=out).abs_().sum(dtype=torch.float32 if h.numel() < 2**24 else torch.float64)


def _pair(batch) -> tuple[Tensor | None, Tensor | None]:
    """(x, y) of a batch that is an (x, y) pair of tensors; (None, None) otherwise."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], Tensor):
        return batch[0], batch[1] if isinstance(batch[1], Tensor) else None
    return None, None


@functools.cache
def _changes_grads(module_type: type) -> bool:
    """Whether a LightningModule class has its own hooks that may change ``.grad`` before the update."""
    return any(
        getattr(module_type, hook) is not getattr(LightningModule, hook)
        for hook in ("configure_gradient_clipping", "on_before_optimizer_step")
    )


def _number(t: Tensor | None, like: Tensor | None = None) -> Tensor:
    """A one-element tensor's value, or a larger tensor's L2 norm, as a 0-d float tensor (no sync); NaN for
    None (on the device of ``like``). Called under ``torch.no_grad()`` (no ``detach`` needed)."""
    if t is None:
        return torch.tensor(math.nan, device=like.device if like is not None else None)
    if t.dtype is not torch.float32 and t.dtype is not torch.float64:
        t = t.float()  # norms of bf16/fp16 values in float32
    return t.reshape(()) if t.numel() == 1 else _vector_norm(t)


_vector_norm = torch.linalg.vector_norm
ACTIVE_FOLD = 64  # steps of per-unit activity kept before they are folded into each unit's last active step
SCRATCH_FROM = 2**15  # elements (128 kB of float32): where a CPU allocator starts mapping fresh pages a temporary
SCRATCH_UP_TO = 2**22  # elements (16 MB of float32): the most memory the reused buffer holds
SCRATCH_VIEWS = 64  # views of it kept, one per activation shape, before they are dropped and made again


class _FunctionalActivations(TorchFunctionMode):
    """During one forward pass: which activation functions each watched module calls in its own ``forward``
    (not inside an activation module, which the recorder hooks)."""

    def __init__(self, net: nn.Module, activation_modules: set[str]):
        super().__init__()
        self._stack: list[str] = []
        self._found: dict[tuple[str, str], int] = {}
        self._handles = []
        self._skip = activation_modules
        self._types = {name: type(module).__name__ for name, module in net.named_modules()}
        for name, module in net.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(name)))
            self._handles.append(module.register_forward_hook(self._leave(name)))

    def _enter(self, name: str):
        def pre_hook(module, inputs) -> None:
            self._stack.append(name)

        return pre_hook

    def _leave(self, name: str):
        def hook(module, inputs, output) -> None:
            if self._stack and self._stack[-1] == name:
                self._stack.pop()

        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if self._stack and name in FUNCTIONAL_ACTIVATIONS and self._stack[-1] not in self._skip:
            module = getattr(func, "__module__", None) or "torch"
            where = "torch.nn.functional" if "functional" in module else "torch"
            key = (
                f"{where}.{name}" if "Tensor" not in getattr(func, "__qualname__", "") else f"Tensor.{name}",
                self._stack[-1],
            )
            self._found[key] = self._found.get(key, 0) + 1
        return func(*args, **(kwargs or {}))

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return super().__exit__(*exc)

    def report(self) -> list[str]:
        return [
            f"{fn} in {self._types[where]}.forward{f' ({where!r})' if where else ''}, {n} call{'s' if n > 1 else ''} a pass"
            for (fn, where), n in self._found.items()
        ]
