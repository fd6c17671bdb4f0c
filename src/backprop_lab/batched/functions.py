"""The batched forms of the post's primitives: K copies of a network stacked along a leading dim.

A stacked weight has shape (K, out, in): copy k's W is ``weight[k]``. The activations (σ, ReLU) are
elementwise, so :mod:`backprop_lab.functions` serves stacked tensors as they are; only the linear map
and the loss need a batched form. Each keeps the value and its local derivative on one screen, in plain
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
    """y = x·Wᵀ per copy: x of shape (K or 1, N, in), W of shape (K, out, in), y of shape (K, N, out).

    Reverse: ∂L/∂x = g·W (summed over the copies where x is shared),  ∂L/∂W = gᵀ·x per copy.
    """

    @staticmethod
    def forward(x: Tensor, weight: Tensor) -> Tensor:
        return x.matmul(weight.transpose(-1, -2))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, w = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad
        grad_x = (g @ w).sum_to_size(x.shape) if need_x else None
        grad_w = g.transpose(-1, -2) @ x if need_w else None
        return grad_x, grad_w


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


def stacked_linear(x: Tensor, weight: Tensor) -> Tensor:
    return StackedLinearFunction.apply(x, weight)


def stacked_mse_loss(y_hat: Tensor, y: Tensor) -> Tensor:
    return StackedMSELossFunction.apply(y_hat, y)
