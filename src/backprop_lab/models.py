"""The post's networks, built only from the hand-written Functions.

Parameters carry the post's names (``w``, ``w1``, ``w2``), so ``named_parameters()`` and the
TensorBoard tags read like the post. Activations are ``nn.Module`` layers (``Sigmoid``, ``ReLU``,
``LeakyReLU``), so forward hooks, and with them the dead-ReLU monitor, see them like ``torch.nn``'s.
"""

from __future__ import annotations

import math
from collections import OrderedDict

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

    def __init__(self, w: float):
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

    def __init__(self, w1: float, w2: float):
        super().__init__(w1, w2, Sigmoid())


class ReLUNet(HiddenUnitNet):
    """Section 5: h = ReLU(w1·x), ŷ = w2·h, with ReLU′(0) = ``relu_grad_at_zero``."""

    def __init__(self, w1: float, w2: float, relu_grad_at_zero: int = 0):
        super().__init__(w1, w2, ReLU(relu_grad_at_zero))


# --- wider networks: the multi-layer perceptron ----------------------------------------------------


class Linear(nn.Module):
    """z = x·Wᵀ + b through :class:`~backprop_lab.functions.LinearFunction`.

    Owns ``weight`` (out, in) and ``bias`` (out,) like ``torch.nn.Linear``, and starts from the same
    values under the same seed: W and b drawn from U(−1/√in, 1/√in) (Kaiming-uniform with a = √5).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)  # the draw kaiming_uniform_(a=√5) makes
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _activation(name: str, negative_slope: float, relu_grad_at_zero: int) -> nn.Module:
    if name == "sigmoid":
        return Sigmoid()
    if name == "relu":
        return ReLU(relu_grad_at_zero)
    if name == "leaky_relu":
        return LeakyReLU(negative_slope)
    raise ValueError(f"unknown activation {name!r}: use sigmoid, relu or leaky_relu")


class MLP(nn.Sequential):
    """x → fc1 → act1 → … → fcK → actK → out, with K = len(hidden), from the hand-written Functions.

    The layers are named ``fc1, act1, …, out`` in forward order, so tags read ``grad_norm/fc1.weight``
    and ``relu/dead_fraction/act1``. ``in_features`` and ``out_features`` come from the data set.

    ``init``: ``default`` (every Linear as ``torch.nn.Linear``), ``he`` (W ~ N(0, 2/in), b = 0: keeps
    a ReLU layer's output variance through depth), ``negative_bias`` (default weights, every hidden
    bias = ``bias_init``: a unit whose z = w·x + b ≤ 0 on all data starts dead).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: list[int],
        activation: str = "relu",
        negative_slope: float = 0.01,
        init: str = "default",
        bias_init: float = -1.0,
        relu_grad_at_zero: int = 0,
    ):
        widths = [in_features, *hidden]
        layers: dict[str, nn.Module] = {}
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:]), start=1):
            layers[f"fc{i}"] = Linear(n_in, n_out)
            layers[f"act{i}"] = _activation(activation, negative_slope, relu_grad_at_zero)
        layers["out"] = Linear(widths[-1], out_features)
        super().__init__(OrderedDict(layers))
        self._init(init, bias_init)

    def _init(self, init: str, bias_init: float) -> None:
        if init == "default":
            return
        hidden = [m for name, m in self.named_children() if name.startswith("fc")]
        if init == "he":
            for fc in (*hidden, self.out):
                nn.init.kaiming_normal_(fc.weight, nonlinearity="relu")
                nn.init.zeros_(fc.bias)
        elif init == "negative_bias":
            for fc in hidden:
                nn.init.constant_(fc.bias, bias_init)
        else:
            raise ValueError(f"unknown init {init!r}: use default, he or negative_bias")
