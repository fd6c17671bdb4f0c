"""The post's networks, built only from the hand-written Functions.

Parameters carry the post's names (``w``, ``w1``, ``w2``), so ``named_parameters()`` and the
TensorBoard tags read like the post. Activations are ``nn.Module`` layers (``Sigmoid``, ``ReLU``,
``LeakyReLU``), so forward hooks, and with them the dead-ReLU monitor, see them like ``torch.nn``'s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from backprop_lab import functions as F


def _scalar_weight(value: float) -> nn.Parameter:
    # A 1×1 weight matrix: the post's scalar w, in the shape Linear (y = x·Wᵀ) takes.
    return nn.Parameter(torch.tensor([[float(value)]]))


class Sigmoid(nn.Module):
    """h = σ(z), through :class:`~backprop_lab.functions.SigmoidFunction`."""

    def forward(self, z: Tensor) -> Tensor:
        return F.sigmoid(z)


class ReLU(nn.Module):
    """h = ReLU(z), through :class:`~backprop_lab.functions.ReLUFunction`; ReLU′(0) = ``grad_at_zero``."""

    def __init__(self, grad_at_zero: int = 0):
        super().__init__()
        self.grad_at_zero = int(grad_at_zero)

    def forward(self, z: Tensor) -> Tensor:
        return F.relu(z, self.grad_at_zero)

    def extra_repr(self) -> str:
        return f"grad_at_zero={self.grad_at_zero}"


class LeakyReLU(nn.Module):
    """h = z for z > 0, a·z otherwise, through :class:`~backprop_lab.functions.LeakyReLUFunction`."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, z: Tensor) -> Tensor:
        return F.leaky_relu(z, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class LinearNet(nn.Module):
    """Section 3 of the post: ŷ = w·x."""

    def __init__(self, w: float = 3.0):
        super().__init__()
        self.w = _scalar_weight(w)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.w)


class HiddenUnitNet(nn.Module):
    """Sections 4–5 of the post: z1 = w1·x, h = act(z1), ŷ = w2·h.

    The activation layer is the attribute ``h``, so its statistics are tagged ``relu/…/h``.
    """

    def __init__(self, w1: float, w2: float, activation: nn.Module):
        super().__init__()
        self.w1 = _scalar_weight(w1)
        self.w2 = _scalar_weight(w2)
        self.h = activation

    def forward(self, x: Tensor) -> Tensor:
        z1 = F.linear(x, self.w1)
        h = self.h(z1)
        return F.linear(h, self.w2)


class SigmoidNet(HiddenUnitNet):
    """Section 4: h = σ(w1·x), ŷ = w2·h."""

    def __init__(self, w1: float = 0.5, w2: float = -1.0):
        super().__init__(w1, w2, Sigmoid())


class ReLUNet(HiddenUnitNet):
    """Section 5: h = ReLU(w1·x), ŷ = w2·h, with ReLU′(0) = ``relu_grad_at_zero``."""

    def __init__(self, w1: float = 0.5, w2: float = -1.0, relu_grad_at_zero: int = 0):
        super().__init__(w1, w2, ReLU(relu_grad_at_zero))
