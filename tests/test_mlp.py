"""model=mlp, the generated data sets, the BCE loss, their validation and seeding (issue 4, items 1–2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.autograd import gradcheck

from backprop_lab import functions as F
from backprop_lab import models
from backprop_lab.config import ConfigError, validate
from backprop_lab.data import ExampleDataModule, MoonsDataModule, SineDataModule
from backprop_lab.monitors import DeadReLUMonitor
from backprop_lab.monitors.dead_relu import RELU_TYPES, statistics
from conftest import compose_config, run_cli, train_run

# The pictures (matplotlib, drawn at the end of a run) are tested elsewhere; here they would cost seconds.
NO_PICTURES = "monitor.pictures=[]"

# --- the binary cross-entropy Function -------------------------------------------------------------


def test_bce_gradcheck():
    y_hat = torch.randn(7, 1, dtype=torch.float64, requires_grad=True)
    y = torch.rand(7, 1, dtype=torch.float64, requires_grad=True)
    assert gradcheck(F.BCEWithLogitsFunction.apply, (y_hat, y))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bce_matches_native(dtype):
    y_hat = torch.tensor([[-30.0], [-2.0], [0.0], [0.7], [40.0]], dtype=dtype)
    y = torch.tensor([[1.0], [0.0], [1.0], [1.0], [0.0]], dtype=dtype)
    mine, native = y_hat.clone().requires_grad_(), y_hat.clone().requires_grad_()
    loss = F.bce_with_logits(mine, y)
    expected = TF.binary_cross_entropy_with_logits(native, y)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(mine.grad, native.grad)


def test_bce_local_derivative_by_hand():
    # ŷ = 0, y = 1: L = log 2 = 0.693147, ∂L/∂ŷ = σ(0) − 1 = −0.5.
    y_hat = torch.zeros(1, 1, requires_grad=True)
    loss = F.bce_with_logits(y_hat, torch.ones(1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(0.693147, abs=1e-6)
    assert y_hat.grad.item() == pytest.approx(-0.5)


def test_bce_is_finite_on_huge_logits():
    # A confidently wrong logit of 1000: L = 1000 (not inf), gradient σ(1000) − 0 = 1.
    y_hat = torch.tensor([[1000.0]], requires_grad=True)
    loss = F.bce_with_logits(y_hat, torch.zeros(1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(1000.0)
    assert y_hat.grad.item() == pytest.approx(1.0)


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
    net = models.MLP(2, 1, hidden=[3, 4], activation="leaky_relu", negative_slope=0.2)
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
    assert isinstance(models.MLP(1, 1, hidden=[2], activation="sigmoid").act1, models.Sigmoid)
    assert models.MLP(1, 1, hidden=[2], relu_grad_at_zero=1).act1.grad_at_zero == 1


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "leaky_relu"])
def test_mlp_matches_the_same_net_in_torch_nn(activation):
    torch.manual_seed(0)
    mine = models.MLP(2, 3, hidden=[5, 4], activation=activation, negative_slope=0.1).double()
    stock = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1)}[activation]
    ref = nn.Sequential(nn.Linear(2, 5), stock(), nn.Linear(5, 4), stock(), nn.Linear(4, 3)).double()
    ref.load_state_dict({k.replace("fc1", "0").replace("fc2", "2").replace("out", "4"): v for k, v in mine.state_dict().items()})
    x = torch.randn(6, 2, dtype=torch.float64)
    y = torch.randn(6, 3, dtype=torch.float64)
    F.mse_loss(mine(x), y).backward()
    TF.mse_loss(ref(x), y).backward()
    for (n, p), q in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_negative_bias_init_sets_every_hidden_bias():
    net = models.MLP(1, 1, hidden=[8, 8], init="negative_bias", bias_init=-2.5)
    assert net.fc1.bias.tolist() == [-2.5] * 8 and net.fc2.bias.tolist() == [-2.5] * 8
    assert net.out.bias.item() != -2.5  # the output layer keeps torch.nn.Linear's init
    bound = 1 / math.sqrt(8)
    assert net.fc2.weight.abs().max().item() <= bound


def test_he_init_has_the_variance_it_promises():
    torch.manual_seed(0)
    net = models.MLP(512, 1, hidden=[512], init="he")
    assert net.fc1.bias.abs().max().item() == 0.0
    # std of 512·512 draws from N(0, 2/512) = 0.0625, within 1 %
    assert net.fc1.weight.std().item() == pytest.approx(0.0625, rel=0.01)


# --- generated data ------------------------------------------------------------------------------


def test_sine_data_shapes_probe_and_noise():
    data = SineDataModule(n_samples=10, n_probe=5, noise=0.0, batch_size=4, seed=1)
    data.setup()
    x, y = data.train_set.x, data.train_set.y
    assert x.shape == (10, 1) and y.shape == (10, 1)
    assert x.abs().max().item() <= math.pi
    torch.testing.assert_close(y, torch.sin(x))  # noise 0: the clean curve
    assert data.probe_x.squeeze(1).tolist() == pytest.approx([-math.pi, -math.pi / 2, 0.0, math.pi / 2, math.pi], abs=1e-6)
    assert data.probe_y.squeeze(1).tolist() == pytest.approx([0.0, -1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert (data.task, data.in_features, data.out_features) == ("regression", 1, 1)
    noisy = SineDataModule(n_samples=10, n_probe=5, noise=0.1, batch_size=4, seed=1)
    noisy.setup()
    assert 0 < (noisy.train_set.y - torch.sin(noisy.train_set.x)).abs().max().item() < 0.5


def test_moons_lie_on_their_half_circles_without_noise():
    data = MoonsDataModule(n_samples=9, n_probe=6, noise=0.0, batch_size=3, seed=0)
    data.setup()
    x, y = data.train_set.x + torch.tensor([0.5, 0.25]), data.train_set.y
    assert x.shape == (9, 2) and y.shape == (9, 1)
    assert y.squeeze(1).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]  # 9 // 2 = 4 of class 1
    outer, inner = x[:5], x[5:]
    torch.testing.assert_close(outer.norm(dim=1), torch.ones(5))
    assert (outer[:, 1] >= 0).all()
    torch.testing.assert_close((inner - torch.tensor([1.0, 0.5])).norm(dim=1), torch.ones(4))
    assert (inner[:, 1] <= 0.5).all()
    assert data.probe_x.shape == (6, 2) and data.probe_y.sum().item() == 3
    assert (data.task, data.in_features, data.out_features) == ("classification", 2, 1)


def test_probe_set_is_held_out_and_fixed_by_the_seed():
    def made(seed):
        data = MoonsDataModule(n_samples=50, n_probe=20, noise=0.1, batch_size=10, seed=seed)
        data.setup()
        return data

    a, b, c = made(0), made(0), made(1)
    assert torch.equal(a.train_set.x, b.train_set.x) and torch.equal(a.probe_x, b.probe_x)
    assert not torch.equal(a.train_set.x, c.train_set.x)
    # no probe point is a training point
    assert torch.cdist(a.probe_x, a.train_set.x).min().item() > 0


def test_example_data_has_the_one_example_as_probe():
    data = ExampleDataModule(x=1.0, y=0.5)
    data.setup()
    assert data.probe_x.tolist() == [[1.0]] and data.probe_y.tolist() == [[0.5]]
    assert (data.task, data.in_features, data.out_features) == ("regression", 1, 1)


# --- the dead-ReLU rule for leaky layers ---------------------------------------------------------


def test_a_leaky_unit_is_never_dead():
    # unit 0 is ≤ 0 on both samples, unit 1 is positive once; one activation of four is exactly 0.
    h = torch.tensor([[-0.01, 0.5], [-0.02, 0.0]])
    assert statistics(h) == (0.5, 0.25)
    assert statistics(h, negative_slope=0.01) == (0.0, 0.25)


# --- configs, training, seeding ------------------------------------------------------------------


def test_mlp_config_defaults_to_the_sine():
    cfg = compose_config("model=mlp")
    assert list(cfg.model.hidden) == [16, 16] and cfg.model.activation == "relu" and cfg.model.init == "default"
    assert cfg.data._target_ == "backprop_lab.data.SineDataModule"
    assert (cfg.data.n_samples, cfg.data.n_probe, cfg.data.batch_size, cfg.data.noise) == (256, 128, 32, 0.1)


def test_moons_train_with_binary_cross_entropy(tmp_path):
    from hydra.utils import instantiate

    from backprop_lab.module import LOSS_BY_TASK
    from backprop_lab.train import sizes_from_data

    cfg = compose_config("model=mlp", "data=moons")
    data = instantiate(cfg.data, seed=0)
    net = instantiate(cfg.model, **sizes_from_data(cfg.model, data))
    assert LOSS_BY_TASK[data.task] is F.bce_with_logits
    assert (net.fc1.in_features, net.out.out_features) == (2, 1)
    assert LOSS_BY_TASK[instantiate(compose_config("model=mlp").data, seed=0).task] is F.mse_loss


def test_moons_are_learned(tmp_path):
    result, s = train_run(tmp_path, "model=mlp", "data=moons", "trainer.max_steps=300", NO_PICTURES)
    # BCE of a net that knows nothing is log 2 = 0.693; the trained one is well below it.
    assert s["train/loss"][0] == pytest.approx(0.693, abs=0.05)
    assert result.final_loss < 0.4 and result.best_loss < 0.15


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    overrides = ("model=mlp", "trainer.max_steps=15", "monitor.histogram_every_n_steps=5", NO_PICTURES)
    _, a = train_run(tmp_path / "a", *overrides)
    _, b = train_run(tmp_path / "b", *overrides)
    _, c = train_run(tmp_path / "c", *overrides, "seed=1")
    assert "grad_norm/fc1.weight" in a and "relu/dead_fraction/act1" in a
    assert a == b
    assert a["train/loss"][0] != c["train/loss"][0]


# --- bad input -----------------------------------------------------------------------------------

BAD_MLP = [
    (["model.hidden=[]"], "model.hidden=[] is not accepted: use a non-empty list of positive layer widths"),
    (["model.hidden=[16,0]"], "model.hidden=[16, 0] is not accepted"),
    (["model.hidden=[-4]"], "model.hidden=[-4] is not accepted"),
    (["model.activation=tanh"], "model.activation='tanh' is not accepted: use one of sigmoid, relu, leaky_relu"),
    (["model.init=xavier"], "model.init='xavier' is not accepted: use one of default, he, negative_bias"),
    (["model.negative_slope=1.0"], "model.negative_slope=1.0 is not accepted: use a number with 0 <= a < 1"),
    (["model.negative_slope=-0.1"], "model.negative_slope=-0.1 is not accepted"),
    (["model.relu_grad_at_zero=2"], "model.relu_grad_at_zero=2 is not accepted"),
    (["data.batch_size=257"], "data.batch_size=257 is not accepted: use an integer from 1 to data.n_samples=256"),
    (["data.batch_size=0"], "data.batch_size=0 is not accepted"),
    (["data.n_samples=0"], "data.n_samples=0 is not accepted"),
    (["data.n_probe=0"], "data.n_probe=0 is not accepted"),
    (["data.noise=-0.1"], "data.noise=-0.1 is not accepted"),
    (["data=moons", "data.batch_size=300"], "data.batch_size=300 is not accepted"),
]


@pytest.mark.parametrize("overrides, message", BAD_MLP, ids=[" ".join(o) for o, _ in BAD_MLP])
def test_bad_mlp_and_data_values_are_refused_naming_the_key(overrides, message):
    cfg = compose_config("model=mlp", *overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert message in str(error.value)


def test_the_posts_networks_are_refused_on_two_inputs():
    with pytest.raises(ConfigError) as error:
        validate(compose_config("model=sigmoid", "data=moons"))
    assert "data='moons' is not accepted: the moons have two inputs" in str(error.value)
    validate(compose_config("model=relu", "data=sine"))  # one input: the post's nets fit the sine


def test_good_mlp_values_pass():
    validate(compose_config("model=mlp", "model.hidden=[1]", "model.negative_slope=0", "data.batch_size=256"))
    validate(compose_config("model=mlp", "model.activation=leaky_relu", "model.negative_slope=0.99", "data=moons"))


@pytest.mark.slow
def test_batch_larger_than_the_data_set_is_refused_by_the_cli(tmp_path):
    proc = run_cli("model=mlp", "data.n_samples=10", "data.batch_size=32", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.batch_size=32 is not accepted: use an integer from 1 to data.n_samples=10" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("events.out.tfevents*"))  # refused before training wrote anything
