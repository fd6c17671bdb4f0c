"""DeadReLUMonitor: which ReLU units pass no gradient, on the training batch and on a fixed probe set."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from backprop_lab import models
from backprop_lab.monitors.common import is_log_step, log_metrics, probe_set
from backprop_lab.monitors.record import RELU_KINDS, StepRecord, StepRecorder, local_derivative

# Leaky ReLU layers are watched too: with a slope a > 0 no unit is ever dead (its derivative is a, never 0).
RELU_TYPES: tuple[type[nn.Module], ...] = (models.ReLU, nn.ReLU, models.LeakyReLU, nn.LeakyReLU)


def statistics(h: Tensor, negative_slope: float = 0.0) -> tuple[float, float]:
    """(dead fraction, zero fraction) of one ReLU layer's activations ``h`` of shape (samples, units), by
    the recorder's definition (:func:`~backprop_lab.monitors.record.local_derivative`, ReLU′(0) = 0)."""
    kind = "leaky_relu" if negative_slope > 0 else "relu"
    prime = local_derivative(kind, None, h, 0, negative_slope)
    dead = (prime.amax(dim=0) == 0).float().mean().item()
    return dead, 1.0 - torch.count_nonzero(h).item() / h.numel()


class DeadReLUMonitor(Callback):
    """Dead-ReLU statistics of every ReLU layer ``<layer>`` (a module of ``layer_types`` under the
    watched network ``root``; ``None``: the LightningModule's single network child, else the module
    itself), one entry per call (``act#0``, ``act#1`` for a module called twice). Units, "dead" and the
    unit axis are the :class:`~backprop_lab.monitors.record.StepRecorder`'s: a unit is dead on a set of
    samples when ReLU′ is 0 on every one of them (z < 0, or z ≤ 0 where ReLU′(0) = 0), so no gradient
    passes it; a leaky unit (slope > 0) never is.

    At the recorded steps that are log steps (every ``log_every_n_steps``, default: the trainer's), from
    the step's training forward passes (all micro-batches of an accumulated step):

    - ``relu/dead_fraction/<layer>``: the fraction of units dead on the step's batch;
    - ``relu/zero_fraction/<layer>``: the fraction of the layer's activations exactly 0.

    Every ``probe_every_n_steps``, at the step a layer dies or revives, and at the end, when
    ``trainer.datamodule`` has ``probe_x`` (a fixed held-out set):

    - ``relu/probe_dead_fraction/<layer>``: the fraction of units dead on the whole probe set, from one
      no-grad, eval-mode pass of ``probe_x`` through the watched network.

    At the end of training (or when it stops on an exception), for every logged step s:

    - ``relu/dead_forever_fraction/<layer>``: the fraction of units dead on every training batch from
      step s to the last step (dead since s or earlier and never revived). A resumed run writes it for the steps
      it logs itself: the steps before keep what the run it resumes wrote at its end (judged to the step that run
      stopped at), so that no step holds two values.

    :attr:`dead_since` holds, per layer, the step from which every unit has stayed dead on the batch
    (None while any unit is alive); :attr:`last_dead_fraction` the last logged dead fraction.
    """

    def __init__(
        self,
        root: str | None = None,
        layer_types: tuple[type[nn.Module], ...] = RELU_TYPES,
        log_every_n_steps: int | None = None,
        probe_every_n_steps: int = 50,
        recorder: StepRecorder | None = None,
    ):
        self.root = root
        self.layer_types = layer_types
        self.log_every_n_steps = log_every_n_steps
        self.probe_every_n_steps = probe_every_n_steps
        self.recorder = recorder
        self._given = recorder
        self._logged_steps: list[int] = []
        self._written_before = 0  # logged steps whose dead_forever_fraction/* an earlier run (resumed from) wrote
        self._step: int | None = None
        self._finished = False
        self.dead_since: dict[str, int | None] = {}
        self.last_dead_fraction: dict[str, float] = {}
        self._drives = True  # whether this monitor's hooks drive the recorder's step
        self._tags: dict[str, tuple[str, str]] = {}  # per layer: its two batch tags, formatted once

    def state_dict(self) -> dict:
        """What the statistics of later steps and the end of the run depend on, for a resumed run."""
        return {
            "logged_steps": torch.tensor(self._logged_steps, dtype=torch.int64),  # one tensor, not a pickle per step
            "dead_since": dict(self.dead_since),
            "last_dead_fraction": dict(self.last_dead_fraction),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        steps = state_dict["logged_steps"]
        self._logged_steps = steps.tolist() if isinstance(steps, Tensor) else list(steps)  # a list: older checkpoints
        self.dead_since = dict(state_dict["dead_since"])
        self.last_dead_fraction = dict(state_dict["last_dead_fraction"])
        self._finished = False  # the end of the resumed run writes dead_forever_fraction/* for the steps it logs
        # The earlier run wrote the steps before at its end; written again here they would be a second value at each
        # (TensorBoard drops only a resumed run's steps from its purge_step on; a CSV keeps the rows before).
        self._written_before = len(self._logged_steps)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.recorder = StepRecorder.attach(trainer, pl_module, self.root, self._given)
        if self.log_every_n_steps:
            self.recorder.record_every(self.log_every_n_steps)
        self._drives = not self.recorder.leads(trainer, self)  # else the recorder's own hooks ran first

    def _layers(self) -> list[str]:
        return self.recorder.entries(kinds=RELU_KINDS, types=self.layer_types)

    # --- per step ---------------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._drives:
            self.recorder.batch_start(trainer, pl_module, batch, batch_idx)
        self._step = trainer.global_step

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._drives:
            self.recorder.before_optimizer_step(trainer, pl_module, optimizer)
        if trainer.global_step % self.probe_every_n_steps == 0:
            self._log_probe(trainer, trainer.global_step)  # the parameters before this step's update

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        recorder = self.recorder
        record = (
            recorder.batch_end(trainer, pl_module, outputs, batch, batch_idx) if self._drives else recorder.finished
        )
        step = self._step
        if step is None or trainer.global_step == step:
            return  # another micro-batch of this step follows
        self._step = None
        if record is None or record.step != step or not is_log_step(trainer, self.log_every_n_steps, step):
            return
        # At the step a layer dies or revives, the probe set too, right after this update (so at step
        # k + 1): the unit-activity picture shows the event where it happens.
        if self._log_batch(trainer, record) and trainer.global_step % self.probe_every_n_steps != 0:
            self._log_probe(trainer, trainer.global_step)

    def _log_batch(self, trainer: Trainer, record: StepRecord) -> bool:
        """Log the step's batch statistics; whether a layer died or revived at this step."""
        metrics, changed = {}, False
        tags = self._tags
        for name in self._layers():
            stats = record.layers.get(name)
            if stats is None:
                continue
            dead = stats.dead_fraction
            dead_tag, zero_tag = tags.get(name) or tags.setdefault(
                name, (f"relu/dead_fraction/{name}", f"relu/zero_fraction/{name}")
            )
            metrics[dead_tag], metrics[zero_tag] = dead, stats.zero_fraction
            self.last_dead_fraction[name] = dead
            before = self.dead_since.setdefault(name, None)
            if dead < 1.0:
                self.dead_since[name] = None
            elif before is None:
                self.dead_since[name] = record.step
            changed |= (before is None) != (self.dead_since[name] is None)
        if metrics:
            log_metrics(trainer, metrics, record.step)
            self._logged_steps.append(record.step)
        return changed

    # --- the probe set ----------------------------------------------------------------------------------

    def _log_probe(self, trainer: Trainer, step: int) -> None:
        """Units' dead fraction on the probe set (kept in the record for the unit-activity picture)."""
        probe = probe_set(trainer)
        if probe is None:
            return
        found = self.recorder.probe(probe[0].to(trainer.lightning_module.device), step=step)
        layers = [n for n in self._layers() if found and n in found]
        metrics = {f"relu/probe_dead_fraction/{n}": float(np.mean(found[n] == 0)) for n in layers}
        log_metrics(trainer, metrics, step)

    # --- the end of the run -----------------------------------------------------------------------------

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.recorder.train_end(trainer, pl_module)
        steps = self.recorder.activity_steps
        if probe_set(trainer) is not None and self._layers() and not (steps and steps[-1] == trainer.global_step):
            self._log_probe(trainer, trainer.global_step)  # the parameters the run ends with
        self._log_dead_forever(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        try:
            self._log_dead_forever(trainer)
        except Exception as error:  # noqa: BLE001 — a failing run's logger (a full disk) may fail again
            rank_zero_warn(
                f"DeadReLUMonitor could not write relu/dead_forever_fraction/* while the run failed: {error}"
            )

    def dead_forever_fractions(self) -> dict[str, np.ndarray]:
        """Per layer, at each logged step s: the fraction of units alive on no training batch from s on."""
        steps = torch.tensor(self._logged_steps, dtype=torch.int64)
        last_active = self.recorder.last_active() if self.recorder is not None else {}
        out = {}
        for name in self._layers():
            last = last_active.get(name)
            if last is not None:
                # A unit is dead from s on iff its last active step is before s (−1: never active).
                dead = torch.searchsorted(last.cpu().reshape(-1).sort().values, steps, right=False)
                out[name] = (dead.to(torch.float64) / last.numel()).numpy()
        return out

    def _log_dead_forever(self, trainer: Trainer) -> None:
        if self._finished or not self._logged_steps:
            return
        self._finished = True
        fractions = self.dead_forever_fractions()
        for i in range(self._written_before, len(self._logged_steps)):
            metrics = {f"relu/dead_forever_fraction/{n}": float(f[i]) for n, f in fractions.items()}
            log_metrics(trainer, metrics, self._logged_steps[i])
