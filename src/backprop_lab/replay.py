"""Replay one training step of the post's networks, number by number, beside the post's figures.

:func:`replay` runs one real step of a ``linear``, ``sigmoid`` or ``relu`` network, built from the
config as training builds it: forward, loss, the hand-written backward, one update by the configured
optimizer, the new forward pass. It runs in float64, so the "exact" column is exact to its 10 printed
decimals. It records every quantity the post names, in the post's order, and the gradients are the
ones the backward pass computed, not a second formula:

- ∂L/∂ŷ, ∂L/∂h and ∂L/∂z1 come from tensor hooks on ŷ, h and z1 (z1 and h are caught by a forward
  hook on the activation layer ``net.h``) as the gradient flows through them;
- ∂L/∂w, ∂L/∂w1, ∂L/∂w2 are the parameters' ``.grad``;
- a local derivative (σ′(z1), ReLU′(z1), ∂ŷ/∂w) is its Function's own backward, run once more with
  an incoming gradient of 1.

The post's printed figures live in ``post_figures.yaml``; with the post's inputs each row shows the
post's figure and a mark where it is off by more than one unit in its last printed digit.
:func:`to_markdown`, :func:`to_json` and :func:`print_replay` render a :class:`Replay`.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from importlib import resources
from itertools import groupby

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from backprop_lab import functions as F
from backprop_lab import models
from backprop_lab.config import ConfigError

# Exact types: a subclass may compute something the rows below do not describe.
POST_NETWORKS: dict[type[nn.Module], str] = {
    models.LinearNet: "linear",
    models.SigmoidNet: "sigmoid",
    models.ReLUNet: "relu",
}
PHASES = ("forward", "backward", "update", "new forward")


@dataclass
class PostFigure:
    """The post's figure for a row, as printed, and how far it is from the exact value."""

    figure: str  # as printed, e.g. "-1.394"
    section: str  # where the post prints it
    diff: float  # post − exact
    marked: bool  # off by more than one unit in the figure's last printed digit


@dataclass
class Row:
    """One quantity: its value, and the formula that gave it with the factors' values filled in."""

    key: str  # stable id, e.g. "dL_dw1" (docs/replay.md lists them)
    phase: str  # one of PHASES
    quantity: str  # the post's notation, e.g. "∂L/∂w1"
    formula: str  # e.g. "∂L/∂ŷ · w2 · σ′(z1) · x"
    with_values: str  # the same with each factor's value
    value: float
    post: PostFigure | None = None


@dataclass
class Replay:
    model: str  # linear | sigmoid | relu
    section: str  # the post's section for this network
    inputs: dict[str, float]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    not_post_inputs: str | None = None  # why the post's column is left out; None: it is shown

    @property
    def post_column(self) -> bool:
        return self.not_post_inputs is None

    @property
    def post_figures(self) -> int:
        return sum(row.post is not None for row in self.rows)

    @property
    def marks(self) -> int:
        return sum(row.post is not None and row.post.marked for row in self.rows)

    @property
    def summary(self) -> str:
        """The closing line: how many of the post's figures are marked, and which."""
        if not self.post_column:
            return f"the post's column is left out: these are not the post's inputs ({self.not_post_inputs})"
        line = (
            f"{self.marks} of {self.post_figures} post figures differ from the exact value "
            "by more than one unit in their last printed digit"
        )
        marked = [f"{row.quantity} ({row.post.section})" for row in self.rows if row.post and row.post.marked]
        return line + (": " + ", ".join(marked) if marked else "")

    def row(self, key: str) -> Row:
        return next(row for row in self.rows if row.key == key)

    def to_dict(self) -> dict:
        """The JSON document (its keys are documented in docs/replay.md)."""
        return {
            "model": self.model,
            "section": self.section,
            "dtype": "float64",
            "inputs": self.inputs,
            "post_column": self.post_column,
            "rows": [asdict(row) for row in self.rows],
            "notes": self.notes,
            "post_figures": self.post_figures,
            "marks": self.marks,
            "summary": self.summary,
        }


# --- the step -----------------------------------------------------------------------------------


def replay(cfg: DictConfig, net: nn.Module | None = None) -> Replay:
    """One training step of ``cfg.model`` on ``cfg.data`` with ``cfg.optim``, quantity by quantity.

    ``net``: replay a float64 copy of this network (training passes its own, before it trains) instead
    of a fresh ``instantiate(cfg.model)``. Raises ConfigError for a network or data the post has not.
    """
    name, net = _post_network(cfg, net)
    x, y = (torch.tensor([[float(cfg.data[k])]], dtype=torch.float64) for k in ("x", "y"))
    v = _one_step(net, x, y, instantiate(cfg.optim)(net.parameters()))
    v.update(x=float(cfg.data.x), y=float(cfg.data.y), lr=float(cfg.optim.lr), wd=float(cfg.optim.weight_decay))

    grad_at_zero = net.h.grad_at_zero if name == "relu" else None
    rows = _linear_rows(v) if name == "linear" else _hidden_rows(v, grad_at_zero)
    notes = _relu_notes(v, grad_at_zero) if name == "relu" else []
    post = post_figures()[name]
    result = Replay(name, post["section"], _inputs(cfg), rows, notes, _not_post_inputs(cfg, post["inputs"]))
    if result.post_column:
        for row in rows:
            if row.key in post["figures"]:
                row.post = _post_figure(post["figures"][row.key], row.value)
    return result


def _post_network(cfg: DictConfig, net: nn.Module | None) -> tuple[str, nn.Module]:
    """The network's name and a float64 network to replay: a copy of ``net``, or one built from ``cfg``.

    Built under float64 from the start, so that a start value such as w1 = 0.1 is not first rounded to
    float32; a copy of a float32 network keeps the float32 value the run really starts from.
    """
    cls = type(net) if net is not None else get_class(cfg.model._target_)
    if cls not in POST_NETWORKS:
        raise ConfigError(
            f"model._target_={cfg.model._target_!r} is not accepted by the replay: "
            "use model=linear, sigmoid or relu (the post's networks)."
        )
    if "x" not in cfg.data or "y" not in cfg.data:
        raise ConfigError(
            f"data._target_={cfg.data._target_!r} is not accepted by the replay: it needs the post's one "
            "example (data.x, data.y); use data=post_linear or data=post_hidden."
        )
    if net is not None:
        return POST_NETWORKS[cls], copy.deepcopy(net).double()
    with _default_dtype(torch.float64):
        return POST_NETWORKS[cls], instantiate(cfg.model).double()


@contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _scalar(t: Tensor) -> float:
    return t.item() + 0.0  # + 0.0 turns −0.0 into 0.0: a zero prints as 0, whatever its sign bit


def _one_step(net: nn.Module, x: Tensor, y: Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Forward, backward, one update and the new forward pass of ``net``; every value as a float."""
    taps: dict[str, Tensor] = {}  # z1 and h, as the activation layer sees them
    handle = net.h.register_forward_hook(lambda m, i, o: taps.update(z1=i[0], h=o)) if hasattr(net, "h") else None
    try:
        v = {name: _scalar(p) for name, p in net.named_parameters()}
        y_hat = net(x)
        loss = F.mse_loss(y_hat, y)  # the post's L = (y − ŷ)², the loss training uses
        v.update({k: _scalar(t) for k, t in taps.items()}, y_hat=_scalar(y_hat), loss=_scalar(loss))

        flowing = {"y_hat": y_hat, **taps}
        hooks = [t.register_hook(_keep(v, f"dL_d{k}")) for k, t in flowing.items()]
        optimizer.zero_grad()
        loss.backward(retain_graph=True)  # kept: the local derivatives below run backward once more
        for hook in hooks:
            hook.remove()
        v.update({f"dL_d{name}": _scalar(p.grad) for name, p in net.named_parameters()})
        if taps:
            v["dh_dz1"] = _local_derivative(taps["h"], taps["z1"])
        else:
            v["dy_hat_dw"] = _local_derivative(y_hat, net.w)

        optimizer.step()
        v.update({f"{name}_new": _scalar(p) for name, p in net.named_parameters()})
        with torch.no_grad():
            y_hat = net(x)
            v.update({f"{k}_new": _scalar(t) for k, t in taps.items()})
            v.update(y_hat_new=_scalar(y_hat), loss_new=_scalar(F.mse_loss(y_hat, y)))
    finally:
        if handle is not None:
            handle.remove()
    return v


def _keep(v: dict[str, float], key: str):
    def hook(grad: Tensor) -> None:
        v[key] = _scalar(grad)

    return hook


def _local_derivative(output: Tensor, input: Tensor) -> float:
    """d output / d input, from the backward of the Function that made ``output``, fed a gradient of 1."""
    (grad,) = torch.autograd.grad(output, input, torch.ones_like(output), retain_graph=True)
    return _scalar(grad)


# --- the rows, in the post's order ----------------------------------------------------------------


def _s(value: float) -> str:
    """A value inside a formula: 6 significant digits."""
    return "0" if value == 0 else f"{value:.6g}"


def _f(value: float) -> str:
    """A factor in a product: as :func:`_s`, a negative value in parentheses."""
    s = _s(value)
    return f"({s})" if s.startswith("-") else s


def exact(value: float) -> str:
    """The exact column: 10 decimals without trailing zeros; an exact zero says so."""
    if value == 0:
        return "0 (exactly)"
    if abs(value) < 1e-6 or abs(value) >= 1e9:
        return f"{value:.10e}"
    return f"{value:.10f}".rstrip("0").rstrip(".")


def _loss_rows(v: dict[str, float], new: str = "") -> list[Row]:
    y, y_hat = v["y"], v[f"y_hat{new}"]
    prime = "′" if new else ""
    phase = "new forward" if new else "forward"
    return [Row(f"loss{new}", phase, f"L{prime}", f"(y − ŷ{prime})²", f"({_s(y)} - {_f(y_hat)})²", v[f"loss{new}"])]


def _update_row(v: dict[str, float], w: str) -> Row:
    # torch.optim.SGD's first step: momentum's buffer starts as the gradient itself, so only
    # weight decay (λ) changes the update from the post's w − η·∂L/∂w.
    g = f"dL_d{w}"
    if v["wd"]:
        formula = f"{w} − η · (∂L/∂{w} + λ · {w})"
        values = f"{_s(v[w])} - {_s(v['lr'])} · ({_f(v[g])} + {_s(v['wd'])} · {_f(v[w])})"
    else:
        formula = f"{w} − η · ∂L/∂{w}"
        values = f"{_s(v[w])} - {_s(v['lr'])} · {_f(v[g])}"
    return Row(f"{w}_new", "update", f"{w}′", formula, values, v[f"{w}_new"])


def _dl_dy_hat_row(v: dict[str, float]) -> Row:
    return Row(
        "dL_dy_hat", "backward", "∂L/∂ŷ", "−2 · (y − ŷ)", f"-2 · ({_s(v['y'])} - {_f(v['y_hat'])})", v["dL_dy_hat"]
    )


def _linear_rows(v: dict[str, float]) -> list[Row]:
    """§3: ŷ = w·x."""
    return [
        Row("y_hat", "forward", "ŷ", "w · x", f"{_f(v['w'])} · {_f(v['x'])}", v["y_hat"]),
        *_loss_rows(v),
        _dl_dy_hat_row(v),
        Row("dy_hat_dw", "backward", "∂ŷ/∂w", "x", _s(v["x"]), v["dy_hat_dw"]),
        Row("dL_dw", "backward", "∂L/∂w", "∂L/∂ŷ · ∂ŷ/∂w", f"{_f(v['dL_dy_hat'])} · {_f(v['dy_hat_dw'])}", v["dL_dw"]),
        _update_row(v, "w"),
        Row("y_hat_new", "new forward", "ŷ′", "w′ · x", f"{_f(v['w_new'])} · {_f(v['x'])}", v["y_hat_new"]),
        *_loss_rows(v, "_new"),
    ]


def _hidden_rows(v: dict[str, float], grad_at_zero: int | None) -> list[Row]:
    """§4 and §5: z1 = w1·x, h = σ(z1) or ReLU(z1), ŷ = w2·h; ``grad_at_zero`` None means σ."""
    if grad_at_zero is None:
        d_act, act = "σ′(z1)", "σ({})"
        prime_formula, prime_values = "σ(z1) · (1 − σ(z1))", f"{_f(v['h'])} · (1 - {_f(v['h'])})"
    else:
        d_act, act = "ReLU′(z1)", "max(0, {})"
        prime_formula, prime_values = _relu_prime(v["z1"], grad_at_zero)
    return [
        Row("z1", "forward", "z1", "w1 · x", f"{_f(v['w1'])} · {_f(v['x'])}", v["z1"]),
        Row("h", "forward", "h", act.format("z1"), act.format(_s(v["z1"])), v["h"]),
        Row("y_hat", "forward", "ŷ", "w2 · h", f"{_f(v['w2'])} · {_f(v['h'])}", v["y_hat"]),
        *_loss_rows(v),
        _dl_dy_hat_row(v),
        Row("dL_dw2", "backward", "∂L/∂w2", "∂L/∂ŷ · h", f"{_f(v['dL_dy_hat'])} · {_f(v['h'])}", v["dL_dw2"]),
        Row("dL_dh", "backward", "∂L/∂h", "∂L/∂ŷ · w2", f"{_f(v['dL_dy_hat'])} · {_f(v['w2'])}", v["dL_dh"]),
        Row("dh_dz1", "backward", d_act, prime_formula, prime_values, v["dh_dz1"]),
        Row("dL_dz1", "backward", "∂L/∂z1", f"∂L/∂h · {d_act}", f"{_f(v['dL_dh'])} · {_f(v['dh_dz1'])}", v["dL_dz1"]),
        Row(
            "dL_dw1",
            "backward",
            "∂L/∂w1",
            f"∂L/∂ŷ · w2 · {d_act} · x",
            " · ".join(_f(v[k]) for k in ("dL_dy_hat", "w2", "dh_dz1", "x")),
            v["dL_dw1"],
        ),
        _update_row(v, "w2"),  # the post updates w2 first
        _update_row(v, "w1"),
        Row("z1_new", "new forward", "z1′", "w1′ · x", f"{_f(v['w1_new'])} · {_f(v['x'])}", v["z1_new"]),
        Row("h_new", "new forward", "h′", act.format("z1′"), act.format(_s(v["z1_new"])), v["h_new"]),
        Row("y_hat_new", "new forward", "ŷ′", "w2′ · h′", f"{_f(v['w2_new'])} · {_f(v['h_new'])}", v["y_hat_new"]),
        *_loss_rows(v, "_new"),
    ]


def _relu_prime(z1: float, grad_at_zero: int) -> tuple[str, str]:
    if z1 > 0:
        return "1, as z1 > 0", f"z1 = {_s(z1)} > 0"
    if z1 < 0:
        return "0, as z1 < 0", f"z1 = {_s(z1)} < 0"
    return "relu_grad_at_zero, as z1 = 0", f"model.relu_grad_at_zero = {grad_at_zero}"


def _relu_notes(v: dict[str, float], grad_at_zero: int) -> list[str]:
    """What the post says of ReLU, for this step: a dead unit, the undefined ReLU′(0), a unit dying."""
    z1, notes = v["z1"], []
    stopped = f"∂L/∂z1 = {exact(v['dL_dz1'])} and ∂L/∂w1 = {exact(v['dL_dw1'])}, so w1 cannot change"
    if z1 < 0:
        line = (
            f"the ReLU unit is dead: z1 = w1 · x = {_s(z1)} < 0, so h = 0 and ReLU′(z1) = 0, "
            f"and no gradient passes the unit: {stopped}"
        )
        if v["dL_dw2"] == 0 and v["dL_dw1"] == 0:
            line += f"; with h = 0, ∂L/∂w2 = ∂L/∂ŷ · h = 0 as well: no weight moves, the loss stays at {_s(v['loss'])}"
        notes.append(line)
    elif z1 == 0:
        line = (
            f'z1 = w1 · x = 0 exactly, where ReLU′ is undefined (the post: "set to 0 or 1"); '
            f"model.relu_grad_at_zero={grad_at_zero} sets ReLU′(0) = {grad_at_zero}"
        )
        if grad_at_zero == 0:
            line += f", so no gradient passes the unit: {stopped}"
        else:
            line += f", so the gradient passes as if the unit were active: ∂L/∂w1 = {exact(v['dL_dw1'])}"
        notes.append(line)
    z1_new = v["z1_new"]
    if v["dh_dz1"] != 0 and (z1_new < 0 or (z1_new == 0 and grad_at_zero == 0)):
        notes.append(
            f"the update moved z1 to z1′ = w1′ · x = {_s(z1_new)}: from the next step on ReLU′ = 0, "
            "the unit is dead and w1 stops moving"
        )
    return notes


# --- the post's column ------------------------------------------------------------------------------


def post_figures() -> dict:
    """``post_figures.yaml``: per network, its section, the post's inputs and the printed figures."""
    text = resources.files("backprop_lab").joinpath("post_figures.yaml").read_text(encoding="utf-8")
    return OmegaConf.to_container(OmegaConf.create(text))


def compare(figure: str, exact_value: float) -> tuple[float, bool]:
    """(post − exact, whether that is more than one unit in the figure's last printed digit).

    "1.259" has its last digit in the thousandths, so it is marked only if |1.259 − exact| > 0.001.
    Decimal arithmetic: the figure is read exactly, and the float's exact binary value is used.
    """
    printed = Decimal(figure)
    unit = Decimal(1).scaleb(printed.as_tuple().exponent)
    gap = printed - Decimal(exact_value)
    return float(gap), abs(gap) > unit


def _post_figure(entry: dict, value: float) -> PostFigure:
    diff, marked = compare(entry["figure"], value)
    return PostFigure(entry["figure"], entry["section"], diff, marked)


def _not_post_inputs(cfg: DictConfig, inputs: dict) -> str | None:
    """None if ``cfg`` has every one of the post's inputs, else the first key that differs."""
    for group, values in inputs.items():
        for key, wanted in values.items():
            have = OmegaConf.select(cfg, f"{group}.{key}")
            if have is None or float(have) != float(wanted):
                return f"{group}.{key}={have}, where the post has {wanted}"
    return None


def _inputs(cfg: DictConfig) -> dict[str, float]:
    out = {f"model.{k}": v for k, v in cfg.model.items() if not str(k).startswith("_")}
    out.update({"data.x": float(cfg.data.x), "data.y": float(cfg.data.y)})
    out.update({f"optim.{k}": float(cfg.optim[k]) for k in ("lr", "momentum", "weight_decay")})
    return out


# --- rendering -----------------------------------------------------------------------------------


def _title(r: Replay) -> str:
    return f"Replay of one training step, model={r.model} (the post's {r.section}), float64"


def _header(r: Replay) -> list[str]:
    return ["phase", "quantity", "formula", "with values", "exact", *(["post", "check"] if r.post_column else [])]


def _check(row: Row) -> str:
    """✓ within one unit of the post's last digit; else ✗ with the exact value and the difference."""
    post = row.post
    if post is None:
        return ""
    if not post.marked:
        return "✓"
    decimals = max(0, -Decimal(post.figure).as_tuple().exponent) + 1  # one digit more than the post
    return f"✗ exact {row.value:.{decimals}f}, post − exact = {post.diff:+.{decimals}f}"


def _table_rows(r: Replay) -> list[list[str]]:
    """The cells of every row; the phase is named on its first row only."""
    cells = []
    for phase, rows in groupby(r.rows, key=lambda row: row.phase):
        for i, row in enumerate(rows):
            line = [phase if i == 0 else "", row.quantity, row.formula, row.with_values, exact(row.value)]
            if r.post_column:
                line += [row.post.figure if row.post else "", _check(row)]
            cells.append(line)
    return cells


def to_markdown(r: Replay) -> str:
    """A markdown table, then the notes and the closing line (what TensorBoard's text tab shows)."""
    lines = [f"**{_title(r)}**", "", "| " + " | ".join(_header(r)) + " |", "|" + " --- |" * len(_header(r))]
    lines += ["| " + " | ".join(cells) + " |" for cells in _table_rows(r)]
    lines += [""] + [f"- {note}" for note in r.notes] + ([""] if r.notes else []) + [r.summary]
    return "\n".join(lines)


def to_json(r: Replay) -> str:
    return json.dumps(r.to_dict(), indent=2, ensure_ascii=False)


def print_replay(r: Replay, fmt: str = "table") -> None:
    """Print ``r`` to stdout as ``fmt``: table (rich), markdown or json."""
    if fmt == "markdown":
        print(to_markdown(r))
    elif fmt == "json":
        print(to_json(r))
    else:
        _print_rich(r)


def _print_rich(r: Replay) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=_title(r), title_justify="left")
    for name in _header(r):
        table.add_column(name, justify="right" if name in ("exact", "post") else "left")
    last_phase = None
    for row, cells in zip(r.rows, _table_rows(r)):
        if last_phase is not None and row.phase != last_phase:
            table.add_section()
        last_phase = row.phase
        marked = row.post is not None and row.post.marked
        # Text, not markup: formulas hold brackets that rich would read as styles.
        table.add_row(
            *(Text(c, style="bold red" if marked and j == len(cells) - 1 else "") for j, c in enumerate(cells))
        )
    console = Console()
    console.print(table)
    for note in r.notes:
        console.print(Text(note, style="yellow"))
    console.print(Text(r.summary, style="bold"))


def log_replay(trainer, cfg: DictConfig, net: nn.Module) -> None:
    """Write the replay of the run's first step, as markdown, to its TensorBoard (text, tag ``replay``, step 0).

    Runs on a copy of ``net`` before training; a network that is not one of the post's is skipped.
    """
    from backprop_lab.monitors.common import tensorboard_writers

    try:
        result = replay(cfg, net)
    except ConfigError:  # not one of the post's networks, or not its one example: nothing to replay
        return
    for writer in tensorboard_writers(trainer):
        writer.add_text("replay", to_markdown(result), 0)
