"""GradientMonitor: every parameter's value, gradient, gradient norm and update ratio, at the log steps."""

from __future__ import annotations

import math

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary
from torch import Tensor

from backprop_lab.monitors.common import is_log_step, log_metrics, tensorboard_targets, write_summary
from backprop_lab.monitors.record import StepRecorder

HISTOGRAM_BINS = 64  # equal-width bins between the smallest and the largest value

_NUMPY_FLOATS = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}
_HISTC_BELOW = 4096  # fewer values on a CPU: histc itself (≈ 4 µs + 3.2 ns a value against ≈ 12 µs + 0.7 ns)


def equal_width_counts(values: Tensor, lo: float | Tensor, hi: float | Tensor, bins: int) -> Tensor:
    """``torch.histc(values, bins, min=lo, max=hi)``'s counts, exactly, as float64: ``bins`` counts for 1-D
    ``values``, (rows, ``bins``) for 2-D ones (a histogram per row; ``lo``, ``hi`` then (rows, 1) tensors).
    The one home of the bucket rule: value v goes to bucket ⌊(v − lo)·bins/(hi − lo)⌋, computed in the
    values' dtype with ``lo`` and ``hi`` rounded to it (histc's edges), the right edge ``hi`` in the last bucket.

    Every value must lie in [lo, hi] (histc leaves the others out; here they would land in an end bucket), and
    (hi − lo)·bins must be finite in the dtype (else histc's buckets mean nothing either). Numbers ``lo``, ``hi``
    that are one number in the dtype go to histc (its bucket then is no rule's: ±1 around equal edges, or a NaN
    cast to an index); tensor edges equal in a row put that row in bucket 0.

    On a CPU: histc itself for fewer than ``_HISTC_BELOW`` values (1-D, numbers ``lo``, ``hi``), else a few
    elementwise ops and one ``bincount`` (single-threaded 59 µs against histc's 210 µs on 64k float32 values).
    Elsewhere ``scatter_add_`` (``bincount`` reads its largest index back to the host), dividing by a tensor on
    the device: CUDA divides by a host scalar as a product with its reciprocal, not histc's rule."""
    dtype, device = values.dtype, values.device
    cpu = device.type == "cpu"
    numbers = not (isinstance(lo, Tensor) or isinstance(hi, Tensor))
    if cpu and numbers and values.dim() == 1 and values.numel() < _HISTC_BELOW:  # fewer ops: faster when small
        return torch.histc(values, bins, min=lo, max=hi).to(torch.float64)
    if numbers and dtype in _NUMPY_FLOATS:  # the edges and their difference in the dtype, on the host
        as_dtype = _NUMPY_FLOATS[dtype]
        lo_v, width = float(as_dtype(lo)), float(as_dtype(hi) - as_dtype(lo))
        if width == 0:  # the edges are one number in the dtype (one huge value ± 0.5): histc's own bucket
            return torch.histc(values, bins, min=lo, max=hi).to(torch.float64)
        if not cpu:
            width = torch.full((), width, dtype=dtype, device=device)
    else:
        lo_v, hi_v = (
            x.to(device=device, dtype=dtype) if isinstance(x, Tensor) else torch.full((), x, dtype=dtype, device=device)
            for x in (lo, hi)
        )
        width = hi_v - lo_v
    t = values - lo_v
    t.mul_(bins).div_(width)
    if not cpu:
        where = t.to(torch.int64).clamp_(0, bins - 1)  # NaN and overflows too: an index in range
        counts = torch.zeros((*values.shape[:-1], bins), dtype=torch.float64, device=device)
        return counts.scatter_add_(-1, where, torch.ones_like(values, dtype=torch.float64))
    where = t.to(torch.int32).clamp_(0, bins - 1)  # int32: half the bytes of int64, and counted faster
    if values.dim() == 1:
        return torch.bincount(where, minlength=bins).to(torch.float64)
    rows = values.shape[0]
    where += torch.arange(0, rows * bins, bins, dtype=torch.int32).unsqueeze(1)  # row j's buckets from j·bins
    return torch.bincount(where.reshape(-1), minlength=rows * bins).reshape(rows, bins).to(torch.float64)


def histogram_stats(values: Tensor, bins: int = HISTOGRAM_BINS) -> dict | None:
    """What ``SummaryWriter.add_histogram_raw`` takes, computed where ``values`` live: about 70 numbers
    copied to the host, not the tensor (``add_histogram`` copies it and bins it with numpy). The same
    equal-width bins as ``add_histogram(..., bins=64)``, with the empty bucket in front that marks the
    left edge for TensorBoard. Non-finite values are left out; None where none is finite."""
    return histograms_stats([values], bins)[0]


def histogram_proto(stats: dict) -> HistogramProto:
    """:func:`histogram_stats`' numbers as the ``HistogramProto`` that ``SummaryWriter.add_histogram_raw`` writes."""
    return HistogramProto(
        min=stats["min"],
        max=stats["max"],
        num=stats["num"],
        sum=stats["sum"],
        sum_squares=stats["sum_squares"],
        bucket_limit=stats["bucket_limits"],
        bucket=stats["bucket_counts"],
    )


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
            counts = equal_width_counts(v, lo, hi, bins)
            parts += [v.sum(dtype=torch.float64).reshape(1), torch.dot(v, v).to(torch.float64).reshape(1)]
            parts += [counts, torch.linspace(lo, hi, bins + 1, dtype=torch.float64, device=v.device)]
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
        """``<prefix>/<name>`` histograms at ``step``, as ``SummaryWriter.add_histogram_raw`` writes them, all in one
        summary (the step's one event, where the logger gathers them)."""
        targets = tensorboard_targets(trainer)
        if not targets or not tensors:
            return
        values = [
            Summary.Value(tag=f"{prefix}/{n}", histo=histogram_proto(stats))
            for (n, _), stats in zip(tensors, histograms_stats([t for _, t in tensors]))
            if stats is not None
        ]
        if values:
            write_summary(targets, Summary(value=values), step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.train_end(trainer, pl_module)
        one = [(n, p) for n, p in self.recorder.net.named_parameters() if p.numel() == 1]
        if not one:
            return
        with torch.no_grad():
            values = [float(p.detach().reshape(()).item()) for _, p in one]
        if all(math.isfinite(v) for v in values):
            log_metrics(trainer, {f"params/{n}": v for (n, _), v in zip(one, values)}, trainer.global_step)
