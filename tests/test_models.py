"""backprop_lab.models: the post's networks and the MLP, built from the hand-written Functions.

Every constructor gets explicit values: the defaults live in configs/ only.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

from backprop_lab import functions as F
from backprop_lab import models
from backprop_lab.monitors.dead_relu import RELU_TYPES

# Every keyword of MLP, given explicitly; a test changes the ones it is about.
MLP_ARGS = dict(
    in_features=2,
    out_features=1,
    hidden=[8, 8],
    activation="relu",
    negative_slope=0.01,
    init="default",
    bias_init=-1.0,
    relu_grad_at_zero=0,
)


def mlp(**changes) -> models.MLP:
    return models.MLP(**{**MLP_ARGS, **changes})


# --- the post's networks ----------------------------------------------------------------------------


def test_the_posts_networks_compute_the_posts_forward_pass():
    # §3: ŷ = w·x = 3·2 = 6. §4: ŷ = w2·σ(w1·x) = −σ(0.5) = −0.6224593312. §5: ŷ = w2·ReLU(w1·x) = −0.5.
    assert models.LinearNet(w=3.0)(torch.tensor([[2.0]])).item() == pytest.approx(6.0)
    x = torch.tensor([[1.0]])
    assert models.SigmoidNet(w1=0.5, w2=-1.0)(x).item() == pytest.approx(-0.6224593312, abs=1e-7)
    assert models.ReLUNet(w1=0.5, w2=-1.0, relu_grad_at_zero=0)(x).item() == pytest.approx(-0.5)
    assert models.ReLUNet(w1=-0.5, w2=-1.0, relu_grad_at_zero=0)(x).item() == 0.0  # z1 < 0: h = 0


def test_the_posts_networks_carry_the_posts_parameter_names():
    assert [n for n, _ in models.LinearNet(w=3.0).named_parameters()] == ["w"]
    sigmoid = models.SigmoidNet(w1=0.5, w2=-1.0)
    assert {n: p.tolist() for n, p in sigmoid.named_parameters()} == {"w1": [[0.5]], "w2": [[-1.0]]}
    assert isinstance(sigmoid.h, models.Sigmoid)  # the activation is the attribute h: tags read relu/…/h
    relu = models.ReLUNet(w1=0.5, w2=-1.0, relu_grad_at_zero=1)
    assert isinstance(relu.h, models.ReLU) and relu.h.grad_at_zero == 1


@pytest.mark.parametrize("grad_at_zero, expected", [(0, 0.0), (1, 2.0)])
def test_relu_net_at_exactly_zero_uses_its_relu_grad_at_zero(grad_at_zero, expected):
    # w1 = 0: z1 = 0, ŷ = 0, ∂L/∂ŷ = −2(0.5 − 0) = −1, ∂L/∂w1 = −1·w2·ReLU′(0)·x = −1·(−2)·ReLU′(0).
    net = models.ReLUNet(w1=0.0, w2=-2.0, relu_grad_at_zero=grad_at_zero)
    F.mse_loss(net(torch.tensor([[1.0]])), torch.tensor([[0.5]])).backward()
    assert net.w1.grad.item() == expected


# --- Linear and MLP ------------------------------------------------------------------------------


def test_linear_starts_where_torch_nn_linear_starts():
    torch.manual_seed(3)
    ref = nn.Linear(5, 4)
    torch.manual_seed(3)
    mine = models.Linear(5, 4)
    torch.testing.assert_close(mine.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(mine.bias, ref.bias, rtol=0, atol=0)
    x = torch.randn(3, 5)
    torch.testing.assert_close(mine(x), ref(x))


def test_mlp_layer_names_and_parameters():
    net = mlp(hidden=[3, 4], activation="leaky_relu", negative_slope=0.2)
    assert [name for name, _ in net.named_children()] == ["fc1", "act1", "fc2", "act2", "out"]
    assert {n: tuple(p.shape) for n, p in net.named_parameters()} == {
        "fc1.weight": (3, 2),
        "fc1.bias": (3,),
        "fc2.weight": (4, 3),
        "fc2.bias": (4,),
        "out.weight": (1, 4),
        "out.bias": (1,),
    }
    assert isinstance(net.act1, models.LeakyReLU) and net.act1.negative_slope == 0.2
    assert isinstance(net.act1, RELU_TYPES)  # the dead-ReLU monitor watches leaky layers too
    assert isinstance(mlp(in_features=1, hidden=[2], activation="sigmoid").act1, models.Sigmoid)
    assert mlp(in_features=1, hidden=[2], relu_grad_at_zero=1).act1.grad_at_zero == 1


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "leaky_relu"])
def test_mlp_matches_the_same_net_in_torch_nn(activation):
    torch.manual_seed(0)
    mine = mlp(out_features=3, hidden=[5, 4], activation=activation, negative_slope=0.1).double()
    stock = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1)}[activation]
    ref = nn.Sequential(nn.Linear(2, 5), stock(), nn.Linear(5, 4), stock(), nn.Linear(4, 3)).double()
    ref.load_state_dict(
        {k.replace("fc1", "0").replace("fc2", "2").replace("out", "4"): v for k, v in mine.state_dict().items()}
    )
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    F.mse_loss(mine(x), y).backward()
    TF.mse_loss(ref(x), y).backward()
    for (n, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_negative_bias_init_sets_every_hidden_bias():
    net = mlp(in_features=1, hidden=[8, 8], init="negative_bias", bias_init=-2.5)
    assert net.fc1.bias.tolist() == [-2.5] * 8 and net.fc2.bias.tolist() == [-2.5] * 8
    assert net.out.bias.item() != -2.5  # the output layer keeps torch.nn.Linear's init
    bound = 1 / math.sqrt(8)
    assert net.fc2.weight.abs().max().item() <= bound


def test_bias_init_is_ignored_by_the_other_inits():
    torch.manual_seed(0)
    default = mlp(in_features=1, hidden=[8], init="default", bias_init=-2.5)
    assert (default.fc1.bias.abs() <= 1.0).all()  # U(−1/√1, 1/√1): never −2.5
    assert mlp(in_features=1, hidden=[8], init="he", bias_init=-2.5).fc1.bias.tolist() == [0.0] * 8


def test_he_init_has_the_variance_it_promises():
    torch.manual_seed(0)
    net = mlp(in_features=512, hidden=[512], init="he")
    assert net.fc1.bias.abs().max().item() == 0.0
    # std of 512·512 draws from N(0, 2/512) = 0.0625, within 1 %
    assert net.fc1.weight.std().item() == pytest.approx(0.0625, rel=0.01)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"activation": "tanh"}, "unknown activation 'tanh': use sigmoid, relu or leaky_relu"),
        ({"init": "xavier"}, "unknown init 'xavier': use default, he or negative_bias"),
    ],
)
def test_mlp_refuses_an_unknown_activation_or_init(changes, message):
    with pytest.raises(ValueError, match=message):
        mlp(**changes)


def test_the_mlps_choices_and_python_defaults_are_the_configs():
    # One list of choices (backprop_lab.config) that the network takes every one of; and the keyword
    # defaults of the Python API are exactly configs/model/mlp.yaml's values.
    import inspect

    from backprop_lab import config

    from conftest import compose_config

    for activation in config.ACTIVATIONS:
        assert models.MLP(1, 1, hidden=[2], activation=activation).act1 is not None
    for init in config.INITS:
        models.MLP(1, 1, hidden=[2], init=init)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        models.MLP(1, 1, hidden=[2], activation="tanh")
    composed = compose_config("model=mlp").model
    defaults = {
        name: p.default for name, p in inspect.signature(models.MLP).parameters.items() if p.default is not p.empty
    }
    assert defaults == {name: composed[name] for name in defaults}
    assert "hidden" not in defaults  # the widths are the config's alone
