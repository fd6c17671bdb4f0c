"""The post's networks as data, in one place, without torch.

Everything that *describes* the post's three networks (§3 ŷ = w·x; §4/§5 z1 = w1·x, h = act(z1),
ŷ = w2·h) lives here, and only here:

- the quantities, with the post's notation, their phase and their formula, both as text
  (``∂L/∂ŷ · w2 · σ′(z1) · x``) and as a template that fills in each factor's number from a step
  (``(-2.24492) · (-1) · 0.235004 · 1``);
- the graph: nodes, forward edges with their operation, backward edges with their local derivative,
  the parameters in the post's update order, and the gradients written out as chain-rule products;
- the post's printed figures (``post_figures.yaml``), its inputs, and the comparison rule.

It holds no numbers of its own: a step's numbers come from the real backward pass (the replay's hooks,
or the tensors :class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor` recorded), and this
module only names and formats them. Readers: :mod:`backprop_lab.replay` (the one-step table) and the
Backprop tab (:mod:`backprop_lab.tensorboard_plugin.plugin`, and through its JSON the page). TensorBoard
imports the plugin in its server process, so this module imports nothing heavier than PyYAML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources

PHASES = ("forward", "backward", "update", "new forward")
NO_BACKWARD = "no backward at the final pass"  # why a gradient or an update is "—" at the last step
MISSING = "—"  # the text of a number that does not exist at a step


# --- numbers as text ---------------------------------------------------------------------------------


def short(value: float | None) -> str:
    """A value in a formula or on the graph: 6 significant digits; "—" for none, "nan"/"inf" as such."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return "0" if value == 0 else f"{value:.6g}"


def factor(value: float | None) -> str:
    """A factor in a product: :func:`short`, a negative value in parentheses."""
    s = short(value)
    return f"({s})" if s.startswith("-") else s


def exact(value: float) -> str:
    """The replay's exact column: 10 decimals without trailing zeros; an exact zero says so."""
    if value == 0:
        return "0 (exactly)"
    if abs(value) < 1e-6 or abs(value) >= 1e9:
        return f"{value:.10e}"
    return f"{value:.10f}".rstrip("0").rstrip(".")


class _Number:
    """A number inside a template: ``{key}`` is a factor, ``{key:plain}`` is written as it is."""

    def __init__(self, value: float):
        self.value = value

    def __format__(self, spec: str) -> str:
        return short(self.value) if spec == "plain" else factor(self.value)


# --- the quantities ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantity:
    key: str  # stable id, the same in the replay's rows, the monitor's fields and the tab's JSON
    phase: str  # "input", or one of PHASES
    label: str  # the post's notation, e.g. "∂L/∂w1"
    formula: str = ""  # e.g. "∂L/∂ŷ · w2 · σ′(z1) · x"
    template: str = ""  # the formula with each factor a {key}, e.g. "{dL_dy_hat} · {w2} · {dh_dz1} · {x}"


@dataclass(frozen=True)
class Activation:
    symbol: str  # σ, ReLU, …: h = symbol(z1)
    apply: str  # h from z1 as the post writes it, "{}" for the argument: "σ({})", "max(0, {})"
    prime: str  # dh/dz1 as a formula in z1 or h
    prime_template: str = ""  # the same with the numbers of a step ("" where it reads as a case, as ReLU′)


ACTIVATIONS = {
    "sigmoid": Activation("σ", "σ({})", "σ(z1) · (1 − σ(z1))", "{h} · (1 - {h})"),
    "relu": Activation("ReLU", "max(0, {})", "1 if z1 > 0, 0 if z1 < 0, relu_grad_at_zero at 0"),
    "leaky_relu": Activation("LeakyReLU", "LeakyReLU({})", "1 if z1 > 0, a otherwise"),
    "tanh": Activation("tanh", "tanh({})", "1 − tanh²(z1)", "1 - {h}²"),
}


def _loss(new: str = "") -> Quantity:
    p = "′" if new else ""
    phase = "new forward" if new else "forward"
    return Quantity(f"loss{new}", phase, f"L{p}", f"(y − ŷ{p})²", f"({{y:plain}} - {{y_hat{new}}})²")


def _update(w: str) -> Quantity:
    return Quantity(
        f"{w}_new", "update", f"{w}′", f"{w} − η · ∂L/∂{w}", f"{{{w}:plain}} - {{lr_{w}:plain}} · {{dL_d{w}}}"
    )


def _decayed_update(w: str) -> Quantity:
    """torch.optim.SGD with weight decay λ: w − η·(∂L/∂w + λ·w) (momentum leaves a first step alone)."""
    return Quantity(
        f"{w}_new",
        "update",
        f"{w}′",
        f"{w} − η · (∂L/∂{w} + λ · {w})",
        f"{{{w}:plain}} - {{lr_{w}:plain}} · ({{dL_d{w}}} + {{weight_decay:plain}} · {{{w}}})",
    )


# --- the graph -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    id: str
    label: str  # "z1 = w1·x"
    value: str  # the quantity holding its value
    grad: str | None = None  # the quantity holding ∂L/∂(node)
    feeds: tuple[str, str] | None = None  # a parameter: the forward edge (from, to) it multiplies into


@dataclass(frozen=True)
class Edge:
    """A backward edge from node ``frm`` to node ``to``: ∂L/∂(to) = ∂L/∂(frm) · local."""

    id: str
    frm: str
    to: str
    local_label: str  # "∂ŷ/∂w2 = h": the local derivative and what it equals
    local: str  # the quantity whose number is the local derivative at a step
    grad_from: str
    grad: str


@dataclass(frozen=True)
class Network:
    model: str  # linear | sigmoid | relu | leaky_relu | tanh
    activation: str | None
    quantities: dict[str, Quantity]
    rows: tuple[str, ...]  # the replay's rows, in the post's order
    nodes: tuple[Node, ...]
    forward: tuple[tuple[str, str, str], ...]  # (from, to, operation) in the forward row
    backward: tuple[Edge, ...]
    params: tuple[str, ...]  # in the order the post updates them
    chain: tuple[str, ...]  # the parameters' gradients, written out as chain-rule products

    @property
    def hidden(self) -> bool:
        return self.activation is not None

    def q(self, key: str) -> Quantity:
        return self.quantities[key]


def network(model: str, weight_decay: float = 0.0) -> Network:
    """The post's network ``model`` ("linear", or a hidden unit's activation: "sigmoid", "relu", …).

    ``weight_decay``: the optimizer's λ, which changes the update's formula.
    """
    update = _decayed_update if weight_decay else _update
    inputs = [Quantity("x", "input", "x"), Quantity("y", "input", "y")]
    if model == "linear":
        qs = [
            *inputs,
            Quantity("w", "input", "w"),
            Quantity("lr_w", "input", "η"),
            Quantity("y_hat", "forward", "ŷ", "w · x", "{w} · {x}"),
            _loss(),
            Quantity("dL_dy_hat", "backward", "∂L/∂ŷ", "−2 · (y − ŷ)", "-2 · ({y:plain} - {y_hat})"),
            Quantity("dy_hat_dw", "backward", "∂ŷ/∂w", "x", "{x:plain}"),
            Quantity("dL_dw", "backward", "∂L/∂w", "∂L/∂ŷ · ∂ŷ/∂w", "{dL_dy_hat} · {dy_hat_dw}"),
            update("w"),
            Quantity("y_hat_new", "new forward", "ŷ′", "w′ · x", "{w_new} · {x}"),
            _loss("_new"),
        ]
        return Network(
            model="linear",
            activation=None,
            quantities={q.key: q for q in qs},
            rows=("y_hat", "loss", "dL_dy_hat", "dy_hat_dw", "dL_dw", "w_new", "y_hat_new", "loss_new"),
            nodes=(
                Node("x", "x", "x"),
                Node("w", "w", "w", "dL_dw", feeds=("x", "y_hat")),
                Node("y_hat", "ŷ = w·x", "y_hat", "dL_dy_hat"),
                Node("L", "L = (y − ŷ)²", "loss", "dL_dL"),
                Node("y", "y", "y"),
            ),
            forward=(("x", "y_hat", "· w"), ("y_hat", "L", "(y − ŷ)²"), ("y", "L", "")),
            backward=(
                Edge("loss", "L", "y_hat", "∂L/∂ŷ = −2·(y − ŷ)", "dL_dy_hat", "dL_dL", "dL_dy_hat"),
                Edge("in_w", "y_hat", "w", "∂ŷ/∂w = x", "dy_hat_dw", "dL_dy_hat", "dL_dw"),
            ),
            params=("w",),
            chain=("dL_dw",),
        )
    # An activation the post does not draw (a module the monitor names by its class) reads generically.
    act = ACTIVATIONS.get(model) or Activation(model, f"{model}({{}})", f"{model}′(z1)")
    d_act = f"{act.symbol}′(z1)"
    qs = [
        *inputs,
        Quantity("w1", "input", "w1"),
        Quantity("w2", "input", "w2"),
        Quantity("lr_w1", "input", "η"),
        Quantity("lr_w2", "input", "η"),
        Quantity("z1", "forward", "z1", "w1 · x", "{w1} · {x}"),
        Quantity("h", "forward", "h", act.apply.format("z1"), act.apply.format("{z1:plain}")),
        Quantity("y_hat", "forward", "ŷ", "w2 · h", "{w2} · {h}"),
        _loss(),
        Quantity("dL_dy_hat", "backward", "∂L/∂ŷ", "−2 · (y − ŷ)", "-2 · ({y:plain} - {y_hat})"),
        Quantity("dL_dw2", "backward", "∂L/∂w2", "∂L/∂ŷ · h", "{dL_dy_hat} · {h}"),
        Quantity("dL_dh", "backward", "∂L/∂h", "∂L/∂ŷ · w2", "{dL_dy_hat} · {w2}"),
        Quantity("dh_dz1", "backward", d_act, act.prime, act.prime_template),
        Quantity("dL_dz1", "backward", "∂L/∂z1", f"∂L/∂h · {d_act}", "{dL_dh} · {dh_dz1}"),
        Quantity("dL_dw1", "backward", "∂L/∂w1", f"∂L/∂ŷ · w2 · {d_act} · x", "{dL_dy_hat} · {w2} · {dh_dz1} · {x}"),
        update("w2"),
        update("w1"),
        Quantity("z1_new", "new forward", "z1′", "w1′ · x", "{w1_new} · {x}"),
        Quantity("h_new", "new forward", "h′", act.apply.format("z1′"), act.apply.format("{z1_new:plain}")),
        Quantity("y_hat_new", "new forward", "ŷ′", "w2′ · h′", "{w2_new} · {h_new}"),
        _loss("_new"),
    ]
    return Network(
        model=model,
        activation=model,
        quantities={q.key: q for q in qs},
        rows=(
            *("z1", "h", "y_hat", "loss", "dL_dy_hat", "dL_dw2", "dL_dh", "dh_dz1", "dL_dz1", "dL_dw1"),
            *("w2_new", "w1_new", "z1_new", "h_new", "y_hat_new", "loss_new"),
        ),
        nodes=(
            Node("x", "x", "x"),
            Node("w1", "w1", "w1", "dL_dw1", feeds=("x", "z1")),
            Node("z1", "z1 = w1·x", "z1", "dL_dz1"),
            Node("h", f"h = {act.symbol}(z1)", "h", "dL_dh"),
            Node("w2", "w2", "w2", "dL_dw2", feeds=("h", "y_hat")),
            Node("y_hat", "ŷ = w2·h", "y_hat", "dL_dy_hat"),
            Node("L", "L = (y − ŷ)²", "loss", "dL_dL"),
            Node("y", "y", "y"),
        ),
        forward=(
            ("x", "z1", "· w1"),
            ("z1", "h", act.symbol),
            ("h", "y_hat", "· w2"),
            ("y_hat", "L", "(y − ŷ)²"),
            ("y", "L", ""),
        ),
        backward=(
            Edge("loss", "L", "y_hat", "∂L/∂ŷ = −2·(y − ŷ)", "dL_dy_hat", "dL_dL", "dL_dy_hat"),
            Edge("out_w", "y_hat", "w2", "∂ŷ/∂w2 = h", "h", "dL_dy_hat", "dL_dw2"),
            Edge("out_h", "y_hat", "h", "∂ŷ/∂h = w2", "w2", "dL_dy_hat", "dL_dh"),
            Edge("act", "h", "z1", f"∂h/∂z1 = {d_act} = {act.prime}", "dh_dz1", "dL_dh", "dL_dz1"),
            Edge("in_w", "z1", "w1", "∂z1/∂w1 = x", "x", "dL_dz1", "dL_dw1"),
        ),
        params=("w2", "w1"),  # the post updates w2 first
        chain=("dL_dw1", "dL_dw2"),
    )


# ∂L/∂L = 1: the start of every backward pass, not a quantity any step records.
DL_DL = Quantity("dL_dL", "backward", "∂L/∂L")


def formula(net: Network, key: str, values: Mapping[str, float], relu_grad_at_zero: int = 0) -> tuple[str, str | None]:
    """(the formula of ``key``, the same with the numbers of ``values``; None where a factor is missing).

    ReLU′(z1) is a case, not a product: it reads "1, as z1 > 0" with "z1 = 0.5 > 0".
    """
    q = net.q(key)
    if key == "dh_dz1" and net.activation == "relu" and "z1" in values:
        z1 = values["z1"]
        if z1 > 0:
            return "1, as z1 > 0", f"z1 = {short(z1)} > 0"
        if z1 < 0:
            return "0, as z1 < 0", f"z1 = {short(z1)} < 0"
        if z1 == 0:
            return "relu_grad_at_zero, as z1 = 0", f"model.relu_grad_at_zero = {relu_grad_at_zero}"
    if not q.template:
        return q.formula, None
    try:
        filled = q.template.format_map({k: _Number(v) for k, v in values.items() if v is not None})
    except KeyError:
        return q.formula, None
    return q.formula, filled


# --- the post's printed figures ------------------------------------------------------------------------


@cache
def _figures() -> dict:
    import yaml  # PyYAML, which OmegaConf depends on: light enough for TensorBoard's process

    text = resources.files("backprop_lab").joinpath("post_figures.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def post_figures() -> dict:
    """``post_figures.yaml``: per network, its ``section``, the post's ``inputs`` and the printed ``figures``."""
    import copy

    return copy.deepcopy(_figures())  # callers may change their copy


def compare(figure: str, exact_value: float) -> tuple[float, bool]:
    """(post − exact, whether that is more than one unit in the figure's last printed digit).

    "1.259" has its last digit in the thousandths, so it is marked only if |1.259 − exact| > 0.001.
    Decimal arithmetic: the figure is read exactly, and the float's exact binary value is used.
    """
    printed = Decimal(figure)
    unit = Decimal(1).scaleb(printed.as_tuple().exponent)
    gap = printed - Decimal(exact_value)
    return float(gap), abs(gap) > unit


def not_post_inputs(model: str, have: Mapping[str, float | None], rel: float = 0.0) -> str | None:
    """None if ``have`` (keys as in the config: ``model.w1``, ``data.x``, ``optim.lr``…) holds every one
    of the post's inputs for ``model``, else which differs. ``rel``: the relative tolerance (a float32
    run stores η = 0.1 as 0.100000001; the float64 replay compares exactly)."""
    for group, wanted in _figures()[model]["inputs"].items():
        for key, value in wanted.items():
            got = have.get(f"{group}.{key}")
            close = got is not None and math.isfinite(got) and abs(got - value) <= rel * max(1.0, abs(value))
            if not close:
                return f"{group}.{key}={got}, where the post has {value}"
    return None
