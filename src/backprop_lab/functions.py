"""The primitives of backprop-lab: autograd Functions whose derivatives are written by hand.

Each Function keeps its value and its local derivative on one screen, in the post's notation:
``forward`` computes the value, ``setup_context`` saves what the derivatives need, ``backward`` is
reverse mode (the incoming gradient g = ∂L/∂out times the local derivative: the chain rule, one
link at a time) and ``jvp`` is forward mode (the same local derivative times an input's tangent).
Both are plain tensor arithmetic, never a call into PyTorch's own derivative kernels, so they can be
read against the post; ``torch.compile`` is what makes them fast (it fuses the plain ops).

The lower-case helpers (``linear``, ``sigmoid``, ``relu``, ``leaky_relu``, ``mse_loss``,
``bce_with_logits``) are what the models call: ``Fn.apply``, or under ``torch.compile`` the same
Function without its jvp, which Dynamo cannot trace (``_without_jvp``). docs/functions.md is the manual.
"""

from __future__ import annotations

import inspect
import math
import warnings

import torch
from torch import Tensor

__all__ = [
    "LinearFunction",
    "SigmoidFunction",
    "ReLUFunction",
    "LeakyReLUFunction",
    "MSELossFunction",
    "BCEWithLogitsFunction",
    "linear",
    "sigmoid",
    "relu",
    "leaky_relu",
    "mse_loss",
    "bce_with_logits",
]


def _save_for_forward(ctx, *tensors: Tensor | None) -> None:
    # What jvp reads. Dynamo traces only ctx.save_for_backward, and compiled code runs the Functions
    # without their jvp (see _apply), so there is nothing to keep while torch.compile traces.
    if not torch.compiler.is_compiling():
        ctx.save_for_forward(*tensors)


class LinearFunction(torch.autograd.Function):
    """y = x·Wᵀ + b, for x of shape (..., in), W (out, in) or (in,), b broadcastable to y, or None.

    Reverse: ∂L/∂x = g·W,  ∂L/∂W = gᵀ·x (summed over the batch),  ∂L/∂b = Σ_batch g.
    Forward: dy = dx·Wᵀ + x·dWᵀ + db.
    The post's scalar ŷ = w·x is the case in = out = 1; a 1-D W is the case out = 1 with that dim dropped.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if x.dim() == 2 and bias is not None:
            return torch.addmm(bias, x, weight.t())  # b + x·Wᵀ in one matrix product, as F.linear does
        y = x.matmul(weight.t())
        if bias is None:
            return y
        if torch.broadcast_shapes(y.shape, bias.shape) != y.shape:  # F.linear adds b in place: y keeps its shape
            raise RuntimeError(f"linear: bias of shape {tuple(bias.shape)} does not fit y of shape {tuple(y.shape)}")
        return y + bias.to(y.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        if torch.compiler.is_compiling():
            # Only what backward will use, as native addmm saves: W for ∂L/∂x, x for ∂L/∂W. A compiled
            # first layer (x needs no gradient) thus keeps no copy of W alive.
            need_x, need_w, _ = ctx.needs_input_grad
            ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        else:
            # Eager keeps x and W for jvp anyway (save_for_forward), so backward saves the same pair: under
            # torch.func.vmap the generated rule keeps one batch dim per saved slot, the last save's, and a
            # None saved where save_for_forward saw a batched W failed in backward (issue 18).
            ctx.save_for_backward(x, weight)
        _save_for_forward(ctx, x, weight)
        ctx.w_is_vector = weight.dim() == 1
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.bias_shape = None if bias is None else bias.shape

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad  # need_b is False when there is no bias
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        # Each gradient in its input's dtype. Under autocast the forward ran in g's dtype (bf16, say)
        # on float32 inputs, so the products below run in g's dtype too, as native autocast's do.
        grad_x = grad_w = grad_b = None
        if need_b:
            grad_b = g.sum_to_size(ctx.bias_shape).to(b_dtype)
        if ctx.w_is_vector:  # y = x·w is the out = 1 case with that dim dropped: put it back
            g = g.unsqueeze(-1)
            w = None if w is None else w.unsqueeze(0)
        if need_x:
            grad_x = (g @ w.to(g.dtype)).to(x_dtype)
        if need_w:
            if g.dim() != 2:  # every leading dim is batch; the post's 2-D case needs no reshape
                rows = math.prod(x.shape[:-1])
                g, x = g.reshape(rows, g.shape[-1]), x.reshape(rows, x.shape[-1])
            grad_w = (g.t() @ x.to(g.dtype)).to(w_dtype)
            grad_w = grad_w[0] if ctx.w_is_vector else grad_w
        return grad_x, grad_w, grad_b

    @staticmethod
    def jvp(ctx, dx: Tensor, dw: Tensor, db: Tensor | None):
        x, w = ctx.saved_tensors
        dy = dx.matmul(w.t()) + x.matmul(dw.t())
        return dy if db is None else dy + db


class SigmoidFunction(torch.autograd.Function):
    """h = σ(z) = 1 / (1 + e^(−z)), whose derivative σ′(z) = σ(z)·(1 − σ(z)) = h·(1 − h) needs only h.

    Reverse: ∂L/∂z = g·h·(1 − h).   Forward: dh = dz·h·(1 − h).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        _save_for_forward(ctx, output)

    @staticmethod
    def backward(ctx, g: Tensor):
        (h,) = ctx.saved_tensors
        return g * h * (1 - h)

    @staticmethod
    def jvp(ctx, dz: Tensor):
        (h,) = ctx.saved_tensors
        return dz * h * (1 - h)


class ReLUFunction(torch.autograd.Function):
    """h = ReLU(z) = max(0, z).

    ReLU′(z) = 1 for z > 0, 0 for z < 0, and at exactly z = 0 the value ``grad_at_zero`` (0 or 1:
    the post leaves it open; PyTorch and micrograd use 0).
    Reverse: ∂L/∂z = g·1[z > 0] (g·1[z ≥ 0] when grad_at_zero = 1).   Forward: dh = dz·1[z > 0] (or 1[z ≥ 0]).

    With grad_at_zero = 0 the output is saved: h > 0 exactly where z > 0, and h costs no extra memory
    (the next layer keeps it anyway) while z can be freed. With grad_at_zero = 1 the input is saved,
    since h = 0 cannot tell z = 0 from z < 0.
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
        _save_for_forward(ctx, output if grad_at_zero == 0 else z)

    @staticmethod
    def backward(ctx, g: Tensor):
        (saved,) = ctx.saved_tensors
        # 1[z > 0] is sign(h), as h ≥ 0: a float op, about 3× faster on CPU than g * (h > 0), whose
        # bool mask is first copied to g's dtype. With grad_at_zero = 1, saved is z: 1[z ≥ 0].
        relu_prime = saved.sign() if ctx.grad_at_zero == 0 else saved >= 0
        return g * relu_prime, None

    @staticmethod
    def jvp(ctx, dz: Tensor, _):
        (saved,) = ctx.saved_tensors
        relu_prime = saved.sign() if ctx.grad_at_zero == 0 else saved >= 0
        return dz * relu_prime


class LeakyReLUFunction(torch.autograd.Function):
    """h = z for z > 0, a·z otherwise (a = ``negative_slope``).

    The derivative is 1 for z > 0 and a for z ≤ 0 (at z = 0 as PyTorch), so a unit never stops
    passing gradient unless a = 0: the post's cure for dead ReLUs.
    Reverse: ∂L/∂z = g for z > 0, a·g otherwise.   Forward: dh = dz for z > 0, a·dz otherwise.

    For a ≥ 0 the output is saved (h > 0 exactly where z > 0), so z can be freed, as in ReLUFunction.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor, negative_slope: float = 0.01) -> Tensor:
        return torch.where(z > 0, z, negative_slope * z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, negative_slope = inputs
        ctx.negative_slope = negative_slope
        saved = output if negative_slope >= 0 else z  # a < 0 flips the sign of h where z < 0
        ctx.save_for_backward(saved)
        _save_for_forward(ctx, saved)

    @staticmethod
    def backward(ctx, g: Tensor):
        (saved,) = ctx.saved_tensors
        return torch.where(saved > 0, g, ctx.negative_slope * g), None

    @staticmethod
    def jvp(ctx, dz: Tensor, _):
        (saved,) = ctx.saved_tensors
        return torch.where(saved > 0, dz, ctx.negative_slope * dz)


class MSELossFunction(torch.autograd.Function):
    """L = mean((ŷ − y)²) over the N elements of ŷ − y (ŷ and y broadcast, as in F.mse_loss).

    Reverse: ∂L/∂ŷ = 2·(ŷ − y)/N·g and ∂L/∂y = −2·(ŷ − y)/N·g, each summed back to its input's shape.
    Forward: dL = mean(2·(ŷ − y)·(dŷ − dy)).
    The post has N = 1, so ∂L/∂ŷ = −2·(y − ŷ).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y_hat: Tensor, y: Tensor) -> Tensor:
        if y_hat.shape != y.shape:
            # torch's own warning: a (N, 1) ŷ against a (N,) y averages over N × N pairs.
            warnings.warn(
                f"Using a target size ({y.shape}) that is different to the input size ({y_hat.shape}). "
                "This will likely lead to incorrect results due to broadcasting. "
                "Please ensure they have the same size.",
                stacklevel=3,
            )
        return ((y_hat - y) ** 2).mean()

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y = inputs
        ctx.save_for_backward(y_hat, y)
        _save_for_forward(ctx, y_hat, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        y_hat, y = ctx.saved_tensors
        need_y_hat, need_y = ctx.needs_input_grad
        d = y_hat - y
        grad = 2 * d / d.numel() * g
        # A broadcast ŷ or y was used once per copy: its gradient is the sum over the copies.
        grad_y_hat = grad.sum_to_size(y_hat.shape).to(y_hat.dtype) if need_y_hat else None
        grad_y = (-grad).sum_to_size(y.shape).to(y.dtype) if need_y else None
        return grad_y_hat, grad_y

    @staticmethod
    def jvp(ctx, dy_hat: Tensor, dy: Tensor):
        y_hat, y = ctx.saved_tensors
        return (2 * (y_hat - y) * (dy_hat - dy)).mean()


class BCEWithLogitsFunction(torch.autograd.Function):
    """L = mean(−y·log σ(ŷ) − (1 − y)·log(1 − σ(ŷ))) for logits ŷ and labels y ∈ [0, 1] of one shape.

    Computed as mean(max(ŷ, 0) − ŷ·y + log(1 + e^(−|ŷ|))), which never takes the log of 0 nor
    overflows e^ŷ, whatever the size of ŷ. N is the number of elements.
    Reverse: ∂L/∂ŷ = (σ(ŷ) − y)/N·g and ∂L/∂y = −ŷ/N·g.   Forward: dL = mean((σ(ŷ) − y)·dŷ − ŷ·dy).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(y_hat: Tensor, y: Tensor) -> Tensor:
        if y_hat.shape != y.shape:  # refused, as F.binary_cross_entropy_with_logits refuses it
            raise ValueError(f"Target size ({y.shape}) must be the same as input size ({y_hat.shape})")
        return (y_hat.clamp(min=0) - y_hat * y + torch.log1p(torch.exp(-y_hat.abs()))).mean()

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y = inputs
        ctx.save_for_backward(y_hat, y)
        _save_for_forward(ctx, y_hat, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        y_hat, y = ctx.saved_tensors
        need_y_hat, need_y = ctx.needs_input_grad
        n = y_hat.numel()
        grad_y_hat = ((torch.sigmoid(y_hat) - y) / n * g).to(y_hat.dtype) if need_y_hat else None
        grad_y = (-y_hat / n * g).to(y.dtype) if need_y else None
        return grad_y_hat, grad_y

    @staticmethod
    def jvp(ctx, dy_hat: Tensor, dy: Tensor):
        y_hat, y = ctx.saved_tensors
        return ((torch.sigmoid(y_hat) - y) * dy_hat - y_hat * dy).mean()


# Function.apply binds its arguments with inspect.signature(forward) on every call, which worked out
# the signature afresh each time: 3 of the 11 µs a call cost on the post's 1×1 tensors.
# inspect.signature returns a function's __signature__ when it has one, so it is worked out once, here.
for _fn in (LinearFunction, SigmoidFunction, ReLUFunction, LeakyReLUFunction, MSELossFunction, BCEWithLogitsFunction):
    _fn.forward.__signature__ = inspect.signature(_fn.forward)


# --- the helpers the models call -------------------------------------------------------------------


def _without_jvp(fn: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """The same Function (forward, setup_context and backward inherited) with no jvp of its own.

    Dynamo (torch 2.13) refuses to trace a Function that defines ``jvp`` ("Unsupported custom jvp"),
    which would break a compiled graph at every layer; so torch.compile traces these copies.
    """
    return type(fn.__name__, (fn,), {"jvp": staticmethod(torch.autograd.Function.jvp), "__module__": __name__})


_LinearNoJvp = _without_jvp(LinearFunction)
_SigmoidNoJvp = _without_jvp(SigmoidFunction)
_ReLUNoJvp = _without_jvp(ReLUFunction)
_LeakyReLUNoJvp = _without_jvp(LeakyReLUFunction)
_MSELossNoJvp = _without_jvp(MSELossFunction)
_BCEWithLogitsNoJvp = _without_jvp(BCEWithLogitsFunction)


def _apply(fn: type[torch.autograd.Function], fn_no_jvp: type[torch.autograd.Function], *args):
    return (fn_no_jvp if torch.compiler.is_compiling() else fn).apply(*args)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return _apply(LinearFunction, _LinearNoJvp, x, weight, bias)


def sigmoid(z: Tensor) -> Tensor:
    return _apply(SigmoidFunction, _SigmoidNoJvp, z)


def relu(z: Tensor, grad_at_zero: int = 0) -> Tensor:
    return _apply(ReLUFunction, _ReLUNoJvp, z, grad_at_zero)


def leaky_relu(z: Tensor, negative_slope: float = 0.01) -> Tensor:
    return _apply(LeakyReLUFunction, _LeakyReLUNoJvp, z, negative_slope)


def mse_loss(y_hat: Tensor, y: Tensor) -> Tensor:
    return _apply(MSELossFunction, _MSELossNoJvp, y_hat, y)


def bce_with_logits(y_hat: Tensor, y: Tensor) -> Tensor:
    return _apply(BCEWithLogitsFunction, _BCEWithLogitsNoJvp, y_hat, y)
