"""GradientMonitor: every parameter's value, gradient, gradient norm and update ratio, at the log steps."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from backprop_lab.monitors.common import is_log_step, log_metrics, tensorboard_writers
from backprop_lab.monitors.record import StepRecorder

HISTOGRAM_BINS = 64  # equal-width bins between the smallest and the largest value


def histogram_stats(values: Tensor, bins: int = HISTOGRAM_BINS) -> dict | None:
    """What ``SummaryWriter.add_histogram_raw`` takes, computed where ``values`` live: about 70 numbers
    copied to the host, not the tensor (``add_histogram`` copies it and bins it with numpy). The same
    equal-width bins as ``add_histogram(..., bins=64)``, with the empty bucket in front that marks the
    left edge for TensorBoard. Non-finite values are left out; None where none is finite."""
    return histograms_stats([values], bins)[0]


def histograms_stats(tensors: list[Tensor], bins: int = HISTOGRAM_BINS) -> list[dict | None]:
    """:func:`histogram_stats` of each tensor, with two host copies for all of them (their extremes, then
    their sums and counts) instead of four per tensor."""
    flat = [t.detach().reshape(-1) for t in tensors]
    flat = [v if v.dtype == torch.float64 else v.float() for v in flat]
    full = [v for v in flat if v.numel()]
    extremes = iter(torch.stack([m for v in full for m in torch.aminmax(v)]).tolist() if full else ())
    ranges: list[tuple[Tensor, float, float] | None] = []
    for v in flat:
        if v.numel() == 0:
            ranges.append(None)
            continue
        smallest, largest = next(extremes), next(extremes)
        if not (math.isfinite(smallest) and math.isfinite(largest)):  # NaN or ±inf among the values
            v = v[torch.isfinite(v)]
            if v.numel() == 0:
                ranges.append(None)
                continue
            smallest, largest = (t.item() for t in torch.aminmax(v))
        ranges.append((v, smallest, largest))
    parts = []
    for r in ranges:
        if r is not None:
            v, smallest, largest = r
            lo, hi = (smallest - 0.5, largest + 0.5) if smallest == largest else (smallest, largest)  # as np.histogram
            counts = torch.histc(v, bins=bins, min=lo, max=hi)
            parts += [v.sum(dtype=torch.float64).reshape(1), torch.dot(v, v).to(torch.float64).reshape(1)]
            parts += [counts.to(torch.float64), torch.linspace(lo, hi, bins + 1, dtype=torch.float64, device=v.device)]
    numbers = torch.cat(parts).tolist() if parts else []
    out: list[dict | None] = []
    i, width = 0, 2 + bins + bins + 1
    for r in ranges:
        if r is None:
            out.append(None)
            continue
        v, smallest, largest = r
        row, i = numbers[i : i + width], i + width
        out.append(
            {
                "min": smallest,
                "max": largest,
                "num": v.numel(),
                "sum": row[0],
                "sum_squares": row[1],
                "bucket_limits": row[2 + bins :],
                "bucket_counts": [0.0, *row[2 : 2 + bins]],
            }
        )
    return out


class GradientMonitor(Callback):
    """Logs, for every trainable parameter ``<name>`` (named relative to the watched network ``root``;
    ``None``: the LightningModule's single network child, else the module itself):

    - ``params/<name>`` and ``grads/<name>``: scalars for one-element parameters, histograms (every
      ``histogram_every_n_steps``) for larger ones;
    - ``grad_norm/<name>``: the gradient's L2 norm ‖g‖;
    - ``update_ratio/<name>``: ‖η·g‖/‖w‖, the relative size of the gradient step, with η the ``lr``
      of the optimizer's param group that holds the parameter (not logged while ‖w‖ = 0). For plain
      SGD (no momentum, no weight decay) this is exactly ‖Δw‖/‖w‖.

    The gradient is the one the update applies (the record's ``grad``, see
    :mod:`backprop_lab.monitors.record`): after Lightning's ``gradient_clip_val`` and after every
    micro-batch of ``accumulate_grad_batches``; the parameter values are read before the update. Both are
    logged at the step k of that update (step k shows the parameters before the k-th update and the
    gradient it applies), every ``log_every_n_steps`` (default: the trainer's; histograms every
    ``histogram_every_n_steps``, whichever steps are logged). After training, ``params/*`` once more at
    the final step. The numbers come from the :class:`~backprop_lab.monitors.record.StepRecorder`
    (``recorder``, or the one shared by the trainer's monitors).
    """

    def __init__(
        self,
        root: str | None = None,
        log_every_n_steps: int | None = None,
        histogram_every_n_steps: int = 50,
        recorder: StepRecorder | None = None,
    ):
        self.root = root
        self.log_every_n_steps = log_every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self.recorder = recorder
        self._given = recorder
        self._histogram_step: int | None = None
        self._tags: dict[str, tuple[str, ...]] = {}  # per parameter: its four tags, formatted once
        self._drives = True  # whether this monitor's hooks drive the recorder's step

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.recorder = StepRecorder.attach(trainer, pl_module, self.root, self._given)
        if self.log_every_n_steps:
            self.recorder.record_every(self.log_every_n_steps)
        self._drives = not self.recorder.leads(trainer, self)  # else the recorder's own hooks ran first

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._drives:
            self.recorder.batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._drives:
            self.recorder.before_optimizer_step(trainer, pl_module, optimizer)
        # Histograms of whole tensors at their own cadence: the parameters before the update, read (not hooked).
        self._histogram_step = None
        if trainer.global_step % self.histogram_every_n_steps == 0:
            self._histogram_step = trainer.global_step
            self._histograms(trainer, "params", self._larger(lambda p: p), trainer.global_step)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        recorder = self.recorder
        record = (
            recorder.batch_end(trainer, pl_module, outputs, batch, batch_idx) if self._drives else recorder.finished
        )
        if self._histogram_step is not None and trainer.global_step != self._histogram_step:  # the update is taken
            self._histograms(trainer, "grads", self._larger(lambda p: p.grad), self._histogram_step)
            self._histogram_step = None
        if record is None or not record.backward:
            return
        if not is_log_step(trainer, self.log_every_n_steps, record.step):
            return
        metrics: dict[str, float] = {}
        tags = self._tags
        isfinite = math.isfinite
        for n, s in record.params.items():
            grad = s.grad
            if not isfinite(grad):
                continue
            t = tags.get(n) or tags.setdefault(
                n, tuple(f"{k}/{n}" for k in ("params", "grads", "grad_norm", "update_ratio"))
            )
            if s.numel == 1:
                metrics[t[0]], metrics[t[1]] = s.value, grad
            metrics[t[2]] = abs(grad)
            ratio = s.update_ratio
            if isfinite(ratio):
                metrics[t[3]] = ratio
        log_metrics(trainer, metrics, record.step)

    def _larger(self, what) -> list[tuple[str, Tensor]]:
        """``what(p)`` of every trainable parameter of more than one element (None left out)."""
        named = [(n, what(p)) for n, p in self.recorder.net.named_parameters() if p.requires_grad and p.numel() > 1]
        return [(n, t) for n, t in named if t is not None]

    def _histograms(self, trainer: Trainer, prefix: str, tensors: list[tuple[str, Tensor]], step: int) -> None:
        writers = tensorboard_writers(trainer)
        if not writers or not tensors:
            return
        for (n, _), stats in zip(tensors, histograms_stats([t for _, t in tensors])):
            for writer in writers if stats is not None else ():
                writer.add_histogram_raw(f"{prefix}/{n}", global_step=step, **stats)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.train_end(trainer, pl_module)
        one = [(n, p) for n, p in self.recorder.net.named_parameters() if p.numel() == 1]
        if not one:
            return
        with torch.no_grad():
            values = [float(p.detach().reshape(()).item()) for _, p in one]
        if all(math.isfinite(v) for v in values):
            log_metrics(trainer, {f"params/{n}": v for (n, _), v in zip(one, values)}, trainer.global_step)
