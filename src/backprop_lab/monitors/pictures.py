"""Pictures in TensorBoard's Images tab, drawn with matplotlib (Agg, no display) by one callback.

:class:`PictureMonitor` draws, every ``every_n_steps`` and once at the end of training, each picture
that applies to the run (one that does not apply is skipped without a word):

- ``pictures/loss_surface``: for a network of one or two trainable numbers (the post's nets), the
  loss over the probe set as a curve L(w) or as contours over (w1, w2), with the gradient-descent
  path the run took drawn on it;
- ``pictures/fit``: the function the network computes, with the data: ŷ(x) over the training and
  probe points (1-D regression), or the decision boundary over the plane (2-D classification);
- ``pictures/unit_activity``: layer × unit × step, each unit's active fraction (ReLU′ ≠ 0) on the
  probe set, black where the unit is dead (the probe passes a
  :class:`~backprop_lab.monitors.DeadReLUMonitor` makes);
- ``pictures/grad_norm_by_layer``: every layer's gradient norm (as applied) over the recorded steps on
  a log scale, first layer to last, so a vanishing gradient shows as a gap.

Figures are built on :class:`matplotlib.figure.Figure` and rendered by the Agg canvas directly, so
no pyplot backend is chosen and nothing opens a window.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from backprop_lab.monitors.common import probe_set, tensorboard_writers
from backprop_lab.monitors.record import StepRecorder

# Every picture, in the order drawn (backprop-lab's ``monitor.pictures`` takes these names).
PICTURES = ("loss_surface", "fit", "unit_activity", "grad_norm_by_layer")
SIZE = (6.4, 4.4)  # inches at 100 dpi: 640×440 pixels, a few tens of KB as PNG


# --- rendering ---------------------------------------------------------------------------------------


def new_figure(size: tuple[float, float] = SIZE):
    from matplotlib.figure import Figure

    # Fixed margins, not layout="constrained": the constrained solver measures every tick label and
    # cost ~0.35 s of the ~0.45 s a picture took to render here.
    fig = Figure(figsize=size, dpi=100)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.9, hspace=0.35)
    return fig


def figure_to_array(fig) -> np.ndarray:
    """The figure as an (H, W, 3) uint8 image."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_figure(trainer: Trainer, tag: str, fig, step: int) -> None:
    image = figure_to_array(fig)
    for writer in tensorboard_writers(trainer):
        writer.add_image(tag, image, step, dataformats="HWC")


# --- the loss surface of a one- or two-number network ------------------------------------------------


def trainable(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def axis_names(net: nn.Module) -> list[str]:
    """One name per trainable number: the parameter's name, indexed where it has several."""
    return [n if p.numel() == 1 else f"{n}[{i}]" for n, p in trainable(net) for i in range(p.numel())]


def loss_on_grid(net: nn.Module, loss_fn, x: Tensor, y: Tensor, thetas: Tensor) -> Tensor:
    """L(θ) for every row θ of ``thetas`` (G, k): the trainable numbers of ``net`` set to θ, on (x, y).

    One vectorised call (``torch.func.functional_call`` under ``torch.vmap``); a loss that vmap
    cannot batch is evaluated row by row instead.
    """
    named = trainable(net)
    sizes = [p.numel() for _, p in named]

    def loss_at(theta: Tensor) -> Tensor:
        parts = theta.split(sizes)
        params = {n: t.reshape(p.shape) for (n, p), t in zip(named, parts)}
        return loss_fn(torch.func.functional_call(net, params, (x,)), y)

    with torch.no_grad():
        try:
            return torch.vmap(loss_at, chunk_size=4096)(thetas)
        except RuntimeError:
            return torch.stack([loss_at(t) for t in thetas])


def _span(values: np.ndarray) -> tuple[float, float]:
    """The path's range, widened by half its length and at least 0.5 on each side."""
    lo, hi = float(values.min()), float(values.max())
    pad = max(0.5 * (hi - lo), 0.5)
    return lo - pad, hi + pad


def draw_loss_surface(names: list[str], path: np.ndarray, surface, step: int):
    """L(w) with the path ``path`` (steps, 1), or contours of L(w1, w2) with the path (steps, 2).

    ``surface(thetas) -> losses`` evaluates the loss at the rows of an (G, k) array.
    """
    fig = new_figure()
    ax = fig.add_subplot()
    path_loss = surface(path)
    if path.shape[1] == 1:
        w = np.linspace(*_span(path[:, 0]), 401)
        ax.plot(w, surface(w[:, None]), color="tab:blue", label="L(w)")
        ax.plot(path[:, 0], path_loss, "o-", color="tab:red", ms=3, lw=1, label="gradient descent")
        ax.set_xlabel(names[0])
        ax.set_ylabel("loss L")
    else:
        w1, w2 = np.meshgrid(np.linspace(*_span(path[:, 0]), 121), np.linspace(*_span(path[:, 1]), 121))
        loss = surface(np.stack([w1.ravel(), w2.ravel()], axis=1)).reshape(w1.shape)
        # log10 L, floored 4 decades below the top: the valleys of a zero minimum stay visible
        top = np.log10(max(float(np.nanmax(loss)), 1e-12))
        filled = ax.contourf(w1, w2, np.log10(np.maximum(loss, 10 ** (top - 4))), levels=25, cmap="viridis")
        fig.colorbar(filled, ax=ax, label="log₁₀ L")
        ax.plot(path[:, 0], path[:, 1], "o-", color="tab:red", ms=2.5, lw=1, label="gradient descent")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.plot(
        *(path[0] if path.shape[1] == 2 else (path[0, 0], path_loss[0])), "s", color="white", mec="k", label="start"
    )
    ax.plot(
        *(path[-1] if path.shape[1] == 2 else (path[-1, 0], path_loss[-1])),
        "*",
        color="gold",
        mec="k",
        ms=12,
        label=f"step {step}",
    )
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"loss surface and gradient-descent path, step {step}")
    return fig


# --- what the network computes, with the data -----------------------------------------------------------


def draw_fit(
    x: np.ndarray,
    y: np.ndarray,
    probe_x: np.ndarray,
    probe_y: np.ndarray,
    grid: np.ndarray,
    y_hat: np.ndarray,
    step: int,
):
    """1-D regression: training points, probe points and ŷ(x) over ``grid``."""
    fig = new_figure()
    ax = fig.add_subplot()
    ax.scatter(x, y, s=6, color="0.6", label="training data")
    ax.scatter(probe_x, probe_y, s=6, color="tab:green", label="probe set")
    ax.plot(grid, y_hat, color="tab:red", lw=2, label="network ŷ(x)")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"fitted function, step {step}")
    return fig


def draw_boundary(
    x: np.ndarray, labels: np.ndarray, g1: np.ndarray, g2: np.ndarray, out: np.ndarray, threshold: float, step: int
):
    """2-D classification: the network's output over the plane, its ``threshold`` contour, the data."""
    fig = new_figure()
    ax = fig.add_subplot()
    reach = max(float(np.nanmax(np.abs(out - threshold))), 1e-6)
    filled = ax.contourf(g1, g2, out, levels=21, cmap="RdBu_r", vmin=threshold - reach, vmax=threshold + reach)
    fig.colorbar(filled, ax=ax, label="network output")
    if out.min() < threshold < out.max():
        ax.contour(g1, g2, out, levels=[threshold], colors="k", linewidths=2)
    cls = labels > (labels.min() + labels.max()) / 2
    ax.scatter(x[~cls, 0], x[~cls, 1], s=8, color="tab:blue", edgecolors="w", linewidths=0.3, label="class 0")
    ax.scatter(x[cls, 0], x[cls, 1], s=8, color="tab:red", edgecolors="w", linewidths=0.3, label="class 1")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"decision boundary (output = {threshold:g}), step {step}")
    return fig


# --- the monitors' histories ------------------------------------------------------------------------------


# Past these sizes a picture is drawn in a summarised form, so a drawing costs O(layers + units) and stays
# under a couple of seconds however deep the network: one panel per layer up to MAX_PANELS layers, else
# one layer × step map; one line per weight up to MAX_LINES, else one layer × step map of log₁₀‖g‖.
MAX_PANELS = 6
MAX_LINES = 12


def _column_edges(steps: list[int] | np.ndarray) -> np.ndarray:
    """Column i spans steps[i] to steps[i + 1] (the last one a step wide)."""
    return np.array([*steps, steps[-1] + 1], dtype=float)


def draw_unit_activity(
    steps: list[int], activity: dict[str, list[np.ndarray]], source: str, step: int, leaky: frozenset = frozenset()
):
    """Each unit's active fraction (h > 0) at every recorded step: one panel per layer, units (rows) ×
    steps (columns); past :data:`MAX_PANELS` layers, one panel of layers × steps with the fraction of
    each layer's units that are alive. Layers in ``leaky`` pass a·g where h ≤ 0: silent is not dead."""
    layers = [n for n in activity if activity[n]]
    if len(layers) > MAX_PANELS:
        return _draw_layer_activity(steps, {n: activity[n] for n in layers}, source, step)
    heights = [max(len(activity[n][-1]), 2) for n in layers]
    fig = new_figure((SIZE[0], min(2.2 + 0.02 * sum(heights) + 0.9 * len(layers), 9.0)))
    axes = fig.subplots(len(layers), 1, sharex=True, squeeze=False, height_ratios=heights)[:, 0]
    fig.subplots_adjust(left=0.14, right=0.86, bottom=0.1, top=0.88, hspace=0.6)
    edges = _column_edges(steps)
    for ax, name in zip(axes, layers):
        grid = np.stack(activity[name], axis=1)  # units × steps
        image = ax.pcolormesh(edges, np.arange(grid.shape[0] + 1) - 0.5, grid, cmap="magma", vmin=0, vmax=1)
        ax.invert_yaxis()
        silent = float(np.mean(grid[:, -1] == 0))
        ax.set_ylabel(f"{name}\nunit", fontsize=8)
        what = "silent, leaky (not dead)" if name in leaky else "dead"
        ax.set_title(
            f"{name}: {silent:.0%} of {grid.shape[0]} units {what} at step {steps[-1]}", fontsize=8, loc="left"
        )
    axes[-1].set_xlabel("step")
    fig.colorbar(image, ax=list(axes), label="active fraction (0 = dead)")
    fig.suptitle(f"unit activity on the {source} (h > 0), step {step}", fontsize=10)
    return fig


def _draw_layer_activity(steps: list[int], activity: dict[str, list[np.ndarray]], source: str, step: int):
    fig = new_figure()
    ax = fig.add_subplot()
    alive = np.array([[float(np.mean(a > 0)) for a in activity[n]] for n in activity])  # layers × steps
    image = ax.pcolormesh(_column_edges(steps), np.arange(len(activity) + 1) - 0.5, alive, cmap="magma", vmin=0, vmax=1)
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.set_ylabel(f"layer (first {next(iter(activity))} at the top)")
    fig.colorbar(image, ax=ax, label="fraction of units alive")
    ax.set_title(f"units alive on the {source}, {len(activity)} layers, step {step}", fontsize=10)
    return fig


def draw_grad_norms(steps: np.ndarray, norms: dict[str, np.ndarray], step: int):
    """Gradient norm of each weight over the steps, log scale, coloured from first layer to last.

    An exact-zero gradient (a dead unit's, say) has no logarithm: it is marked on the bottom edge, not
    dropped. Past :data:`MAX_LINES` weights, a layer × step map of log₁₀‖g‖ instead, zeros in grey.
    """
    weights = [n for n in norms if n.endswith("weight")] or list(norms)
    if len(weights) > MAX_LINES:
        return _draw_grad_norm_map(steps, {n: norms[n] for n in weights}, step)
    from matplotlib import colormaps

    fig = new_figure()
    ax = fig.add_subplot()
    colours = colormaps["viridis"](np.linspace(0, 0.9, len(weights)))
    zero_label = "exact 0 (no gradient)"
    for name, colour in zip(weights, colours):
        values = norms[name]
        ax.plot(steps, np.where(values > 0, values, np.nan), color=colour, lw=1.2, label=name)
        zeros = steps[values == 0]
        if len(zeros):
            ax.plot(zeros, np.zeros(len(zeros)), "x", color=colour, ms=5, clip_on=False,
                    transform=ax.get_xaxis_transform(), label=zero_label)  # fmt: skip
            zero_label = None  # one legend entry for every layer's zeros
    if np.any([np.any(norms[n] > 0) for n in weights]):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("‖∂L/∂w‖")
    ax.legend(loc="best", fontsize=7)
    ax.set_title(_grad_norm_title(steps, norms, weights, step), fontsize=10)
    return fig


def _grad_norm_title(steps: np.ndarray, norms: dict[str, np.ndarray], weights: list[str], step: int) -> str:
    title = f"gradient norm by layer, step {step}"
    first, last = norms[weights[0]][-1], norms[weights[-1]][-1]
    if len(weights) > 1 and np.isfinite(first) and np.isfinite(last) and last > 0:  # no "nan" ratio once diverged
        title += f"\n‖g‖ of {weights[0]} / ‖g‖ of {weights[-1]} = {first / last:.3g} at step {steps[-1]}"
    return title


def _draw_grad_norm_map(steps: np.ndarray, norms: dict[str, np.ndarray], step: int):
    fig = new_figure()
    ax = fig.add_subplot()
    grid = np.array([norms[n] for n in norms], dtype=float)  # layers × steps
    with np.errstate(divide="ignore", invalid="ignore"):
        log_norms = np.ma.masked_invalid(np.where(grid > 0, np.log10(grid), np.nan))
    cmap = __import__("matplotlib").colormaps["viridis"].with_extremes(bad="0.6")  # zeros (and NaN) in grey
    image = ax.pcolormesh(_column_edges(steps), np.arange(len(norms) + 1) - 0.5, log_norms, cmap=cmap)
    ax.invert_yaxis()
    ax.set_xlabel("step")
    ax.set_ylabel(f"weight (first: {next(iter(norms))} at the top)")
    fig.colorbar(image, ax=ax, label="log₁₀ ‖∂L/∂w‖ (grey: exact 0)")
    ax.set_title(_grad_norm_title(steps, norms, list(norms), step), fontsize=10)
    return fig


# --- the callback --------------------------------------------------------------------------------------------


class PictureMonitor(Callback):
    """Draws ``pictures`` (a subset of :data:`PICTURES`) into the Images tab.

    Every ``every_n_steps`` (from step ``every_n_steps`` on, before that step's update) and once at
    the end of training. ``root`` names the network inside the LightningModule (it is called as
    ``root(x)``; ``None``: its single network child, else the module itself); ``loss_fn(y_hat, y)`` is
    the loss for the surface (default: the module's ``loss_fn`` attribute). Data comes from
    ``trainer.datamodule``: ``probe_x``, ``probe_y``, ``task`` (``regression`` or ``classification``)
    and ``train_set.x``/``.y`` where present. ``threshold`` is the output value on the decision boundary
    (0 for logits or ±1 targets). The path on the loss surface, the gradient norms and the unit activity
    are the :class:`~backprop_lab.monitors.record.StepRecorder`'s (``recorder``, or the one shared by
    the trainer's monitors); unit activity needs probe passes, which a
    :class:`~backprop_lab.monitors.DeadReLUMonitor` makes.
    """

    def __init__(
        self,
        pictures: tuple[str, ...] | list[str] = PICTURES,
        every_n_steps: int = 5000,
        root: str | None = None,
        loss_fn=None,
        threshold: float = 0.0,
        recorder: StepRecorder | None = None,
    ):
        unknown = set(pictures) - set(PICTURES)
        if unknown:
            raise ValueError(f"unknown pictures {sorted(unknown)}: use {', '.join(PICTURES)}")
        self.pictures = tuple(pictures)
        self.every_n_steps = every_n_steps
        self.root = root
        self.loss_fn = loss_fn
        self.threshold = threshold
        self.recorder = recorder
        self._given = recorder
        self._surface = False  # a network of one or two trainable numbers: the loss surface applies
        self._drives = True  # whether this monitor's hooks drive the recorder's step

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.recorder = StepRecorder.attach(trainer, pl_module, self.root, self._given)
        numbers = sum(p.numel() for _, p in trainable(self.recorder.net))
        self._surface = "loss_surface" in self.pictures and 1 <= numbers <= 2
        if self._surface:
            self.recorder.record_every(1)  # the path: the parameters before every update
        self._drives = not self.recorder.leads(trainer, self)  # else the recorder's own hooks ran first

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._drives:
            self.recorder.batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._drives:
            self.recorder.before_optimizer_step(trainer, pl_module, optimizer)
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module, step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._drives:
            self.recorder.batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.train_end(trainer, pl_module)
        self.draw(trainer, pl_module, trainer.global_step)

    def _path_array(self, net: nn.Module) -> np.ndarray:
        """The (steps, numbers) float64 path: the recorded values before each update, then where training
        ended (the trainable numbers now)."""
        names = [n for n, _ in trainable(net)]
        rows = [
            [r.params[n].value for n in names] for r in self.recorder.history if r.backward and names[0] in r.params
        ]
        with torch.no_grad():
            rows.append(torch.cat([p.detach().reshape(-1) for _, p in trainable(net)]).to(torch.float64).tolist())
        return np.asarray(rows, dtype=np.float64)

    def draw(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        """Every picture that applies, at ``step``."""
        if not tensorboard_writers(trainer):
            return
        drawers = {
            "loss_surface": self._loss_surface,
            "fit": self._fit,
            "unit_activity": self._unit_activity,
            "grad_norm_by_layer": self._grad_norms,
        }
        for name in self.pictures:
            fig = drawers[name](trainer, pl_module, step)
            if fig is not None:
                log_figure(trainer, f"pictures/{name}", fig, step)

    def _loss_surface(self, trainer: Trainer, pl_module: LightningModule, step: int):
        loss_fn = self.loss_fn or getattr(pl_module, "loss_fn", None)
        probe = probe_set(trainer)
        if not self._surface or loss_fn is None or probe is None:
            return None
        net = self.recorder.net
        dtype = trainable(net)[0][1].dtype  # the run's precision (64-true, bf16-true, …)
        x, y = (t.to(device=pl_module.device, dtype=dtype) for t in probe)
        path = self._path_array(net)
        path = path[np.isfinite(path).all(axis=1)] if path.size else path

        def surface(thetas: np.ndarray) -> np.ndarray:
            grid = torch.as_tensor(thetas, dtype=dtype, device=pl_module.device)
            return loss_on_grid(net, loss_fn, x, y, grid).to(torch.float64).cpu().numpy()

        return draw_loss_surface(axis_names(net), path, surface, step) if len(path) else None

    def _fit(self, trainer: Trainer, pl_module: LightningModule, step: int):
        probe = probe_set(trainer)
        task = getattr(trainer.datamodule, "task", None)
        if probe is None or task not in ("regression", "classification"):
            return None
        train_set = getattr(trainer.datamodule, "train_set", None)
        x, y = (train_set.x, train_set.y) if train_set is not None else probe
        px, py = probe
        if len(x) < 2:  # the post's single example: nothing to fit a curve through
            return None
        if task == "regression" and x.shape[-1] == 1 and y.shape[-1] == 1:
            lo, hi = _span_of(torch.cat([x, px]))
            grid = torch.linspace(lo[0], hi[0], 400).unsqueeze(1)
            y_hat = self._predict(pl_module, grid)
            return draw_fit(x.numpy(), y.numpy(), px.numpy(), py.numpy(), grid.numpy(), y_hat[:, 0], step)
        if task == "classification" and x.shape[-1] == 2:
            lo, hi = _span_of(torch.cat([x, px]))
            g1, g2 = torch.meshgrid(torch.linspace(lo[0], hi[0], 150), torch.linspace(lo[1], hi[1], 150), indexing="xy")
            out = self._predict(pl_module, torch.stack([g1.ravel(), g2.ravel()], dim=1))[:, 0].reshape(g1.shape)
            return draw_boundary(x.numpy(), y[:, 0].numpy(), g1.numpy(), g2.numpy(), out, self.threshold, step)
        return None

    def _predict(self, pl_module: LightningModule, x: Tensor) -> np.ndarray:
        net = self.recorder.net
        was_training = net.training
        try:
            net.eval()
            with torch.no_grad():
                y_hat = net(x.to(device=pl_module.device, dtype=pl_module.dtype))
        finally:
            net.train(was_training)
        return y_hat.reshape(len(x), -1).to(torch.float64).cpu().numpy()

    def _unit_activity(self, trainer: Trainer, pl_module: LightningModule, step: int):
        recorder = self.recorder
        layers = recorder.entries(kinds=("relu", "leaky_relu"))
        activity = {n: recorder.activity[n] for n in layers if recorder.activity.get(n)}
        if not activity:
            return None
        leaky = frozenset(n for n in layers if n in recorder.entries(kinds=("leaky_relu",)))
        return draw_unit_activity(recorder.activity_steps, activity, "probe set", step, leaky)

    def _grad_norms(self, trainer: Trainer, pl_module: LightningModule, step: int):
        records = [r for r in self.recorder.history if r.backward]
        if not records:
            return None
        names = list(records[0].params)
        steps = np.asarray([r.step for r in records])
        norms = {n: np.asarray([abs(r.params[n].grad) if n in r.params else np.nan for r in records]) for n in names}
        return draw_grad_norms(steps, norms, step)


def _span_of(x: Tensor) -> tuple[list[float], list[float]]:
    """Per input dim, the data's range widened by 10 % (at least 0.5 on each side)."""
    lo, hi = x.min(dim=0).values, x.max(dim=0).values
    pad = torch.clamp(0.1 * (hi - lo), min=0.5)
    return (lo - pad).tolist(), (hi + pad).tolist()
