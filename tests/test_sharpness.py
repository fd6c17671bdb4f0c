"""λ_max by power iteration on Hessian-vector products (the hand-written Functions' backward and jvp), the
SharpnessMonitor on real runs, and the divergence diagnosis that reads it.

The truth is stock PyTorch's: the same loss written with torch ops in float64, its Hessian from
``torch.autograd.functional.hessian`` and the eigenvalues from ``torch.linalg.eigvalsh``.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.plugins.text.metadata import PLUGIN_NAME as TEXT_PLUGIN
from torch import nn
from torch.func import functional_call

from backprop_lab import functions as F
from backprop_lab.diagnoses import SharpnessPoint, divergence_without_history, sharpness_sentence
from backprop_lab.models import MLP, LinearNet, ReLUNet, SigmoidNet
from backprop_lab.monitors import SharpnessMonitor, hessian_top_eigenvalue

from conftest import PlainData, PlainModule, event_accumulator, fit, read_scalars, train_run

EXACT = dict(iters=2000, tol=1e-10)  # power iteration run to convergence: the comparisons are at 1e-6


def top_eigenvalue(loss, params: dict) -> float:
    """λ_max of the stock Hessian of ``loss`` (a function of one flat float64 vector)."""
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()]).double()
    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat)).max())


def ours(net: nn.Module, x, y, loss_fn=F.mse_loss, **kw):
    params = {n: p.detach() for n, p in net.named_parameters()}
    return hessian_top_eigenvalue(lambda p: loss_fn(functional_call(net, p, (x,)), y), params, **{**EXACT, **kw})


# --- λ_max against the stock Hessian ------------------------------------------------------------------------

POST = {  # the post's nets, their example (configs/data/post_*.yaml) and the same loss in stock torch ops
    "linear": (lambda w: LinearNet(w[0]), 2.0, 10.0, lambda w, x, y: (w[0] * x - y) ** 2),
    "sigmoid": (lambda w: SigmoidNet(*w), 1.0, 0.5, lambda w, x, y: (w[1] * torch.sigmoid(w[0] * x) - y) ** 2),
    "relu": (lambda w: ReLUNet(*w), 1.0, 0.5, lambda w, x, y: (w[1] * torch.relu(w[0] * x) - y) ** 2),
}
weight = st.floats(-4.0, 4.0, allow_nan=False).map(lambda v: round(v, 3))


@pytest.mark.parametrize("model", list(POST))
@settings(max_examples=30, deadline=None, derandomize=True)
@given(w1=weight, w2=weight)
def test_lambda_max_of_the_posts_nets_is_the_stock_hessians_largest_eigenvalue(model, w1, w2):
    build, x, y, stock = POST[model]
    w = [w1] if model == "linear" else [w1, w2]
    net = build(w).double()
    xt, yt = torch.tensor([[x]], dtype=torch.float64), torch.tensor([[y]], dtype=torch.float64)
    want = top_eigenvalue(lambda v: stock(v, x, y), dict(net.named_parameters()))
    got = ours(net, xt, yt)
    assert got.converged
    assert got.value == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_the_linear_nets_lambda_max_is_two_x_squared():
    """L = (y − w·x)²: H = 2x² whatever w, so 2/λ_max = 1/x², the exact bound: 0.25 at x = 2."""
    for w in (3.0, -1.0, 0.0):
        got = ours(LinearNet(w).double(), torch.tensor([[2.0]]).double(), torch.tensor([[10.0]]).double())
        assert got.value == pytest.approx(8.0, rel=1e-12) and got.products == 1


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "leaky_relu"])
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_lambda_max_of_a_small_mlp(activation, task):
    torch.manual_seed(3)
    net = MLP(2, 1, [6, 5], activation=activation).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    y = (x[:, :1] > 0).double() if task == "classification" else torch.sin(x[:, :1])
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    acts = {"sigmoid": torch.sigmoid, "relu": torch.relu, "leaky_relu": lambda z: nn.functional.leaky_relu(z, 0.01)}

    def stock(flat):  # the same network in stock ops, from one flat parameter vector
        p = dict(zip(names, (t.reshape(s) for t, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        h = x
        for i in (1, 2):
            h = acts[activation](h @ p[f"fc{i}.weight"].T + p[f"fc{i}.bias"])
        out = h @ p["out.weight"].T + p["out.bias"]
        if task == "classification":
            return nn.functional.binary_cross_entropy_with_logits(out, y)
        return nn.functional.mse_loss(out, y)

    loss_fn = F.bce_with_logits if task == "classification" else F.mse_loss
    want = top_eigenvalue(stock, dict(net.named_parameters()))
    got = ours(net, x, y, loss_fn)
    assert got.converged and got.value == pytest.approx(want, rel=1e-6)
    # float32, as training runs, with the monitor's budget: within 1e-3
    fast = ours(net.float(), x.float(), y.float(), loss_fn, iters=100, tol=1e-3)
    assert fast.value == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize(
    "diagonal, want",
    [
        ([-5.0, 3.0, 1.0], 3.0),  # the largest magnitude is negative: the shifted run finds 3
        ([4.0, -4.0, 1.0], 4.0),  # ±ρ: plain power iteration never settles
        ([-1.0, -3.0], -1.0),  # negative definite: λ_max < 0
        ([2.0, 0.5, 0.1], 2.0),  # positive definite: one run
        ([0.0, 0.0], 0.0),  # H = 0
    ],
)
def test_lambda_max_is_the_largest_algebraic_eigenvalue(diagonal, want):
    q = torch.linalg.qr(torch.randn(len(diagonal), len(diagonal), generator=torch.Generator().manual_seed(1)).double())[
        0
    ]
    a = q @ torch.diag(torch.tensor(diagonal, dtype=torch.float64)) @ q.T  # H = A, rotated off the axes

    def loss(p):
        return 0.5 * p["v"] @ a @ p["v"]

    got = hessian_top_eigenvalue(loss, {"v": torch.ones(len(diagonal), dtype=torch.float64)}, **EXACT)
    assert got.converged and got.value == pytest.approx(want, abs=1e-9)
    v = got.vector["v"]
    assert float(v.norm()) == pytest.approx(1.0) and torch.allclose(a @ v, want * v, atol=1e-6)
    # an unconverged value is a Rayleigh quotient: never above λ_max
    for iters in (1, 2, 3):
        early = hessian_top_eigenvalue(loss, {"v": torch.ones(len(diagonal), dtype=torch.float64)}, iters, tol=0.0)
        assert early.value <= want + 1e-12


def test_the_products_run_the_hand_written_backward_and_jvp(monkeypatch):
    calls = []
    for fn in (F.LinearFunction, F.SigmoidFunction, F.MSELossFunction):
        for name in ("backward", "jvp"):
            original = getattr(fn, name)

            def counted(*args, _original=original, _key=(fn.__name__, name)):
                calls.append(_key)
                return _original(*args)

            monkeypatch.setattr(fn, name, staticmethod(counted))
    net = SigmoidNet(0.5, -1.0).double()
    got = ours(net, torch.tensor([[1.0]]).double(), torch.tensor([[0.5]]).double())
    per_product = {(f, n): calls.count((f, n)) / got.products for f, n in set(calls)}
    assert per_product == {  # each product: every Function's jvp and backward once (two linears)
        ("LinearFunction", "jvp"): 2,
        ("LinearFunction", "backward"): 2,
        ("SigmoidFunction", "jvp"): 1,
        ("SigmoidFunction", "backward"): 1,
        ("MSELossFunction", "jvp"): 1,
        ("MSELossFunction", "backward"): 1,
    }


# --- the monitor ----------------------------------------------------------------------------------------


def test_the_monitor_logs_lambda_max_beside_two_over_lr_every_n_steps(tmp_path):
    result, scalars = train_run(
        tmp_path, "model=sigmoid", "optim.lr=0.5", "trainer.max_steps=10", "monitor.sharpness=3"
    )
    assert result.status == "finished"
    lam, two_over_lr = scalars["sharpness/lambda_max"], scalars["sharpness/two_over_lr"]
    assert sorted(lam) == sorted(two_over_lr) == [0, 3, 6, 9]
    assert list(two_over_lr.values()) == [pytest.approx(4.0)] * 4
    _, x, y, stock = POST["sigmoid"]
    for step, value in lam.items():  # against the stock Hessian at the weights logged at that step
        w = torch.tensor([scalars["params/w1"][step], scalars["params/w2"][step]], dtype=torch.float64)
        want = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(lambda v: stock(v, x, y), w)).max())
        assert value == pytest.approx(want, rel=1e-4)


def without_sharpness(scalars: dict) -> dict:
    return {tag: values for tag, values in scalars.items() if not tag.startswith("sharpness/")}


def test_training_is_unchanged_with_the_monitor_on(tmp_path):
    """Every other tag at every step, bit for bit: an MLP on shuffled batches, so the RNG is exercised too."""
    args = ("model=mlp", "trainer.max_steps=12", "monitor.pictures=[]", "optim.momentum=0.9")
    _, off = train_run(tmp_path / "off", *args)
    _, on = train_run(tmp_path / "on", *args, "monitor.sharpness=2")
    assert sorted(on["sharpness/lambda_max"]) == [0, 2, 4, 6, 8, 10]
    assert without_sharpness(on) == off


class DropoutModule(PlainModule):
    """A stock module whose loss draws from the global RNG (dropout): the monitor must leave the RNG as it was."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(nn.functional.dropout(self.seq(x), 0.5, training=True), y)


def plain_fit(tmp_path, callbacks):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))
    module = DropoutModule(seq, lr=0.1)
    x = torch.linspace(-1, 1, 16).reshape(-1, 1)
    fit(tmp_path, module, PlainData(x, x**2), callbacks, steps=8)
    return module


def dropout_loss(module, batch):
    x, y = batch
    return nn.functional.mse_loss(nn.functional.dropout(module.seq(x), 0.5, training=True), y)


def test_on_a_stock_lightning_module_with_its_loss(tmp_path):
    monitor = SharpnessMonitor(every_n_steps=4, loss_fn=dropout_loss)
    with_monitor = plain_fit(tmp_path / "on", [monitor])
    without = plain_fit(tmp_path / "off", [])
    for a, b in zip(with_monitor.parameters(), without.parameters()):
        assert torch.equal(a, b)  # the parameters, bit for bit: the dropout masks were the same draws
    scalars = read_scalars(tmp_path / "on")
    assert sorted(scalars["sharpness/lambda_max"]) == [0, 4] and [p.step for p in monitor.measurements] == [0, 4]
    assert list(scalars["sharpness/two_over_lr"].values()) == [pytest.approx(20.0)] * 2
    assert all(math.isfinite(v) for v in scalars["sharpness/lambda_max"].values())


def test_a_module_without_a_loss_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"SharpnessMonitor cannot tell the loss of DropoutModule.*loss_fn=lambda"):
        plain_fit(tmp_path, [SharpnessMonitor()])


def test_after_the_step_record_is_refused_clearly(tmp_path):
    from backprop_lab.monitors import GradientMonitor

    with pytest.raises(ValueError, match=r"SharpnessMonitor comes after GradientMonitor .*put it before them"):
        plain_fit(tmp_path, [GradientMonitor(), SharpnessMonitor(loss_fn=dropout_loss)])


def test_a_measurement_touches_neither_parameters_nor_grads_nor_the_rng():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
    module = PlainModule(seq, lr=0.1)
    batch = (torch.randn(8, 2), torch.randn(8, 1))
    nn.functional.mse_loss(seq(batch[0]), batch[1]).backward()
    before = [(p.clone(), p.grad.clone()) for p in module.parameters()]
    rng = torch.get_rng_state()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    monitor = SharpnessMonitor(1, loss_fn=lambda m, b: nn.functional.mse_loss(m.seq(b[0]), b[1]))
    monitor.on_train_batch_start(trainer, module, batch, 0)
    assert len(monitor.measurements) == 1 and monitor.measurements[0].lambda_max > 0
    assert torch.equal(torch.get_rng_state(), rng)
    for p, (value, grad) in zip(module.parameters(), before):
        assert torch.equal(p, value) and torch.equal(p.grad, grad)


def test_measurements_survive_a_checkpoint():
    monitor = SharpnessMonitor(2)
    monitor.measurements = [SharpnessPoint(0, 8.0, 0.3), SharpnessPoint(2, 7.5, 0.3, 0.9, 1e-4)]
    again = SharpnessMonitor(2)
    again.load_state_dict(monitor.state_dict())
    assert again.measurements == monitor.measurements


# --- the divergence diagnosis ---------------------------------------------------------------------------------


def diagnoses_text(log_dir) -> str:
    acc = event_accumulator(log_dir)
    (event,) = acc.Tensors("diagnoses/text_summary")
    assert TEXT_PLUGIN == "text"
    return event.tensor_proto.string_val[0].decode()


def test_a_diverging_linear_run_says_eta_times_lambda_max_passed_two(tmp_path):
    """η = 0.3 on ŷ = w·x at x = 2: λ_max = 2x² = 8, η·λ_max = 2.4 > 2; the exact bound is η < 1/x² = 0.25."""
    result, scalars = train_run(tmp_path, "model=linear", "optim.lr=0.3", "monitor.sharpness=5")
    assert result.status == "diverged"
    assert set(scalars["sharpness/lambda_max"].values()) == {8.0}
    text = diagnoses_text(tmp_path)
    assert (
        "The sharpness passed the edge of stability at step 0: λ_max, the largest eigenvalue of the loss Hessian, "
        "was 8, so η·λ_max = 0.3 · 8 = 2.4 > 2 (stable only for η < 2/λ_max = 0.25), and each step multiplies the "
        "error along the sharpest direction by |1 − η·λ_max| = 1.4."
    ) in text
    assert "η < 1/x² = 0.25" in text  # the linear net's own exact bound still follows


def test_without_the_step_record_the_divergence_still_names_the_sharpness(tmp_path):
    off = ("monitor.gradients=false", "monitor.dead_relu=false", "monitor.backprop_view=false", "monitor.pictures=[]")
    result, _ = train_run(tmp_path, "model=linear", "optim.lr=0.3", "monitor.sharpness=50", *off)
    assert result.status == "diverged"
    text = diagnoses_text(tmp_path)
    assert text.startswith(f"**step {result.diverged_at}**: Divergence: the loss became non-finite")
    assert "η·λ_max = 0.3 · 8 = 2.4 > 2" in text


def test_the_sharpness_sentence():
    assert sharpness_sentence([], 10) == ""
    assert sharpness_sentence([SharpnessPoint(20, 9.0, 0.3)], 10) == ""  # measured after the divergence only
    below = sharpness_sentence([SharpnessPoint(0, 4.0, 0.3), SharpnessPoint(5, 6.0, 0.3)], 10)
    assert "stayed below the edge of stability at every measurement up to step 5" in below
    assert "at most η·λ_max = 0.3 · 6 = 1.8 ≤ 2 (step 5)" in below
    crossed = sharpness_sentence([SharpnessPoint(0, 4.0, 0.3), SharpnessPoint(5, 7.0, 0.3)], 10)
    assert "passed the edge of stability at step 5" in crossed and "= 2.1 > 2" in crossed
    momentum = sharpness_sentence([SharpnessPoint(3, 10.0, 0.5, momentum=0.9)], 10)
    assert "η·λ_max = 0.5 · 10 = 5 > 2(1 + μ) = 3.8 (stable only for η < 2(1 + μ)/λ_max = 0.38)." in momentum
    decay = sharpness_sentence([SharpnessPoint(3, 9.0, 0.25, weight_decay=1.0)], 10)
    assert "η·(λ_max + wd) = 0.25 · (9 + 1) = 2.5 > 2 (stable only for η < 2/(λ_max + wd) = 0.2)" in decay
    (point,) = [divergence_without_history(7, 0.3, [SharpnessPoint(0, 8.0, 0.3)])]
    assert point.step == 7 and "η·λ_max = 0.3 · 8 = 2.4 > 2" in point.text
