"""Diagnoses in words, from what :class:`~backprop_lab.monitors.backprop_view.BackpropViewMonitor` recorded.

Pure functions on a :class:`History` (the logged steps and their values, no torch): the Backprop tab
shows them beside the graph, and training prints them as its closing lines.

- ``dead_unit``: the post's ReLU unit h is dead: z1 ≤ 0 on every sample, so ReLU′(z1) = 0 and no
  gradient reaches w1 again;
- ``dead_layer`` / ``dying_layer``: every unit / at least half the units of a ReLU layer are dead;
- ``vanishing_gradients``: the last layer's gradient norm is more than 10³ times the first layer's;
- ``saturation`` (the post's hidden unit) / ``saturated_layer`` (a layer, where the history carries
  ``<layer>/saturation``): a sigmoid or tanh unit whose derivative stays below
  :data:`SATURATION_THRESHOLD`, so almost no gradient passes it (the post's §6, "small gradients");
- ``divergence``: the loss became inf or NaN, or grew a thousandfold; where the sharpness was measured
  (:class:`SharpnessPoint`, from :class:`~backprop_lab.monitors.sharpness.SharpnessMonitor`), it says whether
  η·λ_max passed 2, the edge of stability, and at which step.

:func:`diagnose` returns them in step order, each with the step it starts at. Each sentence is written
here only: training's closing lines, the Backprop tab and the replay all print these texts.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

VANISHING_RATIO = 1e3  # last / first layer gradient norm beyond this: vanishing gradients
GROWTH = 1e3  # a finite loss this many times its first value: diverging
DYING_FRACTION = 0.5  # at least this share of a ReLU layer's units dead: the layer is dying
# A sigmoid/tanh unit is saturated where its derivative is below this (σ′ < 1e-3 where |z| > 6.9, tanh′
# where |z| > 3.8): the monitors' record counts saturated units with the same number.
SATURATION_THRESHOLD = 1e-3
SATURATED_FRACTION = 0.5  # at least this share of a layer's units saturated: the layer is saturated


@dataclass(frozen=True)
class Diagnosis:
    step: int  # the step the condition starts at (the first logged step of its last unbroken stretch)
    kind: str  # dead_unit | dead_layer | dying_layer | saturation | saturated_layer | vanishing_gradients | divergence
    text: str  # what happened, why, and what helps, in one paragraph
    where: str | None = None  # the node or layer it concerns ("h", "act2", "fc1"), None for the whole run


@dataclass(frozen=True)
class SharpnessPoint:
    """λ_max, the largest eigenvalue of the loss Hessian, measured before the update of ``step``, with the
    optimizer's η, momentum μ and weight decay there. Gradient descent on a quadratic of curvature λ is stable
    while η·(λ + weight decay) < 2(1 + μ): 2 for plain gradient descent."""

    step: int
    lambda_max: float
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0

    @property
    def product(self) -> float:
        """η·λ_max (η·(λ_max + weight decay) with weight decay)."""
        return self.lr * (self.lambda_max + self.weight_decay)

    @property
    def edge(self) -> float:
        """The largest stable value of :attr:`product`: 2(1 + μ)."""
        return 2 * (1 + self.momentum)


@dataclass
class History:
    """The logged steps of one run and their values: ``values[i * len(fields) + j]`` is field j at ``steps[i]``.

    ``layout`` is the tag's description as the monitor writes it (``kind`` "graph" or "layers",
    ``model``, ``fields``, for layers ``layers``; see docs/backprop_view.md). Stored flat in arrays of
    doubles: 8 bytes a value, so a long run costs little memory.
    """

    layout: dict
    steps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))

    def __post_init__(self) -> None:
        self.fields: list[str] = list(self.layout["fields"])
        self._index = {name: j for j, name in enumerate(self.fields)}

    @classmethod
    def from_rows(cls, layout: dict, rows: Iterable[tuple[int, Sequence[float]]]) -> History:
        history = cls(layout)
        for step, row in rows:
            history.add(step, row)
        return history

    @property
    def kind(self) -> str:
        return self.layout["kind"]

    @property
    def model(self) -> str:
        return self.layout.get("model", "")

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, row: Sequence[float]) -> None:
        if len(row) != len(self.fields):
            raise ValueError(f"a row of {len(row)} values for {len(self.fields)} fields")
        self.steps.append(int(step))
        self.values.extend(row)  # the array takes numbers only

    def has(self, name: str) -> bool:
        return name in self._index

    def column(self, name: str) -> list[float]:
        """Field ``name`` at every logged step."""
        n = len(self.fields)
        return self.values[self._index[name] :: n].tolist()

    def row(self, i: int) -> dict[str, float]:
        """The values of the i-th logged step (negative i counts from the end)."""
        n = len(self.fields)
        i = i % len(self.steps)
        return dict(zip(self.fields, self.values[i * n : (i + 1) * n].tolist()))

    def index(self, step: int) -> int:
        """Where ``step`` is among the logged steps; ValueError if it is not one of them."""
        lo, hi = 0, len(self.steps)
        while lo < hi:  # steps are logged in increasing order
            mid = (lo + hi) // 2
            if self.steps[mid] < step:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(self.steps) or self.steps[lo] != step:
            raise ValueError(f"step {step} is not a logged step")
        return lo


def diagnose(history: History, sharpness: Sequence[SharpnessPoint] = ()) -> list[Diagnosis]:
    """Every diagnosis of the run, in step order; ``sharpness``: the λ_max measured, if any (for divergence)."""
    if len(history) == 0:
        return []
    found: list[Diagnosis] = []
    if history.kind == "graph":
        found += _dead_unit(history)
        found += _saturated_unit(history)
    else:
        found += _dead_layers(history)
        found += _saturated_layers(history)
        found += _vanishing(history)
    found += _divergence(history, sharpness)
    return sorted(found, key=lambda d: d.step)


def streak_start(flags: Sequence[bool], steps: Sequence[int], i: int) -> int | None:
    """The first step of the unbroken stretch of True flags that holds index i; None if flags[i] is False."""
    if not flags[i]:
        return None
    while i > 0 and flags[i - 1]:
        i -= 1
    return steps[i]


def dead_flags(history: History) -> list[bool]:
    """Per logged step, whether the post's hidden unit passes no gradient: ReLU′(z1) = 0 (batch mean)."""
    if not history.has("dh_dz1") or history.layout.get("activation") != "relu":
        return [False] * len(history)
    return [v == 0 for v in history.column("dh_dz1")]


def _s(value: float) -> str:
    """A value in a sentence: 4 significant digits."""
    return "0" if value == 0 else f"{value:.4g}"


def _times(ratio: float) -> str:
    """A large ratio in a sentence: 12,345 or 1.23e+07."""
    return f"{round(ratio):,}" if ratio < 1e6 else f"{ratio:.3g}"


# --- the post's hidden unit -----------------------------------------------------------------------


def _dead_unit(h: History) -> list[Diagnosis]:
    flags = dead_flags(h)
    if not flags or not flags[-1]:
        return []
    since = streak_start(flags, h.steps, len(flags) - 1)
    i = h.index(since)
    at = h.row(i)
    text = (
        f"The ReLU unit h is dead since step {since}: z1 = w1 · x = {_s(at['z1'])} ≤ 0 on every sample, "
        f"so h = 0 and ReLU′(z1) = 0. No gradient passes the unit: ∂L/∂z1 = ∂L/∂h · ReLU′(z1) = 0 and "
        f"∂L/∂w1 = 0, so w1 stays at {_s(at['w1'])}"
    )
    text += "; with h = 0, ∂L/∂w2 = ∂L/∂ŷ · h = 0 as well, and the loss stays at " + _s(h.column("loss")[-1])
    if i > 0:
        before = h.row(i - 1)
        text += (
            f". The update of step {h.steps[i - 1]} did it: w1 went from {_s(before['w1'])} to "
            f"{_s(before['w1_new'])} (η = {_s(before['lr_w1'])}, ∂L/∂w1 = {_s(before['dL_dw1'])}), past w1 · x = 0"
        )
    text += (
        ". What helps: a smaller learning rate η, so that one update does not push z1 below 0; "
        "leaky_relu, whose slope a > 0 for z ≤ 0 keeps the gradient flowing; or another start (w1) with w1 · x "
        "further from 0."
    )
    return [Diagnosis(since, "dead_unit", text, "h")]


def saturation_flags(history: History) -> list[bool]:
    """Per logged step, whether the post's sigmoid/tanh unit is saturated: its derivative below the threshold."""
    if not history.has("dh_dz1") or history.layout.get("activation") not in ("sigmoid", "tanh"):
        return [False] * len(history)
    return [v < SATURATION_THRESHOLD for v in history.column("dh_dz1")]


def _saturated_unit(h: History) -> list[Diagnosis]:
    flags = saturation_flags(h)
    # The final forward pass has a derivative too: the last row says whether the unit ends saturated.
    if not flags or not flags[-1]:
        return []
    since = streak_start(flags, h.steps, len(flags) - 1)
    i = h.index(since)
    at = h.row(i)
    act = h.layout["activation"]
    symbol = "σ′" if act == "sigmoid" else "tanh′"
    prime = "σ′(z1) = σ(z1)·(1 − σ(z1))" if act == "sigmoid" else "tanh′(z1) = 1 − tanh²(z1)"
    text = (
        f"The {act} unit h is saturated since step {since}: z1 = w1 · x = {_s(at['z1'])}, so h = {_s(at['h'])} "
        f"and {prime} = {_s(at['dh_dz1'])}, below {SATURATION_THRESHOLD:g}. Almost no gradient passes the unit: "
        f"∂L/∂z1 = ∂L/∂h · {symbol}(z1), so w1 barely moves and the loss stays near {_s(h.column('loss')[-1])} "
        "(the post's §6: small gradients)"
    )
    if i > 0:
        before = h.row(i - 1)
        text += (
            f". The update of step {h.steps[i - 1]} did it: w1 went from {_s(before['w1'])} to "
            f"{_s(before['w1_new'])} (η = {_s(before['lr_w1'])}, ∂L/∂w1 = {_s(before['dL_dw1'])})"
        )
    text += (
        ". What helps: a smaller learning rate η, so that one update does not throw z1 far from 0; another start "
        "(w1) with w1 · x near 0, where the derivative is largest; or relu, whose derivative is 1 where it is active."
    )
    return [Diagnosis(since, "saturation", text, "h")]


def _saturated_layers(h: History) -> list[Diagnosis]:
    found = []
    for layer in h.layout.get("layers", []):
        name = layer["name"]
        if not h.has(f"{name}/saturation"):
            continue
        fractions = h.column(f"{name}/saturation")
        with_value = [i for i, f in enumerate(fractions) if not math.isnan(f)]
        if not with_value or not fractions[with_value[-1]] >= SATURATED_FRACTION:
            continue
        last = with_value[-1]
        flags = [f >= SATURATED_FRACTION or (math.isnan(f) and j > last) for j, f in enumerate(fractions)]
        since = streak_start(flags, h.steps, last)
        text = (
            f"Layer {name} ({layer['type']}) is saturated since step {since}: {fractions[last]:.0%} of its "
            f"{layer.get('units', '?')} units have a derivative below {SATURATION_THRESHOLD:g} on every sample of "
            f"the batch (at step {h.steps[0]}: {fractions[0]:.0%}), so almost no gradient reaches the weights that "
            "feed them (the post's §6: small gradients). What helps: a smaller learning rate η, another init "
            "(smaller weights keep z near 0), or relu activations."
        )
        found.append(Diagnosis(since, "saturated_layer", text, name))
    return found


# --- wider networks --------------------------------------------------------------------------------


def _layers(h: History, kind: str) -> list[dict]:
    return [layer for layer in h.layout.get("layers", []) if layer["type"] == kind or kind == "*"]


def _dead_layers(h: History) -> list[Diagnosis]:
    found = []
    for layer in h.layout.get("layers", []):
        name = layer["name"]
        if not h.has(f"{name}/dead_fraction"):
            continue
        fractions = h.column(f"{name}/dead_fraction")
        last = fractions[-1]
        if last >= 1.0:
            kind, share = "dead_layer", "all the units"
            since = streak_start([f >= 1.0 for f in fractions], h.steps, len(fractions) - 1)
        elif last >= DYING_FRACTION:
            kind, share = "dying_layer", f"{last:.0%} of the units"
            since = streak_start([f >= DYING_FRACTION for f in fractions], h.steps, len(fractions) - 1)
        else:
            continue
        text = (
            f"Layer {name} is {'dead' if kind == 'dead_layer' else 'dying'} since step {since}: {share} "
            f"({layer.get('units', '?')} in the layer) have ReLU′(z) = 0 on every sample of the batch (z ≤ 0, or z < 0 "
            "where ReLU′(0) = 1), so no gradient reaches the weights that feed them; such units never come back "
            f"(at step {h.steps[0]}: {fractions[0]:.0%}). "
            "What helps: a smaller learning rate η (large first updates push z below 0 for every input), "
            "model.activation=leaky_relu, or model.init=he (and no negative bias_init)."
        )
        found.append(Diagnosis(since, kind, text, name))
    return found


def gradient_ratios(h: History) -> list[float]:
    """Per logged step, ‖∂L/∂W‖ of the last linear layer over that of the first (NaN where not defined)."""
    linear = _layers(h, "linear")
    if len(linear) < 2:
        return [math.nan] * len(h)
    first, last = (h.column(f"{layer['name']}/grad_norm") for layer in (linear[0], linear[-1]))
    return [b / a if a > 0 and math.isfinite(a) and math.isfinite(b) else math.nan for a, b in zip(first, last)]


def _vanishing(h: History) -> list[Diagnosis]:
    ratios = gradient_ratios(h)
    with_grad = [i for i, r in enumerate(ratios) if not math.isnan(r)]
    if not with_grad:
        return []
    i = with_grad[-1]
    if not ratios[i] > VANISHING_RATIO:
        return []
    flags = [r > VANISHING_RATIO or (math.isnan(r) and j > i) for j, r in enumerate(ratios)]
    since = streak_start(flags, h.steps, i)
    linear = _layers(h, "linear")
    first, last = linear[0]["name"], linear[-1]["name"]
    at = h.row(i)
    acts = sorted({layer["type"] for layer in _layers(h, "*") if layer["type"] != "linear"})
    why = (
        "each sigmoid layer multiplies the gradient by σ′(z) ≤ 1/4 and by its weights on the way back"
        if "sigmoid" in acts
        else "each layer multiplies the gradient by its local derivative and its weights on the way back"
    )
    text = (
        f"Vanishing gradients since step {since}: at step {h.steps[i]}, ‖∂L/∂W‖ of {first} is {_s(at[f'{first}/grad_norm'])}, "
        f"{_times(ratios[i])} times smaller than that of {last} ({_s(at[f'{last}/grad_norm'])}), beyond 10³: {why}, "
        f"so {first} barely moves (update ratio {_s(at[f'{first}/update_ratio'])}). What helps: fewer layers, "
        "relu or leaky_relu activations (derivative 1 where active), or model.init=he."
    )
    return [Diagnosis(since, "vanishing_gradients", text, first)]


# --- divergence ------------------------------------------------------------------------------------


def _divergence(h: History, sharpness: Sequence[SharpnessPoint] = ()) -> list[Diagnosis]:
    losses = h.column("loss")
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    if bad is not None:
        step, what = h.steps[bad], f"the loss became {losses[bad]} at step {h.steps[bad]}"
        ref = bad
    else:
        first = losses[0]
        if not (first > 0 and losses[-1] > GROWTH * first):
            return []
        ref = next(i for i, v in enumerate(losses) if v > 10 * first)
        step = h.steps[ref]
        what = (
            f"the loss grew from {_s(first)} at step {h.steps[0]} to {_s(losses[-1])} at step {h.steps[-1]}, "
            f"past ten times its start at step {step}"
        )
    lr = _learning_rate(h, ref)
    text = f"Divergence: {what}, with η = {_s(lr)}. Each update overshoots the minimum by more than it corrects."
    text += sharpness_sentence(sharpness, step)
    bound = _stability_bound(h, ref)
    if bound is not None:
        text += (
            f" For ŷ = w·x the error y − ŷ is multiplied by (1 − 2ηx²) at each step, so gradient descent "
            f"converges only for η < 1/x² = {_s(bound)}: try η = {_s(bound / 2)} (one step to the minimum) or less."
        )
    else:
        text += f" What helps: a smaller learning rate, e.g. η = {_s(lr / 10)}."
    return [Diagnosis(step, "divergence", text, None)]


def divergence_without_history(step: int | None, lr: float, sharpness: Sequence[SharpnessPoint] = ()) -> Diagnosis:
    """The divergence sentence where no step was recorded (the monitors off): the step, η and the sharpness."""
    text = (
        f"Divergence: the loss became non-finite at step {step}, with η = {_s(lr)}. Each update overshoots the "
        f"minimum by more than it corrects.{sharpness_sentence(sharpness, step)} What helps: a smaller learning "
        f"rate, e.g. η = {_s(lr / 10)}."
    )
    return Diagnosis(step if step is not None else 0, "divergence", text, None)


def sharpness_sentence(sharpness: Sequence[SharpnessPoint], step: int | None) -> str:
    """Whether η·λ_max passed the edge of stability, 2, by ``step``: the first measurement past it, else the
    closest to it; "" where nothing was measured by then. Starts with a space."""
    measured = [
        p
        for p in sharpness
        if (step is None or p.step <= step) and math.isfinite(p.lambda_max) and math.isfinite(p.lr) and p.lr > 0
    ]
    if not measured:
        return ""
    over = next((p for p in measured if p.product > p.edge), None)
    p = over or max(measured, key=lambda q: q.product / q.edge)
    if p.weight_decay:  # the update w − η·(∇L + wd·w) sees the curvature λ + wd
        symbol, curvature = "η·(λ_max + wd)", "(λ_max + wd)"
        product = f"{symbol} = {_s(p.lr)} · ({_s(p.lambda_max)} + {_s(p.weight_decay)}) = {_s(p.product)}"
    else:
        symbol, curvature = "η·λ_max", "λ_max"
        product = f"{symbol} = {_s(p.lr)} · {_s(p.lambda_max)} = {_s(p.product)}"
    edge, edge_value = ("2", "2") if p.momentum == 0 else ("2(1 + μ)", f"2(1 + μ) = {_s(p.edge)}")
    if over is None:
        return (
            f" The sharpness stayed below the edge of stability at every measurement up to step {measured[-1].step}: "
            f"at most {product} ≤ {edge_value} (step {p.step}). So the steps did not overshoot along the sharpest "
            "direction where measured: the curvature rose between measurements (measure every step: "
            "monitor.sharpness=1), or the loss is far from its quadratic approximation at this step size."
        )
    text = (
        f" The sharpness passed the edge of stability at step {p.step}: λ_max, the largest eigenvalue of the loss "
        f"Hessian, was {_s(p.lambda_max)}, so {product} > {edge_value} (stable only for η < {edge}/{curvature} = "
        f"{_s(p.edge / (p.lambda_max + p.weight_decay))})"
    )
    if p.momentum == 0:
        text += (
            f", and each step multiplies the error along the sharpest direction by |1 − {symbol}| = {_s(p.product - 1)}"
        )
    return text + "."


def _learning_rate(h: History, i: int) -> float:
    row = h.row(i)
    rates = [v for k, v in row.items() if (k.startswith("lr_") or k.endswith("/lr")) and math.isfinite(v)]
    return max(rates) if rates else math.nan


def _stability_bound(h: History, i: int) -> float | None:
    """The post's linear net: η < 1/x² (batch of one; the mean of x over a batch otherwise, roughly)."""
    if h.kind != "graph" or h.model != "linear":
        return None
    x = h.row(i)["x"]
    return 1 / (x * x) if x != 0 and math.isfinite(x) else None
