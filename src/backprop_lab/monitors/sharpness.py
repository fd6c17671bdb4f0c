"""Sharpness: λ_max, the largest eigenvalue of the loss Hessian, by power iteration on Hessian-vector products.

Gradient descent with step η on a quadratic of curvature λ multiplies the error along that direction by
(1 − η·λ) each step: it converges only while η·λ < 2. Near a point the loss is such a quadratic in the
Hessian's eigen-directions, so the sharpest one, λ_max, sets the edge: η < 2/λ_max (with momentum μ,
η < 2(1 + μ)/λ_max). For the post's linear net L = (y − w·x)², λ_max = 2x² and 2/λ_max = 1/x² exactly.

- :func:`hessian_top_eigenvalue`: λ_max of any ``loss_fn(params)`` (torch only);
- :class:`SharpnessMonitor`: a Lightning callback that measures λ_max every n steps on the step's batch and
  logs ``sharpness/lambda_max`` beside ``sharpness/two_over_lr`` (2/η).

A Hessian-vector product H·v is forward mode over reverse mode: the gradient ``torch.autograd.grad`` of the loss
at dual parameters w + ε·v (``torch.autograd.forward_ad``), whose tangent is H·v. On the package's networks it
runs the hand-written Functions: the gradient is their ``backward``, and the tangent v goes through their
``jvp`` in the forward pass and through the plain tensor ops of their ``backward`` in the reverse one. H is
never built. (``torch.func.jvp`` of ``torch.func.grad`` runs the same formulas at 2.7× the cost on the post's
nets: the transforms' overhead on tiny tensors.) Where forward mode fails inside a stock op's backward (torch
2.13's ``F.mse_loss``), the products are reverse over reverse instead: ``torch.func.vjp`` of the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, NamedTuple

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.autograd import forward_ad as fwAD
from torch.func import functional_call, grad, vjp

from backprop_lab.diagnoses import SharpnessPoint
from backprop_lab.monitors.backprop_view import BackpropViewMonitor
from backprop_lab.monitors.common import all_callbacks, log_metrics
from backprop_lab.monitors.dead_relu import DeadReLUMonitor
from backprop_lab.monitors.gradients import GradientMonitor
from backprop_lab.monitors.pictures import PictureMonitor
from backprop_lab.monitors.record import StepRecorder

__all__ = ["SharpnessMonitor", "TopEigenvalue", "hessian_top_eigenvalue"]

# The callbacks that drive the step record (backprop_lab.monitors.record), which hooks the network's forward.
RECORDING = (StepRecorder, GradientMonitor, DeadReLUMonitor, BackpropViewMonitor, PictureMonitor)


class TopEigenvalue(NamedTuple):
    value: float  # λ_max, the largest (algebraic) eigenvalue of the Hessian; a lower bound if not converged
    vector: dict[str, Tensor]  # its eigenvector, unit length, shaped like the parameters
    products: int  # Hessian-vector products spent
    converged: bool  # the residual ‖H·v − λ·v‖ fell to tol·‖H·v‖


def hessian_top_eigenvalue(
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    params: dict[str, Tensor],
    iters: int = 20,
    tol: float = 1e-2,
    start: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> TopEigenvalue:
    """λ_max of the Hessian of ``loss_fn`` (a scalar function of the parameters dict) at ``params``.

    Power iteration v ← H·v/‖H·v‖, from ``start`` or a random vector (drawn from ``generator``, never from the
    global RNG), stops when the residual ‖H·v − λ·v‖ ≤ ``tol``·‖H·v‖, with λ = vᵀ·H·v the Rayleigh quotient;
    at most ``iters`` products each run. The Rayleigh quotient's error is of the order of the residual squared
    over the gap to the next eigenvalue: ``tol`` = 10⁻² gives λ_max to about 10⁻⁴ where the gap is λ_max/2.

    Power iteration finds the eigenvalue of largest *magnitude*, ρ. Where that one is negative (a saddle or a
    maximum), or the iteration does not settle (eigenvalues ρ and −ρ), a second run on the shifted matrix
    H + ρ·I, whose eigenvalues λᵢ + ρ are all ≥ 0, finds the largest of those, λ_max + ρ: so ``value`` is
    always the largest *algebraic* eigenvalue. The Rayleigh quotient never exceeds λ_max, so an unconverged
    ``value`` is a lower bound. A Hessian that is 0 (a dead ReLU net, say) gives 0.
    """
    names = list(params)
    primals = {n: params[n].detach() for n in names}
    shapes = [primals[n].shape for n in names]
    sizes = [primals[n].numel() for n in names]
    ref = primals[names[0]]

    def unflat(v: Tensor) -> dict[str, Tensor]:
        return {n: part.reshape(shape) for n, part, shape in zip(names, v.split(sizes), shapes)}

    reverse = None  # vjp of the gradient, where forward over reverse fails

    def hvp(v: Tensor) -> Tensor:
        nonlocal reverse
        if reverse is None:
            try:
                with fwAD.dual_level():  # w + ε·v: every value carries its derivative along v
                    dual = {n: fwAD.make_dual(primals[n].requires_grad_(), t) for n, t in unflat(v).items()}
                    grads = torch.autograd.grad(loss_fn(dual), list(dual.values()))  # ∇L(w), its tangent H·v
                    return torch.cat([fwAD.unpack_dual(g).tangent.reshape(-1) for g in grads])
            except RuntimeError as error:
                # torch 2.13: forward mode through stock F.mse_loss's backward writes into a zero tangent. Then
                # reverse over reverse: H·v as the vjp of the gradient (H is symmetric), one graph for every v.
                if "ZeroTensors are immutable" not in str(error):
                    raise
                reverse = vjp(grad(loss_fn), {n: t.detach() for n, t in primals.items()})[1]
        (hv,) = reverse(unflat(v))
        return torch.cat([hv[n].reshape(-1) for n in names])

    def random() -> Tensor:
        return torch.randn(sum(sizes), generator=generator, dtype=ref.dtype).to(ref.device)

    v0 = random() if start is None else torch.cat([start[n].detach().reshape(-1) for n in names]).to(ref)
    if not bool(v0.norm() > 0):
        v0 = random()
    products = 0

    def power(v: Tensor, shift: float) -> tuple[float, float, Tensor, bool]:
        """(λ, ‖(H + shift·I)·v‖, v, converged) after at most ``iters`` products."""
        nonlocal products
        v = v / v.norm()
        rayleigh, norm = math.nan, 0.0
        for _ in range(iters):
            hv = hvp(v)
            products += 1
            rayleigh = float(v @ hv)  # vᵀ·H·v: the shift does not enter it
            bv = hv + shift * v if shift else hv
            norm = float(bv.norm())
            if not math.isfinite(norm) or norm == 0:
                return rayleigh, norm, v, math.isfinite(norm)
            if float((hv - rayleigh * v).norm()) <= tol * norm:
                return rayleigh, norm, v, True
            v = bv / norm
        return rayleigh, norm, v, False

    value, rho, v, converged = power(v0, 0.0)
    if rho == 0 or not math.isfinite(rho) or (converged and value >= 0):
        return TopEigenvalue(value if rho else 0.0, unflat(v), products, converged)
    # ρ = ‖H·v‖ ≤ the spectral radius: H + ρ·I has eigenvalues ≥ 0 (as good as), its largest λ_max + ρ. From
    # the start again (a last λ_max's eigenvector is near the new one), or afresh: v may be λ_min's eigenvector.
    first = (value, v)
    value, _, v, converged = power(v0 if start is not None else random(), rho)
    if not converged and first[0] > value:  # two Rayleigh quotients, both ≤ λ_max: the larger is the nearer
        value, v = first
    return TopEigenvalue(value, unflat(v), products, converged)


# --- the monitor --------------------------------------------------------------------------------------------


class _LossOf(nn.Module):
    """``loss_fn(module, batch)`` as a module's forward, so functional_call can swap the module's parameters."""

    def __init__(self, module: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor]):
        super().__init__()
        self.module, self.loss_fn = module, loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.module, batch)


def backprop_module_loss(module: nn.Module, batch: Any) -> Tensor:
    """The loss of backprop-lab's BackpropModule (and of any module with ``net`` and ``loss_fn``): loss_fn(net(x), y)."""
    x, y = batch
    return module.loss_fn(module.net(x), y)


class SharpnessMonitor(Callback):
    """Logs λ_max, the largest eigenvalue of the loss Hessian w.r.t. the trainable parameters, every
    ``every_n_steps`` steps (step 0, n, 2n, …), beside 2/η:

    - ``sharpness/lambda_max``: λ_max at the parameters before that step's update, on that step's batch
      (its first micro-batch under gradient accumulation);
    - ``sharpness/two_over_lr``: 2/η, the largest λ_max that plain gradient descent with step η is stable at
      (η: the largest learning rate of the optimizer's parameter groups).

    Gradient descent overshoots along the sharpest direction once λ_max > 2/η. ``loss_fn(module, batch)`` gives
    the loss; by default ``loss_fn(net(x), y)`` for a module with ``net`` and ``loss_fn`` (backprop-lab's
    ``BackpropModule``). Training is untouched: the products run on detached copies of the parameters, leave
    ``.grad`` alone, and the global RNG state is restored after them. ``iters`` and ``tol`` are those of
    :func:`hessian_top_eigenvalue`; each measurement starts from the last one's eigenvector. ``measurements``
    keeps every value (:class:`~backprop_lab.diagnoses.SharpnessPoint`), for the run's diagnoses, and checkpoints.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        iters: int = 20,
        tol: float = 1e-2,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps!r}: use an integer >= 1")
        if iters < 1:
            raise ValueError(f"iters={iters!r}: use an integer >= 1")
        self.every_n_steps, self.loss_fn, self.iters, self.tol = every_n_steps, loss_fn, iters, tol
        self.measurements: list[SharpnessPoint] = []
        self._vector: dict[str, Tensor] | None = None
        self._generator = torch.Generator().manual_seed(0)  # the start vector's draws: never the global RNG
        self._last_step: int | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.loss_fn is None and not (hasattr(pl_module, "net") and hasattr(pl_module, "loss_fn")):
            raise ValueError(
                f"SharpnessMonitor cannot tell the loss of {type(pl_module).__name__}: it has no `net` and `loss_fn` "
                "(as backprop_lab's BackpropModule has); pass SharpnessMonitor(loss_fn=lambda module, batch: ...), "
                "the loss of a batch as training_step computes it"
            )
        # The products run the network's forward. Before the step record starts the step they pass its hooks
        # unseen; after, the record would take them for the step's own forward passes.
        ordered = all_callbacks(trainer)  # a MonitorGroup's members in their turn
        before = ordered[: ordered.index(self)] if self in ordered else []
        recording = [type(cb).__name__ for cb in before if isinstance(cb, RECORDING)]
        if recording:
            raise ValueError(
                f"SharpnessMonitor comes after {', '.join(recording)} among the trainer's callbacks: put it before "
                "them, so that its Hessian-vector products run before the step record starts the step"
            )

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step:  # once a step, at its first micro-batch
            return
        self._last_step = step
        point = self.measure(trainer, pl_module, batch)
        if point is None:
            return
        self.measurements.append(point)
        metrics = {"sharpness/lambda_max": point.lambda_max}
        if point.lr > 0:
            metrics["sharpness/two_over_lr"] = 2.0 / point.lr
        log_metrics(trainer, metrics, step)

    def measure(self, trainer: Trainer, pl_module: LightningModule, batch: Any) -> SharpnessPoint | None:
        """λ_max at the module's parameters on ``batch`` (None where a parameter is not finite)."""
        params = {n: p.detach() for n, p in pl_module.named_parameters() if p.requires_grad}
        if not params or not all(bool(torch.isfinite(p).all()) for p in params.values()):
            return None
        wrapper = _LossOf(pl_module, self.loss_fn or backprop_module_loss)
        # Buffers as copies: a layer that updates one in its forward (BatchNorm's running mean) updates the copy.
        state = {f"module.{n}": p for n, p in params.items()}
        state |= {f"module.{n}": b.detach().clone() for n, b in pl_module.named_buffers()}

        def loss(p: dict[str, Tensor]) -> Tensor:
            return functional_call(wrapper, {**state, **p}, (batch,))

        start = None if self._vector is None else {f"module.{n}": v for n, v in self._vector.items()}
        devices = [p.device for p in params.values() if p.device.type == "cuda"]
        with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):  # dropout's draws too
            top = hessian_top_eigenvalue(
                loss,
                {f"module.{n}": p for n, p in params.items()},
                self.iters,
                self.tol,
                start=start,
                generator=self._generator,
            )
        self._vector = {n.removeprefix("module."): v for n, v in top.vector.items()}
        lr, momentum, weight_decay = _step_size(trainer)
        return SharpnessPoint(trainer.global_step, top.value, lr, momentum, weight_decay)

    def state_dict(self) -> dict[str, Any]:
        return {"measurements": [asdict(p) for p in self.measurements]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.measurements = [SharpnessPoint(**p) for p in state_dict.get("measurements", [])]


def _step_size(trainer: Trainer) -> tuple[float, float, float]:
    """η, μ and weight decay of the parameter group with the largest η (NaN η without an optimizer)."""
    groups = [g for opt in trainer.optimizers for g in opt.param_groups]
    if not groups:
        return math.nan, 0.0, 0.0
    group = max(groups, key=lambda g: float(g["lr"]))
    return float(group["lr"]), float(group.get("momentum", 0.0) or 0.0), float(group.get("weight_decay", 0.0) or 0.0)
