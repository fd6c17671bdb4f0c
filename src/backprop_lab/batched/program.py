"""One training program for K copies of a post network: stacked parameters, their own η, one Lightning fit.

Copy k's parameters are ``net.w[k]`` (or ``w1[k]``, ``w2[k]``); the loss of the program is the sum of
the copies' losses, so backward gives each copy the gradient of its own loss. Each copy keeps the rules
of a separate run (:class:`backprop_lab.module.BackpropModule`), step for step:

* everything logged at step t is computed from the parameters before the t-th update;
* a non-finite loss at step t: the copy is ``diverged`` at t, frozen before that update (the others go on);
* a loss below ``tol`` at step t: the copy takes that update, then its final pass at t + 1 and stops;
* after ``trainer.max_steps`` updates, the final pass (a forward, no update) of every copy still running.

Each copy logs to its own run directory through :class:`~backprop_lab.batched.events.CopiesLogger` the
scalars a separate run logs (``train/loss``, ``epoch``, ``params/*``, ``grads/*``, ``grad_norm/*``,
``update_ratio/*``) at the same steps, the config text and Custom Scalars layout; the HParams record,
``hparams/*`` and ``hparams.yaml`` come from :func:`backprop_lab.train.log_hparams` through the package's
TensorBoard logger writing into the copy's event file (:class:`CopyTensorBoardLogger`)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from backprop_lab import functions as F
from backprop_lab.batched.events import CopiesLogger
from backprop_lab.batched.functions import stacked_bce_with_logits, stacked_linear, stacked_mse_loss
from backprop_lab.batched.groups import MLP, POST_NETS
from backprop_lab.batched.mlp import MLPRecorder, StackedMLP, seeds_data, stacked_mlp
from backprop_lab.batched.step_record import CopiesRecorder
from backprop_lab.config import ConfigError
from backprop_lab.diagnoses import Diagnosis
from backprop_lab.interrupts import GracefulStop
from backprop_lab.loggers import TensorBoardLogger
from backprop_lab.module import LOSS_BY_TASK
from backprop_lab.replay import replay, to_markdown
from backprop_lab.signal_notes import SignalNotes
from backprop_lab.train import TrainResult, expected_warnings, log_hparams

# --- the network and its optimizer ---------------------------------------------------------------------


class StackedPostNet(nn.Module):
    """K copies of the post's net: ``w`` (linear) or ``w1``, ``w2`` (sigmoid, relu), each of shape (K, 1, 1)."""

    def __init__(self, kind: str, weights: dict[str, Sequence[float]], relu_grad_at_zero: int = 0):
        super().__init__()
        self.kind, self.relu_grad_at_zero = kind, int(relu_grad_at_zero)
        self.nodes: dict[str, Tensor] = {}
        for name, values in weights.items():  # as the post's nets make them: float32 1×1 matrices
            self.register_parameter(name, nn.Parameter(torch.tensor([float(v) for v in values]).reshape(-1, 1, 1)))

    def forward(self, x: Tensor) -> Tensor:
        """ŷ of every copy, (K, N, 1); :attr:`nodes` keeps the pass's z1, h and ŷ (the step record reads them)."""
        if self.kind == "linear":
            y_hat = stacked_linear(x, self.w)
            self.nodes = {"y_hat": y_hat}
            return y_hat
        z1 = stacked_linear(x, self.w1)
        h = F.sigmoid(z1) if self.kind == "sigmoid" else F.relu(z1, self.relu_grad_at_zero)
        y_hat = stacked_linear(h, self.w2)
        self.nodes = {"z1": z1, "h": h, "y_hat": y_hat}
        return y_hat


class StackedSGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` (no dampening, no Nesterov) with an η, momentum and weight decay per copy, and
    only the copies in ``active`` updated. The same arithmetic as SGD's: ``g + wd·w`` and ``w − η·g`` as
    fused multiply-adds (``addcmul``, as SGD's ``add(…, alpha=…)``), ``buf·μ + g`` for momentum."""

    def __init__(self, params, lr: Tensor, momentum: Tensor, weight_decay: Tensor):
        super().__init__(params, {})
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.active: Tensor = torch.ones_like(lr, dtype=torch.bool)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # once a step, not once a parameter (each a host sync on a GPU): every copy updated (the frozen ones
        # kept by torch.where otherwise), weight decay, momentum
        everyone = bool(self.active.all())
        decay, momentum = bool((self.weight_decay != 0).any()), bool((self.momentum != 0).any())
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                shape = (-1,) + (1,) * (p.dim() - 1)
                lr, mu, wd = (t.to(p.dtype).reshape(shape) for t in (self.lr, self.momentum, self.weight_decay))
                active = self.active.reshape(shape)
                g = p.grad
                if decay:
                    g = torch.addcmul(g, p, wd)
                if momentum:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = g.clone()
                    elif everyone:
                        buf = buf * mu + g
                    else:
                        buf = torch.where(active, buf * mu + g, buf)
                    state["momentum_buffer"] = buf
                    g = buf
                if everyone:  # the same numbers: addcmul_ is addcmul written into p
                    p.addcmul_(g, -lr)
                else:
                    p.copy_(torch.where(active, torch.addcmul(p, g, -lr), p))
        return loss


# --- the program -----------------------------------------------------------------------------------------


class BatchedModule(L.LightningModule):
    """Trains the copies of ``net``; per copy: its status, its losses, its logs (``copies``)."""

    def __init__(
        self,
        net: StackedPostNet | StackedMLP,
        lrs,
        momenta,
        weight_decays,
        tol: float,
        gradients: bool,
        loss_fn=stacked_mse_loss,
        seed_index: Sequence[int] | None = None,
    ):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        # the MLP: minibatches (a copy's final pass takes the batch of its last step), its own recorder, and with
        # several seeds each copy's batch picked from its seed's (seed_index: copy → seed)
        self.mlp = isinstance(net, StackedMLP)
        self.seed_index = None if seed_index is None else torch.as_tensor(list(seed_index), dtype=torch.long)
        k = len(lrs)
        self.lrs = np.asarray(lrs, dtype=np.float64)  # η as the config gives it: update_ratio is ‖η·g‖/‖w‖
        self.register_buffer("lr", torch.tensor(lrs, dtype=torch.float64))
        self.register_buffer("momentum", torch.tensor(momenta, dtype=torch.float64))
        self.register_buffer("weight_decay", torch.tensor(weight_decays, dtype=torch.float64))
        self.tol, self.gradients = tol, gradients
        self.running = np.ones(k, dtype=bool)  # not yet stopped
        self.ending = np.zeros(k, dtype=bool)  # converged: its final pass comes next
        self.stepping = np.zeros(k, dtype=bool)  # updated at this step
        self.diverged_at: list[int | None] = [None] * k
        self.final_loss = np.full(k, math.nan)
        self.best_loss = np.full(k, math.inf)
        self.steps = np.zeros(k, dtype=np.int64)
        self.interrupted = np.zeros(k, dtype=bool)
        self.interrupted_by: int | None = None  # the signal that stopped the program (GracefulStop sets it)
        self._batch: tuple[Tensor, Tensor] | None = None
        self.recorder: CopiesRecorder | None = None  # the monitors' step record of every copy (train_group sets it)
        self.jobs: tuple[Sequence[DictConfig], Sequence[Path]] | None = None  # configs and run dirs, to checkpoint
        self._step: tuple[int, np.ndarray, Tensor] | None = None  # this step: its number, the live copies, losses

    @property
    def copies(self) -> CopiesLogger:
        return self.loggers[0]

    def configure_optimizers(self):
        return StackedSGD(self.net.parameters(), self.lr, self.momentum, self.weight_decay)

    def _params(self, which: np.ndarray) -> dict[int, dict[str, float]]:
        """``params/<p>`` of the copies ``which`` for their one-element parameters (every one of a post net)."""
        values = {
            n: p.detach().reshape(-1).double().cpu().numpy()
            for n, p in self.net.named_parameters()
            if p[0].numel() == 1
        }
        return {int(k): {f"params/{n}": float(v[k]) for n, v in values.items()} for k in np.flatnonzero(which)}

    def _final_pass(self, losses: np.ndarray, which: np.ndarray, step: int, nodes=None, losses_t=None) -> None:
        """The copies in ``which`` end here: their loss under the trained parameters, at ``step`` (``nodes`` and
        ``losses_t``: the forward pass's tensors, for the step record)."""
        if self.recorder is not None:
            self.recorder.final_rows(which, step, nodes, losses_t, list(self.net.parameters()))
            self.recorder.end(self.net, which, step)
        self.final_loss[which] = losses[which]
        finite = which & np.isfinite(losses)
        self.best_loss[finite] = np.minimum(self.best_loss[finite], losses[finite])
        self.steps[which] = step
        rows = {int(k): {"train/loss": losses[k]} for k in np.flatnonzero(which)}
        if self.gradients:
            for k, params in self._params(which).items():
                if all(math.isfinite(v) for v in params.values()):
                    rows[k].update(params)
        self.copies.log_copy_metrics(rows, step)
        self.running[which] = False

    def _copies_batch(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """The MLP's batch as (1 or K, B, …): shared, or with several seeds each copy's seed's."""
        x, y = batch
        if self.seed_index is not None:  # (seeds, B, …) → (K, B, …)
            index = self.seed_index.to(x.device)
            return x[index], y[index]
        return x.unsqueeze(0), y.unsqueeze(0)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        step = self.global_step
        if self.mlp:
            batch = self._copies_batch(batch)
            ending = self.running & self.ending
            if ending.any() and self._batch is not None:  # a separate run's final pass takes its last step's batch
                with torch.no_grad():
                    last = self.loss_fn(self.net(self._batch[0]), self._batch[1])
                self._final_pass(last.cpu().double().numpy(), ending, step, dict(self.net.nodes), last)
        x, y = batch
        self._batch = batch
        losses_t = self.loss_fn(self.net(x), y)
        losses = losses_t.detach().cpu().double().numpy()  # one host sync per step, as a separate run's .item()
        nodes = dict(self.net.nodes)
        params = list(self.net.parameters())
        if self.recorder is not None and not self.mlp:
            self.recorder.forward(x, y, nodes, params)
        ending = self.running & self.ending
        if ending.any():
            self._final_pass(losses, ending, step, nodes, losses_t)
        live = self.running.copy()
        if self.recorder is not None and self.mlp:
            self.recorder.forward(x, y, nodes, params, step, live)
        self._step = (step, live, losses_t)
        if self.recorder is not None and step % self.recorder.probe_every == 0:
            self.recorder.probe(self.net, live, step)  # the weights before this step's update
        finite = np.isfinite(losses)
        diverging = live & ~finite
        self.stepping = live & finite
        which = np.flatnonzero(live)  # each copy's train/loss and epoch, as one log_metrics call of a separate run
        values = np.stack([losses[which], np.full(len(which), float(self.current_epoch))], axis=1)
        self.copies.log_copy_columns(("train/loss", "epoch"), which, values, step)
        if diverging.any():  # frozen before this update; its parameters are logged at the next step, as Lightning
            for k in np.flatnonzero(diverging):  # counts the skipped update of a separate run's diverged step
                self.diverged_at[k] = step
            self.final_loss[diverging] = losses[diverging]
            self.steps[diverging] = step
            self.running[diverging] = False
            if self.gradients:
                params = self._params(diverging)
                self.copies.log_copy_metrics(
                    {k: p for k, p in params.items() if all(math.isfinite(v) for v in p.values())}, step + 1
                )
        s = self.stepping
        self.best_loss[s] = np.minimum(self.best_loss[s], losses[s])
        self.final_loss[s] = losses[s]
        self.ending |= s & (losses < self.tol)
        if not s.any():
            self.trainer.should_stop = True
            return None
        self.optimizers().optimizer.active = torch.as_tensor(s, device=self.device)
        return losses_t.sum()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this hook even when training_step returned None (no copy steps: every copy still
        # running ended or diverged at this step), with backward skipped and every gradient None.
        if not self.gradients or not self.stepping.any() or self.mlp:  # the MLP's: MLPRecorder.step_rows
            return
        step, which = self.global_step, np.flatnonzero(self.stepping)
        tags, columns, whole = [], [], np.ones(len(which), dtype=bool)
        for n, p in self.net.named_parameters():
            w = p.detach().reshape(-1).double().cpu().numpy()[which]
            g = p.grad.detach().reshape(-1).double().cpu().numpy()[which]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                ratio = np.abs(self.lrs[which] * g / w)
            tags += [f"params/{n}", f"grads/{n}", f"grad_norm/{n}", f"update_ratio/{n}"]
            columns += [w, g, np.abs(g), ratio]
            whole &= np.isfinite(g) & (w != 0) & np.isfinite(ratio)
        values = np.stack(columns, axis=1)  # copies × tags
        # every tag of a copy whose gradients are finite and whose ratios exist: one event's bytes, the values put in
        self.copies.log_copy_columns(tags, which[whole], values[whole], step)
        rows: dict[int, dict[str, float]] = {}  # the others leave out a non-finite gradient's tags, a missing ratio
        for i in np.flatnonzero(~whole).tolist():
            row = rows[int(which[i])] = {}
            for j in range(0, len(tags), 4):
                w, g, _, ratio = values[i, j : j + 4]
                if not math.isfinite(g):
                    continue
                row[tags[j]], row[tags[j + 1]], row[tags[j + 2]] = w, g, abs(g)
                if w != 0 and math.isfinite(ratio):
                    row[tags[j + 3]] = ratio
        self.copies.log_copy_metrics(rows, step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """After the update: the step record of the copies that took part in the step; after a signal, their
        checkpoints (with the monitors off too: a separate run's checkpoint does not depend on them)."""
        if self.recorder is not None and self._step is not None:
            step, live, losses_t = self._step
            params = list(self.net.parameters())
            self.recorder.step_rows(step, live, self.stepping & live, losses_t, params, [p.grad for p in params])
            self.recorder.after_update(self.net, step)
            diverged = live & ~self.stepping
            if diverged.any():  # a separate run ends after its diverged step: Lightning counts the skipped update
                self.recorder.end(self.net, diverged, step + 1)
        self._step = None
        if self.interrupted_by is not None and self.jobs is not None:  # GracefulStop stops the program here
            self.save_copies(self.running & ~self.ending)

    def save_copies(self, which: np.ndarray) -> None:
        """Each copy in ``which`` gets ``<run dir>/checkpoints/last.ckpt``: what its separate run's checkpoint
        holds at this point (after the update of this step), so ``resume=<run dir>`` continues it alone.

        Lightning's parts (the loops' state, the step and epoch) are the program's: a copy has taken every step
        the program took. The parameters are the copy's slice of the stacked ones, the optimizer's state is
        ``torch.optim.SGD``'s with the copy's η, momentum, weight decay and momentum buffer, the monitors' states
        are the copy's (:meth:`CopiesRecorder.monitor_states`), and the config is the job's."""
        from backprop_lab.checks import CHECKPOINT
        from backprop_lab.monitors import BackpropViewMonitor, DeadReLUMonitor, StepRecorder
        from backprop_lab.resume import run_config
        from backprop_lab.train import monitors

        trainer = self.trainer
        loops = {
            "fit_loop": trainer.fit_loop.state_dict(),
            "validate_loop": trainer.validate_loop.state_dict(),
            "test_loop": trainer.test_loop.state_dict(),
            "predict_loop": trainer.predict_loop.state_dict(),
        }
        cfgs, run_dirs = self.jobs
        params = dict(self.net.named_parameters())
        buffers = self.optimizers().optimizer.state
        for k in np.flatnonzero(which).tolist():
            cfg = cfgs[k]
            own = self.net.copy_state(k) if self.mlp else {n: p.detach()[k].clone() for n, p in params.items()}
            weights = {f"net.{n}": w.cpu() for n, w in own.items()}
            alone = [torch.nn.Parameter(w.clone()) for w in weights.values()]
            sgd = torch.optim.SGD(
                alone,
                lr=float(cfg.optim.lr),
                momentum=float(self.momentum[k]),
                weight_decay=float(self.weight_decay[k]),
            ).state_dict()
            for i, p in enumerate(params.values()):
                buf = buffers.get(p, {}).get("momentum_buffer")
                if float(self.momentum[k]) != 0 and buf is not None:
                    sgd["state"][i] = {"momentum_buffer": buf[k].clone().cpu().reshape(alone[i].shape)}
            states = self.recorder.monitor_states(k) if self.recorder is not None else {}
            callbacks = {}
            for callback in monitors(cfg.monitor):
                for kind, name in ((StepRecorder, "recorder"), (DeadReLUMonitor, "dead_relu")):
                    if isinstance(callback, kind) and name in states:
                        callback.load_state_dict(states[name])  # through the monitor's own format
                        callbacks[callback.state_key] = callback.state_dict()
                if isinstance(callback, BackpropViewMonitor) and "view" in states:
                    callback.history = states["view"]  # what the monitor wrote: its state is made from it
                    callbacks[callback.state_key] = callback.state_dict()
            checkpoint = {
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "pytorch-lightning_version": L.__version__,
                "state_dict": weights,
                "loops": loops,
                "callbacks": callbacks,
                "optimizer_states": [sgd],
                "lr_schedulers": [],
                "hparams_name": None,
                "hyper_parameters": {"config": run_config(cfg)},
                "backprop_lab": {
                    "best_loss": float(self.best_loss[k]),
                    "final_loss": float(self.final_loss[k]),
                    "diverged_at": None,
                },
            }
            path = Path(run_dirs[k]) / CHECKPOINT
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, path)

    def on_train_end(self) -> None:
        """The final pass of every copy still running, at the step training ended; after a signal, none."""
        if not self.running.any():
            return
        if self.interrupted_by is not None:  # as a separate run: no final pass, its parameters at this step
            which = self.running.copy()
            # the record's forward pass under the weights it stops with; before the first update there is none,
            # and as a separate run's monitors, which have seen no pass, the record writes nothing (no probe)
            if self.recorder is not None and self._batch is not None:
                x, y = self._batch
                with torch.no_grad():
                    losses_t = self.loss_fn(self.net(x), y)
                self.recorder.final_rows(
                    which, self.global_step, dict(self.net.nodes), losses_t, list(self.net.parameters())
                )
                self.recorder.end(self.net, which, self.global_step)
            self.interrupted[which], self.steps[which], self.running[which] = True, self.global_step, False
            if self.gradients:
                params = self._params(which)
                ok = {k: p for k, p in params.items() if all(math.isfinite(v) for v in p.values())}
                self.copies.log_copy_metrics(ok, self.global_step)
            if self._batch is None and self.jobs is not None:  # stopped before its first update (a signal at
                self.save_copies(which)  # start-up): saved here, as a separate run's RunCheckpoint saves it
            return
        if self._batch is None:
            return
        x, y = self._batch
        with torch.no_grad():
            losses_t = self.loss_fn(self.net(x), y)
        losses = losses_t.cpu().double().numpy()
        self._final_pass(losses, self.running.copy(), self.global_step, dict(self.net.nodes), losses_t)

    def status(self, k: int, max_steps: int) -> str:
        if self.diverged_at[k] is not None:
            return "diverged"
        if self.interrupted[k]:
            return "interrupted"
        if self.tol > 0 and self.final_loss[k] < self.tol:
            return "converged"
        return "stopped" if max_steps > 0 and self.steps[k] < max_steps else "finished"


_STORY_NETS: dict[str, nn.Module] = {}


def story_net(cfg: DictConfig) -> nn.Module:
    """A network of the job's shape (its parameters' names and sizes, not its values), for the closing lines'
    TensorBoard link (:func:`backprop_lab.train.story_hint` pins ``params/*`` of a one-number weight,
    ``grad_norm/*`` of a larger one): one per model config and data set, built without touching the RNG."""
    mlp = cfg.model._target_ == MLP
    key = f"{cfg.model._target_} {cfg.model.hidden} {cfg.data.get('_target_')}" if mlp else cfg.model._target_
    if key not in _STORY_NETS:
        from backprop_lab.train import sizes_from_data

        with torch.random.fork_rng(devices=[]):
            data = instantiate(cfg.data, seed=cfg.seed) if mlp else None
            _STORY_NETS[key] = instantiate(cfg.model, **(sizes_from_data(cfg.model, data) if data else {}))
    return _STORY_NETS[key]


def copy_net(net: nn.Module, cfg: DictConfig) -> nn.Module:
    """``net`` (a post network) with the weights of ``cfg.model``: what ``instantiate(cfg.model)`` builds for a
    job of the same group (each weight a float32 1×1 matrix), in a twentieth of its time."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.fill_(float(cfg.model[name]))
    return net


def build_net(cfgs: Sequence[DictConfig]) -> StackedPostNet:
    kind = POST_NETS[cfgs[0].model._target_]
    names = ("w",) if kind == "linear" else ("w1", "w2")
    weights = {n: [float(c.model[n]) for c in cfgs] for n in names}
    return StackedPostNet(kind, weights, cfgs[0].model.get("relu_grad_at_zero", 0))


def sharpness_at_start(cfg: DictConfig) -> float | None:
    """λ_max, the largest eigenvalue of the loss Hessian at the job's initial weights, for the post's nets and the
    MLP (None for others, or where the power iteration does not settle): :func:`~backprop_lab.monitors.sharpness.
    hessian_top_eigenvalue` (the monitor's: power iteration on Hessian-vector products, forward over reverse
    through the hand-written Functions' ``jvp`` and ``backward``), in float64 to 1e-12. Gradient descent near
    that point is stable for η < 2/λ_max; for the linear net λ_max = 2x², so 2/λ_max = 1/x², the exact bound."""
    from backprop_lab.monitors.sharpness import hessian_top_eigenvalue

    kind = POST_NETS.get(cfg.model.get("_target_"))
    if cfg.model.get("_target_") == MLP:
        return _mlp_sharpness_at_start(cfg)
    if kind is None or "x" not in cfg.data:
        return None
    names = ("w",) if kind == "linear" else ("w1", "w2")
    w0 = {n: torch.tensor([[float(cfg.model[n])]], dtype=torch.float64) for n in names}
    x = torch.tensor([[float(cfg.data.x)]], dtype=torch.float64)
    y = torch.tensor([[float(cfg.data.y)]], dtype=torch.float64)
    at_zero = int(cfg.model.get("relu_grad_at_zero", 0))

    def loss(w: dict[str, Tensor]) -> Tensor:
        if kind == "linear":
            return F.mse_loss(F.linear(x, w["w"]), y)
        z1 = F.linear(x, w["w1"])
        h = F.sigmoid(z1) if kind == "sigmoid" else F.relu(z1, at_zero)
        return F.mse_loss(F.linear(h, w["w2"]), y)

    # a fixed start (not the global RNG): the figure is the same in every sweep
    top = hessian_top_eigenvalue(loss, w0, iters=1000, tol=1e-12, generator=torch.Generator().manual_seed(0))
    return top.value if top.converged else None


def _mlp_sharpness_at_start(cfg: DictConfig) -> float | None:
    """λ_max of the MLP's loss over its whole training set (the full-batch loss) at the weights its run starts
    from: the data and network drawn as the run draws them (torch's RNG seeded with the job's seed, restored
    after), in float64."""
    from torch.func import functional_call

    from backprop_lab.monitors.sharpness import hessian_top_eigenvalue
    from backprop_lab.train import build_net_and_data

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed))  # what L.seed_everything sets for torch in the run
        net, data = build_net_and_data(cfg)
    net = net.double()
    x, y = (t.double() for t in data.make_probe())
    loss_fn = LOSS_BY_TASK[data.task]
    w0 = {name: p.detach() for name, p in net.named_parameters()}

    def loss(w: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(net, w, (x,)), y)

    top = hessian_top_eigenvalue(loss, w0, iters=1000, tol=1e-12, generator=torch.Generator().manual_seed(0))
    return top.value if top.converged else None


def stability_bound(cfg: DictConfig) -> tuple[float, str] | None:
    """The bound the stability-edge figure draws for a job: η = 1/x² (exact) for the linear net, 2/λ_max at the
    start for the other post nets and the MLP (its full-batch loss); plain gradient descent only (no momentum,
    no weight decay)."""
    if float(cfg.optim.get("momentum", 0.0)) != 0.0 or float(cfg.optim.get("weight_decay", 0.0)) != 0.0:
        return None
    sharpness = sharpness_at_start(cfg)
    if sharpness is None or sharpness <= 0:
        return None
    if cfg.model._target_ == "backprop_lab.models.LinearNet":
        return 1.0 / float(cfg.data.x) ** 2, "η = 1/x²"
    return 2.0 / sharpness, "η = 2/λ_max at the start"


class _CopyWriter:
    """Copy k's part of a :class:`CopiesLogger` as the writer a TensorBoard logger writes summaries through
    (``experiment.file_writer.add_summary`` and ``add_event``, as ``SummaryWriter``'s): each summary one event at its
    step."""

    def __init__(self, copies: CopiesLogger, k: int):
        self.copies, self.k = copies, k

    @property
    def file_writer(self) -> _CopyWriter:
        return self

    def add_summary(self, summary, global_step: int | None = None) -> None:
        self.copies.log_copy_summaries(self.k, [summary], 0 if global_step is None else int(global_step))

    def add_event(self, event, step: int | None = None, walltime: float | None = None) -> None:
        """An ``Event`` holding a summary (what the package's logger writes a step as): its summary at ``step``."""
        self.add_summary(event.summary, step)

    def flush(self) -> None:
        """Written with the copies' events (:meth:`CopiesLogger.flush`)."""

    def close(self) -> None:
        """Closed with the copies' files."""


class CopyTensorBoardLogger(TensorBoardLogger):
    """The package's TensorBoard logger of copy k, made from the job's ``logger.tensorboard`` config, whose
    events go into the copy's event file of ``copies`` (no writer, thread or file of its own); the rest (its
    ``log_metrics``, ``log_hparams_record``, ``hparams.yaml`` at ``save()``) is the logger's own."""

    def __init__(self, copies: CopiesLogger, k: int, run_dir: Path, logger_cfg: DictConfig):
        kwargs = OmegaConf.to_container(logger_cfg, resolve=True)
        kwargs.pop("_target_", None)
        super().__init__(save_dir=str(run_dir), **kwargs)
        self._writer = _CopyWriter(copies, k)

    @property
    def experiment(self) -> _CopyWriter:
        return self._writer


class GroupRun(NamedTuple):
    """What :func:`train_group` returns: per job its result and its diagnoses (None where no monitor recorded
    the steps: :func:`backprop_lab.train.run_diagnoses`), and the signal that stopped the program, if one did."""

    results: list[TrainResult]
    signum: int | None
    diagnoses: list[list[Diagnosis] | None]


def train_group(
    cfgs: Sequence[DictConfig],
    run_dirs: Sequence[Path],
    overrides: Sequence[Sequence[str]],
    callbacks: Sequence[Callback] = (),
    config_texts: Sequence[str | None] | None = None,
) -> GroupRun:
    """Train the jobs ``cfgs`` (equal but for the batchable keys) as one program; each logs to its run dir.

    Returns each job's result and diagnoses (what its closing lines say) and the signal (SIGINT, SIGTERM) that
    came while it ran, if one did. As :func:`backprop_lab.train.train` holds them for a separate run, the
    program holds :class:`SignalNotes` from its first line to its last: a signal during start-up stops it
    before its first update, one during training after the update in which it came (:class:`GracefulStop`),
    and the copies still running end ``interrupted`` at that step, each with its checkpoint; one after training
    lets the copies' record complete first. ``callbacks``: Lightning callbacks of the caller's own.
    ``config_texts``: each job's ``OmegaConf.to_yaml`` text where the caller has it already (the launcher writes
    it to ``.hydra/config.yaml``); the Text tab's ``config`` is made from it."""
    with SignalNotes() as notes:  # before the copies' first write, as train() before its run's
        results, found = _train_copies(cfgs, run_dirs, overrides, callbacks, config_texts, notes)
    return GroupRun(results, notes.signum, found)


def _train_copies(
    cfgs: Sequence[DictConfig],
    run_dirs: Sequence[Path],
    overrides: Sequence[Sequence[str]],
    callbacks: Sequence[Callback],
    config_texts: Sequence[str | None] | None,
    notes: SignalNotes,
) -> tuple[list[TrainResult], list[list[Diagnosis] | None]]:
    """:func:`train_group`'s work, with the signals of ``notes``: each job's result and diagnoses."""
    from torch.utils.tensorboard.summary import custom_scalars, text

    from backprop_lab.monitors import custom_scalars_layout

    started = time.perf_counter()
    cfg = cfgs[0]
    mlp = cfg.model._target_ == MLP
    datas: dict[int, L.LightningDataModule] = {}

    def data_for_seed(seed: int) -> L.LightningDataModule:
        if seed not in datas:
            datas[seed] = instantiate(cfg.data, seed=seed)
            datas[seed].setup()
        return datas[seed]

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = data_for_seed(int(cfg.seed))
    if mlp:  # each copy from its separate run's draws; with several seeds, each seed's data and order
        net = stacked_mlp(cfgs, data_for_seed, data.in_features, data.out_features)
        seeds = list(datas)
        if len(seeds) > 1:
            data = seeds_data([datas[s] for s in seeds])
    optim = [c.optim for c in cfgs]
    momenta = [float(o.get("momentum", 0.0)) for o in optim]
    decays = [float(o.get("weight_decay", 0.0)) for o in optim]
    module = BatchedModule(
        net if mlp else build_net(cfgs),
        lrs=[float(o.lr) for o in optim],
        momenta=momenta,
        weight_decays=decays,
        tol=float(cfg.tol),
        gradients=bool(cfg.monitor.gradients),
        loss_fn=stacked_bce_with_logits if data.task == "classification" else stacked_mse_loss,
        seed_index=[seeds.index(int(c.seed)) for c in cfgs] if mlp and len(seeds) > 1 else None,
    )
    if cfg.trainer.enable_checkpointing:  # each copy's checkpoint, written where a signal stops the program
        module.jobs = (cfgs, run_dirs)
    copies = CopiesLogger(run_dirs)
    monitor = cfg.monitor
    post_net = None if mlp else instantiate(cfg.model)  # the first job's network, as a separate run builds it
    recorded = monitor.gradients or monitor.dead_relu or monitor.backprop_view or monitor.pictures  # train.monitors
    if recorded and mlp:
        probe_x = data.probe_x
        if probe_x is not None:  # (1 or K, P, in): shared, or each copy's seed's
            probe_x = probe_x[module.seed_index] if module.seed_index is not None else probe_x.unsqueeze(0)
        module.recorder = MLPRecorder(
            module.net,
            optimizer=str(cfg.optim._target_).rsplit(".", 1)[-1],
            lrs=module.lrs,
            momenta=momenta,
            weight_decays=decays,
            copies=copies,
            gradients=bool(monitor.gradients),
            dead_relu=bool(monitor.dead_relu),
            view=bool(monitor.backprop_view),
            probe_every=int(monitor.probe_every_n_steps),
            histogram_every=int(monitor.histogram_every_n_steps),
            probe_x=probe_x,
            double=str(cfg.trainer.precision) in ("64-true", "64"),
            saturation_threshold=float(monitor.saturation_threshold),
        )
    elif recorded:
        module.recorder = CopiesRecorder(
            module.net.kind,
            post_net,
            optimizer=str(cfg.optim._target_).rsplit(".", 1)[-1],
            lrs=module.lrs,
            momenta=momenta,
            weight_decays=decays,
            copies=copies,
            view=bool(monitor.backprop_view),
            dead_relu=bool(monitor.dead_relu),
            probe_every=int(monitor.probe_every_n_steps),
            probe_x=data.probe_x,
            relu_grad_at_zero=int(cfg.model.get("relu_grad_at_zero", 0)),
            double=str(cfg.trainer.precision) in ("64-true", "64"),
        )
    replays: dict[tuple, list] = {}  # the replay reads the weights and SGD's numbers: copies differing in seed share it
    layout = custom_scalars(custom_scalars_layout())  # the same for every copy
    start_nets: dict[tuple, nn.Module] = {}  # per starting weights, the net the replay copies
    optimizer = instantiate(cfg.optim) if not mlp else None  # the jobs differ only in batchable keys

    def copy_optim(optim: DictConfig):
        """``instantiate(optim)`` for a job of the group: the first job's partial (called as Hydra's partial is)
        given the job's own values of the batchable keys, as its config holds them."""
        own = {k: optim[k] for k in ("lr", "momentum", "weight_decay") if k in optimizer.keywords}
        return lambda params: optimizer(params, **own)

    for k, c in enumerate(cfgs):  # the Text tab and the Custom Scalars layout, as a separate run writes them
        yaml = config_texts[k] if config_texts is not None and config_texts[k] is not None else None
        yaml = OmegaConf.to_yaml(c, resolve=False) if yaml is None else yaml
        config = "\n".join("    " + line for line in yaml.splitlines())
        summaries = [text("config", config), layout]
        if (
            c.replay.to_tensorboard and not mlp
        ):  # the post's step 0 replayed, from the copy's own start (log_replay's text)
            key = (
                *(float(c.model[n]) for n, _ in post_net.named_parameters()),
                float(optim[k].lr),
                momenta[k],
                decays[k],
            )
            if key not in replays:
                replays[key] = []
                with contextlib.suppress(ConfigError):  # not the post's example: nothing to replay, as log_replay
                    start = key[:-3]  # the copy's starting weights: replay copies the net it is given
                    if start not in start_nets:
                        start_nets[start] = copy_net(post_net, c)
                    replays[key] = [text("replay", to_markdown(replay(c, start_nets[start], copy_optim(c.optim))))]
            summaries += replays[key]
        copies.log_copy_summaries(k, summaries)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        deterministic=cfg.trainer.deterministic,
        max_steps=cfg.trainer.max_steps,
        max_epochs=-1,
        log_every_n_steps=1,
        logger=copies,
        callbacks=[*callbacks, GracefulStop(notes)],  # in build_run's order: the stop comes last
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dirs[0]),
    )
    try:
        with expected_warnings():
            trainer.fit(module, datamodule=data)
    except BaseException:  # failed: what the copies logged so far stays readable
        copies.finalize("failed")
        raise
    wall = time.perf_counter() - started
    recorder = module.recorder
    found = recorder.diagnoses() if recorder is not None else [None] * len(cfgs)
    relu = recorder is not None and recorder.relu
    results = []
    for k, (c, run_dir) in enumerate(zip(cfgs, run_dirs)):
        logged = relu and recorder.last_step[k] >= 0  # the dead-ReLU monitor logged this copy
        if mlp:
            dead_since = recorder.dead_since(k) if recorder is not None else {}
            final_dead = recorder.final_dead_fraction(k) if recorder is not None else None
        else:
            dead_since = {"h": recorder.dead_since[k]} if logged else {}
            final_dead = float(recorder.last_dead_fraction[k]) if logged else None
        result = TrainResult(
            status=module.status(k, cfg.trainer.max_steps),
            final_loss=float(module.final_loss[k]),
            best_loss=float(module.best_loss[k]),
            steps=int(module.steps[k]),
            log_dir=str(run_dir),
            diverged_at=module.diverged_at[k],
            dead_since=dead_since,
            wall_time_s=wall,
            final_dead_fraction=final_dead,
        )
        if found[k]:  # the Text tab's diagnoses, at the step the copy ended (as fit_run writes them)
            lines = "\n\n".join(f"**step {d.step}**: {d.text}" for d in found[k])
            copies.log_copy_summaries(k, [text("diagnoses", lines)], result.steps)
        # The HParams record, hparams/* scalars and hparams.yaml exactly as a separate run writes them: the run's
        # own function, through the package's TensorBoard logger writing into the copy's event file.
        (logger_cfg,) = c.logger.values()  # the package's TensorBoard logger: groups.why_not_batched
        logger = CopyTensorBoardLogger(copies, k, run_dir, logger_cfg)
        logger.save()  # hparams.yaml, as a separate run's logger writes it at its first step: no hparams yet
        log_hparams([logger], c, result, overrides[k])
        logger.finalize("success")
        results.append(result)
    copies.finalize("success")
    return results, found
