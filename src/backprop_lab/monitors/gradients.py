"""GradientMonitor: every parameter's value, gradient, gradient norm and update ratio, at the log steps."""

from __future__ import annotations

import math

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

from backprop_lab.monitors.common import is_log_step, log_metrics, tensorboard_writers, watched_module

HISTOGRAM_BINS = 64  # equal-width bins between the smallest and the largest value


def histogram_stats(values: Tensor, bins: int = HISTOGRAM_BINS) -> dict | None:
    """What ``SummaryWriter.add_histogram_raw`` takes, computed where ``values`` live: about 70 numbers
    copied to the host, not the tensor (``add_histogram`` copies it and bins it with numpy). The same
    equal-width bins as ``add_histogram(..., bins=64)``, with the empty bucket in front that marks the
    left edge for TensorBoard. Non-finite values are left out; None where none is finite."""
    v = values.detach().reshape(-1)
    v = v if v.dtype == torch.float64 else v.float()
    if v.numel() == 0:
        return None
    smallest, largest = (t.item() for t in torch.aminmax(v))
    if not (math.isfinite(smallest) and math.isfinite(largest)):  # NaN or ±inf among the values
        v = v[torch.isfinite(v)]
        if v.numel() == 0:
            return None
        smallest, largest = (t.item() for t in torch.aminmax(v))
    lo, hi = (smallest - 0.5, largest + 0.5) if smallest == largest else (smallest, largest)  # as np.histogram
    counts = torch.histc(v, bins=bins, min=lo, max=hi)
    sums = torch.stack([v.sum(dtype=torch.float64), torch.dot(v, v).to(torch.float64)])
    summary = torch.cat([sums, counts.to(torch.float64)]).tolist()
    return {
        "min": smallest,
        "max": largest,
        "num": v.numel(),
        "sum": summary[0],
        "sum_squares": summary[1],
        "bucket_limits": torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist(),
        "bucket_counts": [0.0, *summary[2:]],
    }


def _number(t: Tensor) -> Tensor:
    """A one-element tensor's value, or a larger tensor's L2 norm, as a 0-d float tensor (no sync)."""
    t = t.detach()
    t = t if t.dtype == torch.float64 else t.float()  # norms of bf16/fp16 values in float32
    return t.reshape(()) if t.numel() == 1 else torch.linalg.vector_norm(t)


class GradientMonitor(Callback):
    """Logs, for every trainable parameter ``<name>`` (named relative to the submodule ``root``):

    - ``params/<name>`` and ``grads/<name>``: scalars for one-element parameters, histograms (every
      ``histogram_every_n_steps``) for larger ones;
    - ``grad_norm/<name>``: the gradient's L2 norm ‖g‖;
    - ``update_ratio/<name>``: ‖η·g‖/‖w‖, the relative size of the gradient step, with η the ``lr``
      of the optimizer's param group that holds the parameter (not logged while ‖w‖ = 0). For plain
      SGD (no momentum, no weight decay) this is exactly ‖Δw‖/‖w‖.

    The gradient is the one the update applies: read after the optimizer step, so after Lightning's
    ``gradient_clip_val`` and after every micro-batch of ``accumulate_grad_batches``; the parameter
    values are read before the update. Both are logged at the step k of that update (step k shows the
    parameters before the k-th update and the gradient it applies), every ``log_every_n_steps``
    (default: the trainer's; histograms every ``histogram_every_n_steps``, whichever steps are logged).
    After training, ``params/*`` once more at the final step.

    :attr:`grad_norm_history` and :attr:`value_history` keep the logged norms and one-element values,
    first layer to last, for :class:`~backprop_lab.monitors.PictureMonitor`.
    """

    def __init__(
        self, root: str | None = None, log_every_n_steps: int | None = None, histogram_every_n_steps: int = 50
    ):
        self.root = root
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.history_steps: list[int] = []
        self.history: dict[str, list[float]] = {}  # grad_norm/<name> at history_steps (NaN: no gradient)
        self.values: dict[str, list[float]] = {}  # params/<name> of one-element parameters at history_steps
        # what on_before_optimizer_step read for the step being taken: (step, named, values, learning rates)
        self._before: tuple[int, list[tuple[str, nn.Parameter]], Tensor, list[float]] | None = None
        self._log_now = self._histogram_now = False

    @property
    def grad_norm_history(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(steps, {name: ‖g‖ at those steps})``, parameters in the order the network declares them."""
        return np.asarray(self.history_steps), {n: np.asarray(v) for n, v in self.history.items()}

    @property
    def value_history(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(steps, {name: value})`` of the one-element parameters at the logged steps."""
        return np.asarray(self.history_steps), {n: np.asarray(v) for n, v in self.values.items()}

    def state_dict(self) -> dict:
        """The logged history, so a resumed run's pictures show the whole run."""
        return {"history_steps": list(self.history_steps), "history": dict(self.history), "values": dict(self.values)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history_steps = list(state_dict["history_steps"])
        self.history = {n: list(v) for n, v in state_dict["history"].items()}
        self.values = {n: list(v) for n, v in state_dict["values"].items()}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        self._before = None
        self._log_now = is_log_step(trainer, self.log_every_n_steps)
        self._histogram_now = trainer.global_step % self.histogram_every_n_steps == 0
        if not (self._log_now or self._histogram_now):
            return
        params = watched_module(pl_module, self.root).named_parameters()
        named = [(n, p) for n, p in params if p.requires_grad and p.grad is not None]
        if not named:
            return
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            values = torch.stack([_number(p) for _, p in named])  # stays on the device until the step ends
        self._before = (trainer.global_step, named, values, [float(lr_of.get(id(p), math.nan)) for _, p in named])
        if self._histogram_now:
            self._histograms(trainer, "params", [(n, p) for n, p in named if p.numel() > 1], trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        if self._before is None or trainer.global_step == self._before[0]:
            return  # no update was taken yet (a micro-batch of an accumulated step)
        step, named, values, lrs = self._before
        self._before = None
        if any(p.grad is None for _, p in named):
            return
        if self._histogram_now:
            self._histograms(trainer, "grads", [(n, p.grad) for n, p in named if p.numel() > 1], step)
        if not self._log_now:
            return
        with torch.no_grad():
            host = torch.cat([values, torch.stack([_number(p.grad) for _, p in named])]).tolist()  # one sync
        k = len(named)
        metrics: dict[str, float] = {}
        norms: dict[str, float] = {}
        for (n, p), w, g, lr in zip(named, host[:k], host[k:], lrs):
            if p.numel() == 1:
                metrics[f"params/{n}"], metrics[f"grads/{n}"] = w, g
            norms[n] = abs(g)
            metrics[f"grad_norm/{n}"] = abs(g)
            if w != 0 and math.isfinite(lr * g / w):
                metrics[f"update_ratio/{n}"] = abs(lr * g / w)
        log_metrics(trainer, metrics, step)
        self._remember(step, norms, {n: w for (n, p), w in zip(named, host[:k]) if p.numel() == 1})

    def _remember(self, step: int, norms: dict[str, float], values: dict[str, float]) -> None:
        before = len(self.history_steps)
        self.history_steps.append(step)
        for table, new in ((self.history, norms), (self.values, values)):
            for n in new:  # in the network's order: a parameter seen for the first time joins at the end
                table.setdefault(n, [math.nan] * before)
            for n, column in table.items():
                column.append(new.get(n, math.nan))

    def _histograms(self, trainer: Trainer, prefix: str, tensors: list[tuple[str, Tensor]], step: int) -> None:
        writers = tensorboard_writers(trainer)
        for n, t in tensors if writers else ():
            stats = histogram_stats(t)
            for writer in writers if stats is not None else ():
                writer.add_histogram_raw(f"{prefix}/{n}", global_step=step, **stats)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        one = [(n, p) for n, p in watched_module(pl_module, self.root).named_parameters() if p.numel() == 1]
        if not one:
            return
        with torch.no_grad():
            values = torch.stack([_number(p) for _, p in one]).tolist()
        if all(math.isfinite(v) for v in values):
            log_metrics(trainer, {f"params/{n}": v for (n, _), v in zip(one, values)}, trainer.global_step)
