"""The batched forms of the post's primitives: K copies of a network stacked along a leading dim.

A stacked weight has shape (K, out, in): copy k's W is ``weight[k]``. The activations (σ, ReLU) are
elementwise, so :mod:`backprop_lab.functions` serves stacked tensors as they are; only the linear map
(with its bias, for the MLP) and the losses need a batched form. Each keeps the value and its local derivative on one screen, in plain
tensor arithmetic, as :mod:`backprop_lab.functions` does; per copy they compute what the unbatched
Functions compute, with the same operations in the same order (a 1×1 product is one rounding either way).

Why not ``torch.func.vmap`` over the unbatched Functions: on the post's 1×1 tensors its per-call cost
(10–20 ms a step for the whole net, measured) is what a sweep is made of; the batched forms cost one
``matmul`` per layer whatever K.
"""

from __future__ import annotations

import torch
from torch import Tensor


class StackedLinearFunction(torch.autograd.Function):
    """y = x·Wᵀ (+ b) per copy: x of shape (K or 1, N, in), W of shape (K, out, in), b of shape (K, 1, out) or
    None, y of shape (K, N, out).

    Reverse: ∂L/∂x = g·W (summed over the copies where x is shared),  ∂L/∂W = gᵀ·x per copy,
    ∂L/∂b = Σ_batch g per copy. With a bias the product is one ``baddbmm`` (b + x·Wᵀ), as the unbatched
    Function's ``addmm``.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if bias is None:
            return x.matmul(weight.transpose(-1, -2))
        x = x.expand(weight.shape[0], *x.shape[1:])
        if weight.shape[1] == 1:  # one output: a matrix-vector product, as the unbatched addmm takes it
            if x.shape[-1] * x.shape[-2] < 400:  # bmm's own small-size loop would sum in another order: per copy
                return torch.stack([torch.addmm(b[0], xk, w.t()) for xk, w, b in zip(x, weight, bias)])
            return _bmm(x, weight.transpose(-1, -2)) + bias
        return torch.baddbmm(bias, x, weight.transpose(-1, -2))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.bias_shape = None if bias is None else bias.shape

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        if ctx.bias_shape is None:  # the post's nets: 1×1 products, one rounding either way
            grad_x = (g @ w).sum_to_size(x.shape) if need_x else None
            grad_w = g.transpose(-1, -2) @ x if need_w else None
            return grad_x, grad_w, None
        grad_x = _bmm(g, w).sum_to_size(x.shape) if need_x else None
        grad_w = _bmm(g.transpose(-1, -2), x.expand(w.shape[0], *x.shape[1:])) if need_w else None
        grad_b = g.sum_to_size(ctx.bias_shape) if need_b else None
        return grad_x, grad_w, grad_b


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """a·b per copy, in the product the unbatched Function's ``mm``/``addmm`` takes for one copy, so that each
    copy's numbers are its separate run's bit for bit: a matrix times a vector (b of one column) as (bᵀ·aᵀ)ᵀ,
    which takes the same path as ``mm``'s matrix-vector product."""
    if b.shape[-1] == 1:
        return torch.bmm(b.transpose(-1, -2), a.transpose(-1, -2)).transpose(-1, -2)
    return torch.bmm(a, b)


class StackedMSELossFunction(torch.autograd.Function):
    """L_k = mean((ŷ_k − y)²) per copy k, over the N elements of copy k's ŷ − y; a (K,) tensor.

    Reverse: ∂L_k/∂ŷ_k = 2·(ŷ_k − y)/N·g_k (the post's −2·(y − ŷ) at N = 1). Summing the K losses before
    ``backward`` gives every copy the gradient of its own loss (g_k = 1): the copies share no parameter.
    """

    @staticmethod
    def forward(y_hat: Tensor, y: Tensor) -> Tensor:
        return ((y_hat - y) ** 2).flatten(1).mean(1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y = inputs
        ctx.save_for_backward(y_hat, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        y_hat, y = ctx.saved_tensors
        d = y_hat - y
        n = d[0].numel()
        grad = 2 * d / n * g.reshape(-1, *([1] * (d.dim() - 1)))
        return (grad.sum_to_size(y_hat.shape) if ctx.needs_input_grad[0] else None), None


class StackedBCEWithLogitsFunction(torch.autograd.Function):
    """L_k = mean(max(ŷ_k, 0) − ŷ_k·y + log(1 + e^(−|ŷ_k|))) per copy k (binary cross-entropy on the logits, as
    :class:`~backprop_lab.functions.BCEWithLogitsFunction` computes it); a (K,) tensor.

    Reverse: ∂L_k/∂ŷ_k = (σ(ŷ_k) − y)/N·g_k.
    """

    @staticmethod
    def forward(y_hat: Tensor, y: Tensor) -> Tensor:
        return (y_hat.clamp(min=0) - y_hat * y + torch.log1p(torch.exp(-y_hat.abs()))).flatten(1).mean(1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y_hat, y = inputs
        ctx.save_for_backward(y_hat, y)

    @staticmethod
    def backward(ctx, g: Tensor):
        y_hat, y = ctx.saved_tensors
        n = y_hat[0].numel()
        grad = (torch.sigmoid(y_hat) - y) / n * g.reshape(-1, *([1] * (y_hat.dim() - 1)))
        return (grad.sum_to_size(y_hat.shape) if ctx.needs_input_grad[0] else None), None


def stacked_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    return StackedLinearFunction.apply(x, weight, bias)


def stacked_mse_loss(y_hat: Tensor, y: Tensor) -> Tensor:
    return StackedMSELossFunction.apply(y_hat, y)


def stacked_bce_with_logits(y_hat: Tensor, y: Tensor) -> Tensor:
    return StackedBCEWithLogitsFunction.apply(y_hat, y)
