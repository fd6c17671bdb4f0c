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

What each row is called, its formula and how its numbers fill the formula in come from
:mod:`backprop_lab.post`, as do the post's printed figures (``post_figures.yaml``) and the rule that
marks one: with the post's inputs each row shows the post's figure and a mark where it is off by more
than one unit in its last printed digit. A dead ReLU unit is said in the words of
:mod:`backprop_lab.diagnoses`. :func:`to_markdown`, :func:`to_json` and :func:`print_replay` render a
:class:`Replay`.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from itertools import groupby

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from backprop_lab import functions as F
from backprop_lab import models, post
from backprop_lab.config import ConfigError
from backprop_lab.diagnoses import History, diagnose
from backprop_lab.post import exact

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


def replay(cfg: DictConfig, net: nn.Module | None = None, optimizer=None) -> Replay:
    """One training step of ``cfg.model`` on ``cfg.data`` with ``cfg.optim``, quantity by quantity.

    ``net``: replay a float64 copy of this network (training passes its own, before it trains) instead
    of a fresh ``instantiate(cfg.model)``. ``optimizer``: what ``instantiate(cfg.optim)`` makes (a partial
    taking the parameters), where the caller has it (a batched sweep makes it once for its copies).
    Raises ConfigError for a network or data the post has not.
    """
    name, net = _post_network(cfg, net)
    x, y = (torch.tensor([[float(cfg.data[k])]], dtype=torch.float64) for k in ("x", "y"))
    v = _one_step(net, x, y, (optimizer or instantiate(cfg.optim))(net.parameters()))
    v.update(x=float(cfg.data.x), y=float(cfg.data.y), weight_decay=float(cfg.optim.weight_decay))
    v.update({f"lr_{p}": float(cfg.optim.lr) for p, _ in net.named_parameters()})

    grad_at_zero = net.h.grad_at_zero if name == "relu" else None
    rows = _rows(name, v, grad_at_zero)
    notes = _relu_notes(v, grad_at_zero) if name == "relu" else []
    figures = post.post_figures()[name]
    inputs = _inputs(cfg)
    result = Replay(name, figures["section"], inputs, rows, notes, post.not_post_inputs(name, inputs))
    if result.post_column:
        for row in rows:
            if row.key in figures["figures"]:
                row.post = _post_figure(figures["figures"][row.key], row.value)
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


def _rows(name: str, v: dict[str, float], grad_at_zero: int | None) -> list[Row]:
    """The post's quantities for network ``name`` (their notation, phase and formula: :mod:`backprop_lab.post`)
    with this step's numbers."""
    net = post.network(name, v["weight_decay"])
    rows = []
    for key in net.rows:
        q = net.q(key)
        text, filled = post.formula(net, key, v, grad_at_zero or 0)
        rows.append(Row(key, q.phase, q.label, text, filled or "", v[key]))
    return rows


def _relu_notes(v: dict[str, float], grad_at_zero: int) -> list[str]:
    """What the post says of ReLU, for this step: the undefined ReLU′(0), a dead unit, a unit dying."""
    z1, notes = v["z1"], []
    if z1 == 0:
        line = (
            f'z1 = w1 · x = 0 exactly, where ReLU′ is undefined (the post: "set to 0 or 1"); '
            f"model.relu_grad_at_zero={grad_at_zero} sets ReLU′(0) = {grad_at_zero}"
        )
        if grad_at_zero:
            line += f", so the gradient passes as if the unit were active: ∂L/∂w1 = {exact(v['dL_dw1'])}"
        notes.append(line)
    # A dead unit is said once, by the diagnoses, whether training, the tab or the replay finds it.
    step = History({"kind": "graph", "model": "relu", "activation": "relu", "fields": list(v)})
    step.add(0, list(v.values()))
    notes += [d.text for d in diagnose(step) if d.kind == "dead_unit"]
    z1_new = v["z1_new"]
    if v["dh_dz1"] != 0 and (z1_new < 0 or (z1_new == 0 and grad_at_zero == 0)):
        notes.append(
            f"the update moved z1 to z1′ = w1′ · x = {post.short(z1_new)}: from the next step on ReLU′ = 0, "
            "the unit is dead and w1 stops moving"
        )
    return notes


# --- the post's column ------------------------------------------------------------------------------


def _post_figure(entry: dict, value: float) -> PostFigure:
    diff, marked = post.compare(entry["figure"], value)
    return PostFigure(entry["figure"], entry["section"], diff, marked)


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
    figure = row.post
    if figure is None:
        return ""
    if not figure.marked:
        return "✓"
    decimals = max(0, -Decimal(figure.figure).as_tuple().exponent) + 1  # one digit more than the post
    return f"✗ exact {row.value:.{decimals}f}, post − exact = {figure.diff:+.{decimals}f}"


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
    from rich.cells import cell_len
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
    columns = list(zip(_header(r), *_table_rows(r)))
    width = sum(max(cell_len(c) for c in column) for column in columns) + 3 * len(columns) + 1  # cells, padding, rules
    if width > console.width:  # the table would wrap or cut its cells: one row a line instead
        _print_stacked(console, r)
        return
    console.print(table)
    for note in r.notes:
        console.print(Text(note, style="yellow"))
    console.print(Text(r.summary, style="bold"))


def _print_stacked(console, r: Replay) -> None:
    """The table for a terminal too narrow for it: each row one line, its cells apart by " │ ", under its
    phase. A line longer than the terminal wraps at a space, so no number is ever cut or split."""
    from rich.text import Text

    console.print(Text(_title(r), style="bold"))
    console.print(Text(" │ ".join(["quantity", "formula", "with values", "exact", *(["post", "check"] if r.post_column else [])]), style="dim"))  # fmt: skip
    for phase, rows in groupby(r.rows, key=lambda row: row.phase):
        console.print(Text(phase, style="bold"))
        for row in rows:
            line = Text("  " + " │ ".join([row.quantity, row.formula, row.with_values, exact(row.value)]))
            if r.post_column and row.post is not None:
                line.append(f" │ {row.post.figure} │ ")
                line.append(_check(row), style="bold red" if row.post.marked else "")
            console.print(line, overflow="fold")
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
