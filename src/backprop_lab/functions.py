"""The primitives of backprop-lab: autograd Functions whose backward is written by hand.

Each Function keeps its forward and its local derivative on one screen, in the post's notation:
``forward`` computes the value, ``setup_context`` saves what the derivative needs, ``backward``
multiplies the incoming gradient by the local derivative (the chain rule, one link at a time).
No backward here calls autograd; each uses the same ATen kernels PyTorch's own backward uses, so
hand-written code runs as fast as native.

The lower-case helpers (``linear``, ``sigmoid``, ``relu``, ``leaky_relu``, ``mse_loss``) are what the
models call. They go straight to the C-level ``apply`` outside ``torch.func`` transforms: the modern
``forward`` + ``setup_context`` style otherwise pays an ``inspect.signature(...).bind()`` on every call
(about 15 µs in torch 2.x), which is most of the cost on the post's two-parameter networks.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch._C import _are_functorch_transforms_active

__all__ = [
    "LinearFunction",
    "SigmoidFunction",
    "ReLUFunction",
    "LeakyReLUFunction",
    "MSELossFunction",
    "linear",
    "sigmoid",
    "relu",
    "leaky_relu",
    "mse_loss",
]


class LinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b, for x of shape (..., in), W (out, in), b (out,) or None.

    Local derivatives: ∂y/∂x = W, ∂y/∂W = x, ∂y/∂b = 1, so
    ∂L/∂x = g·W,  ∂L/∂W = gᵀ·x (summed over the batch),  ∂L/∂b = Σ_batch g.
    The post's scalar ŷ = w·x is the case in = out = 1.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if x.dim() == 2:
            return torch.addmm(bias, x, weight.t()) if bias is not None else x.mm(weight.t())
        y = x.matmul(weight.t())
        return y + bias if bias is not None else y

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        # Only what backward will use, as native addmm saves: W for ∂L/∂x, x for ∂L/∂W. A first
        # layer (x needs no gradient) thus keeps no copy of W alive.
        need_x, need_w, _ = ctx.needs_input_grad
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad  # need_b is False when there is no bias
        grad_x = g.matmul(weight) if need_x else None
        if g.dim() != 2:  # (..., out): every leading dim is batch; the post's 2-D case skips the reshapes
            g = g.reshape(-1, g.shape[-1])
            x = x.reshape(-1, x.shape[-1]) if need_w else None
        grad_w = g.t().mm(x) if need_w else None
        grad_b = g.sum(0) if need_b else None
        return grad_x, grad_w, grad_b


class SigmoidFunction(torch.autograd.Function):
    """h = σ(z) = 1 / (1 + e^(−z)).

    Local derivative from the saved output: dσ/dz = σ(z)·(1 − σ(z)) = h·(1 − h), so ∂L/∂z = g·h·(1 − h).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g: Tensor):
        (h,) = ctx.saved_tensors
        # g·h·(1 − h) in one fused kernel (the one native sigmoid's backward uses).
        return torch.ops.aten.sigmoid_backward(g, h)


class ReLUFunction(torch.autograd.Function):
    """h = ReLU(z) = max(0, z).

    Local derivative: ReLU′(z) = 1 for z > 0, 0 for z < 0, and at exactly z = 0 the value
    ``grad_at_zero`` (0 or 1; the post leaves it open, PyTorch and micrograd use 0).
    So ∂L/∂z = g·1[z > 0] (or g·1[z ≥ 0] when grad_at_zero = 1).

    With grad_at_zero = 0 the output is saved, not a mask: h > 0 exactly where z > 0, and a saved
    output costs no extra memory (the next layer keeps it anyway) and no slow boolean kernel.
    With grad_at_zero = 1 the input is saved, since h = 0 cannot tell z = 0 from z < 0.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, grad_at_zero: int = 0) -> Tensor:
        return torch.relu(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, grad_at_zero = inputs
        ctx.grad_at_zero = grad_at_zero
        ctx.save_for_backward(output if grad_at_zero == 0 else z)

    @staticmethod
    def backward(ctx, g: Tensor):
        (saved,) = ctx.saved_tensors
        if ctx.grad_at_zero == 0:
            # g where h > 0, else 0: the kernel native ReLU's backward uses.
            return torch.ops.aten.threshold_backward(g, saved, 0), None
        # g where z ≥ 0, else 0.
        return g * (saved >= 0).to(g.dtype), None


class LeakyReLUFunction(torch.autograd.Function):
    """h = z for z > 0, a·z otherwise (a = ``negative_slope``, 0 ≤ a < 1).

    Local derivative: 1 for z > 0, a for z ≤ 0, so ∂L/∂z = g for z > 0 and a·g otherwise.
    A unit never stops passing gradient unless a = 0: the post's cure for dead ReLUs.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, negative_slope: float = 0.01) -> Tensor:
        return torch.nn.functional.leaky_relu(z, negative_slope)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, negative_slope = inputs
        ctx.negative_slope = negative_slope
        ctx.save_for_backward(z)

    @staticmethod
    def backward(ctx, g: Tensor):
        (z,) = ctx.saved_tensors
        return torch.ops.aten.leaky_relu_backward(g, z, ctx.negative_slope, False), None


class MSELossFunction(torch.autograd.Function):
    """L = mean((y − ŷ)²) over every element.

    Local derivatives: ∂L/∂ŷ = −2·(y − ŷ)/N = 2·(ŷ − y)/N and ∂L/∂y = −∂L/∂ŷ,
    where N is the number of elements (N = 1 in the post, so ∂L/∂ŷ = −2·(y − ŷ)).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y_hat: Tensor, y: Tensor) -> Tensor:
        # mean((ŷ − y)²) in one fused kernel (F.mse_loss's) instead of three ops: ~6 µs a call.
        return torch.ops.aten.mse_loss(y_hat, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y = inputs
        ctx.save_for_backward(y_hat, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        y_hat, y = ctx.saved_tensors
        # g·2·(ŷ − y)/N in one fused kernel (the one native mse_loss's backward uses; 1 = mean).
        grad_y_hat = torch.ops.aten.mse_loss_backward(g, y_hat, y, 1)
        need_y_hat, need_y = ctx.needs_input_grad
        return (grad_y_hat if need_y_hat else None), (-grad_y_hat if need_y else None)


def _apply(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)`` with every argument given positionally.

    Outside ``torch.func`` transforms this is exactly what ``Function.apply`` does after binding
    default arguments, minus the per-call ``inspect.signature`` cost; inside them it defers to
    ``Function.apply`` so vmap/grad rules still apply. It also skips ``unwrap_dead_wrappers``, which
    only matters for a tensor that escaped a transform into a Function whose backward calls another
    Function (ours call ATen ops only); that saves ~1 µs a call.
    """
    if _are_functorch_transforms_active():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*args)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return _apply(LinearFunction, x, weight, bias)


def sigmoid(z: Tensor) -> Tensor:
    return _apply(SigmoidFunction, z)


def relu(z: Tensor, grad_at_zero: int = 0) -> Tensor:
    return _apply(ReLUFunction, z, grad_at_zero)


def leaky_relu(z: Tensor, negative_slope: float = 0.01) -> Tensor:
    return _apply(LeakyReLUFunction, z, negative_slope)


def mse_loss(y_hat: Tensor, y: Tensor) -> Tensor:
    return _apply(MSELossFunction, y_hat, y)


class BCEWithLogitsFunction(torch.autograd.Function):
    """L = mean(−y·log σ(ŷ) − (1 − y)·log(1 − σ(ŷ))) for logits ŷ and labels y ∈ {0, 1}.

    Computed as mean(max(ŷ, 0) − ŷ·y + log(1 + e^(−|ŷ|))), which never takes the log of 0 nor
    overflows e^ŷ, whatever the size of ŷ.
    Local derivatives: ∂L/∂ŷ = (σ(ŷ) − y)/N and ∂L/∂y = −ŷ/N, where N is the number of elements.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y_hat: Tensor, y: Tensor) -> Tensor:
        return (y_hat.clamp(min=0) - y_hat * y + torch.log1p(torch.exp(-y_hat.abs()))).mean()

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y = inputs
        ctx.save_for_backward(y_hat, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        y_hat, y = ctx.saved_tensors
        scale = g / y_hat.numel()
        grad_y_hat = (torch.sigmoid(y_hat) - y) * scale if ctx.needs_input_grad[0] else None
        grad_y = -y_hat * scale if ctx.needs_input_grad[1] else None
        return grad_y_hat, grad_y


def bce_with_logits(y_hat: Tensor, y: Tensor) -> Tensor:
    return _apply(BCEWithLogitsFunction, y_hat, y)


__all__ += ["BCEWithLogitsFunction", "bce_with_logits"]
