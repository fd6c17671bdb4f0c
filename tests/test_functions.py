"""Every hand-written Function against gradcheck, against torch's own op, and under torch.func and torch.compile."""

from __future__ import annotations

import inspect
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as TF
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

from backprop_lab import functions as F
from backprop_lab import models

# A (N, 1) ŷ against a (N,) y: torch warns and broadcasts, and so do we (tested on its own below).
pytestmark = pytest.mark.filterwarnings("ignore:Using a target size:UserWarning")


# --- the table of cases: each Function over the shapes torch's op accepts ---------------------------


@dataclass
class Case:
    """One call of one Function: ``ours`` and ``native`` take the same tensors; ``make(gen, dtype)`` builds them."""

    id: str
    ours: Callable[..., Tensor]
    native: Callable[..., Tensor]
    make: Callable[[torch.Generator, torch.dtype], tuple[Tensor, ...]]
    kink: bool = False  # piecewise linear: keep the inputs off the kink, where finite differences fail


def _r(*shape):  # drawn in float64 and rounded, so each dtype sees the same numbers
    return lambda gen, dtype: torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _inputs(*makers):
    return lambda gen, dtype: tuple(m(gen, dtype) for m in makers)


def _t(*shape):  # a non-contiguous tensor: the transpose of a (shape[1], shape[0]) one
    return lambda gen, dtype: _r(*reversed(shape))(gen, dtype).t()


def _labels(*shape):
    return lambda gen, dtype: torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)


def _lin(x, w, b=None):
    return F.LinearFunction.apply(x, w, b)


def _expanded_linear(ours: bool):
    # x0 of shape (1, 3) reaches the Function as a stride-0 (5, 3) view.
    def f(x0, w, b):
        return (_lin if ours else TF.linear)(x0.expand(5, 3), w, b)

    return f


LINEAR = [
    Case("2-D x, bias", _lin, TF.linear, _inputs(_r(5, 3), _r(2, 3), _r(2))),
    Case("2-D x, no bias", _lin, TF.linear, _inputs(_r(5, 3), _r(2, 3))),
    Case("1x1, the post's", _lin, TF.linear, _inputs(_r(1, 1), _r(1, 1))),
    Case("3-D x, bias", _lin, TF.linear, _inputs(_r(2, 4, 3), _r(2, 3), _r(2))),
    Case("1-D x, bias", _lin, TF.linear, _inputs(_r(3), _r(2, 3), _r(2))),
    Case("1-D weight", _lin, TF.linear, _inputs(_r(5, 3), _r(3))),
    Case("3-D x, 1-D weight, 0-d bias", _lin, TF.linear, _inputs(_r(2, 4, 3), _r(3), _r())),
    Case("1-D x, 1-D weight, 0-d bias", _lin, TF.linear, _inputs(_r(3), _r(3), _r())),
    Case("bias of shape (1,)", _lin, TF.linear, _inputs(_r(5, 3), _r(2, 3), _r(1))),
    Case("0-d bias", _lin, TF.linear, _inputs(_r(5, 3), _r(2, 3), _r())),
    Case("bias per row (5, 2)", _lin, TF.linear, _inputs(_r(5, 3), _r(2, 3), _r(5, 2))),
    Case("3-D x, bias (4, 2)", _lin, TF.linear, _inputs(_r(2, 4, 3), _r(2, 3), _r(4, 2))),
    Case("0 rows", _lin, TF.linear, _inputs(_r(0, 3), _r(2, 3), _r(2))),
    Case("0 features in", _lin, TF.linear, _inputs(_r(4, 0), _r(2, 0), _r(2))),
    Case("non-contiguous x and W", _lin, TF.linear, _inputs(_t(5, 3), _t(2, 3), _r(2))),
    Case("expanded x", _expanded_linear(True), _expanded_linear(False), _inputs(_r(1, 3), _r(2, 3), _r(2))),
]


def _elementwise(name, ours, native, kink=False):
    def expanded(fn):
        return lambda z0: fn(z0.expand(4, 3))

    shapes = [
        ("(4, 3)", _r(4, 3)),
        ("0-d", _r()),
        ("0 elements", _r(0, 3)),
        ("3-D", _r(2, 3, 2)),
        ("non-contiguous", _t(4, 3)),
    ]
    cases = [Case(f"{name} {label}", ours, native, _inputs(m), kink) for label, m in shapes]
    return cases + [Case(f"{name} expanded", expanded(ours), expanded(native), _inputs(_r(1, 3)), kink)]


ELEMENTWISE = [
    *_elementwise("sigmoid", F.SigmoidFunction.apply, torch.sigmoid),
    *_elementwise("relu", F.ReLUFunction.apply, torch.relu, kink=True),
    *_elementwise("relu grad_at_zero=1", lambda z: F.ReLUFunction.apply(z, 1), torch.relu, kink=True),
    *_elementwise(
        "leaky a=0.2", lambda z: F.LeakyReLUFunction.apply(z, 0.2), lambda z: TF.leaky_relu(z, 0.2), kink=True
    ),
]
ELEMENTWISE += [
    Case(
        f"leaky a={a}",
        lambda z, a=a: F.LeakyReLUFunction.apply(z, a),
        lambda z, a=a: TF.leaky_relu(z, a),
        _inputs(_r(4, 3)),
        True,
    )
    for a in (0.0, -0.5, 1.5)  # a < 0 saves z instead of h; torch takes any slope
]


def _mse_case(label, *makers):
    return Case(f"mse {label}", F.MSELossFunction.apply, TF.mse_loss, _inputs(*makers))


def _bce_case(label, *makers):
    return Case(f"bce {label}", F.BCEWithLogitsFunction.apply, TF.binary_cross_entropy_with_logits, _inputs(*makers))


LOSSES = [
    _mse_case("(6, 2)", _r(6, 2), _r(6, 2)),
    _mse_case("(N, 1) vs (N,)", _r(5, 1), _r(5)),
    _mse_case("y broadcast (2,)", _r(6, 2), _r(2)),
    _mse_case("0-d", _r(), _r()),
    _mse_case("non-contiguous", _t(6, 2), _t(6, 2)),
    _bce_case("(6, 2)", _r(6, 2), _labels(6, 2)),
    _bce_case("0-d", _r(), _labels()),
    _bce_case("non-contiguous", _t(6, 2), _labels(6, 2)),
]
# Losses over 0 elements are nan, in torch as here; compared with native, not gradchecked.
EMPTY_LOSSES = [_mse_case("0 elements", _r(0, 2), _r(0, 2)), _bce_case("0 elements", _r(0, 2), _labels(0, 2))]

CASES = LINEAR + ELEMENTWISE + LOSSES


def _build(case: Case, dtype: torch.dtype, seed: int = 0) -> tuple[Tensor, ...]:
    inputs = case.make(torch.Generator().manual_seed(seed), dtype)
    if case.kink:  # |z| > 0.1, so no finite difference straddles the kink at 0
        inputs = tuple(t + torch.where(t >= 0, 0.1, -0.1).to(dtype) for t in inputs)
    return inputs


def _grad_patterns(case: Case):
    """Each non-empty choice of inputs that require grad: every ``needs_input_grad`` combination."""
    n = len(case.make(torch.Generator().manual_seed(0), torch.float64))
    for pattern in itertools.product([False, True], repeat=n):
        if any(pattern):
            yield pytest.param(case, pattern, id=f"{case.id}-{''.join('-g'[p] for p in pattern)}")


# --- float64: gradcheck and gradgradcheck in both modes, every needs_input_grad combination --------


@pytest.mark.parametrize(("case", "pattern"), [p for case in CASES for p in _grad_patterns(case)])
def test_gradcheck(case, pattern):
    inputs = tuple(t.requires_grad_(p) for t, p in zip(_build(case, torch.float64), pattern, strict=True))
    assert gradcheck(case.ours, inputs, check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(case.ours, inputs, check_fwd_over_rev=True, check_batched_grad=True)


# --- against torch's own op: values and every input's gradient ---------------------------------------

TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    # One rounding in torch's fused kernels, one per plain op here: a few ulps apart.
    torch.bfloat16: dict(rtol=3e-2, atol=3e-2),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
}


def _value_and_grads(fn, inputs, g_seed=1):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(g_seed), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, inputs, g, allow_unused=True)
    return out, grads


@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
@pytest.mark.parametrize("case", CASES + EMPTY_LOSSES, ids=lambda c: c.id)
def test_matches_native(case, dtype):
    inputs = _build(case, dtype)
    out, grads = _value_and_grads(case.ours, inputs)
    ref, ref_grads = _value_and_grads(case.native, inputs)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, equal_nan=True, **TOLERANCES[dtype])
    for got, want, x in zip(grads, ref_grads, inputs, strict=True):
        assert got.dtype == x.dtype and got.shape == x.shape
        torch.testing.assert_close(got, want, **TOLERANCES[dtype])


def test_relu_at_zero_matches_native_by_default():
    z = torch.tensor([-1.0, 0.0, 0.0, 2.0])
    (ours,), (native,) = _value_and_grads(F.relu, [z])[1], _value_and_grads(torch.relu, [z])[1]
    assert torch.equal(ours, native)


# --- shapes torch refuses are refused, and the (N, 1)-vs-(N,) loss ------------------------------------


def test_mse_of_n1_against_n_is_torchs_value_and_gradient():
    # ŷ (N, 1) against y (N,) broadcasts to N × N pairs in torch: the value is over N² elements, and so
    # must the gradient be (the old fused-kernel backward gave ∂L/∂ŷ N times too large).
    n = 4
    y_hat = torch.arange(n, dtype=torch.float64).reshape(n, 1).requires_grad_()
    y = torch.zeros(n, dtype=torch.float64)
    with pytest.warns(UserWarning, match=r"target size \(torch.Size\(\[4\]\)\).*input size \(torch.Size\(\[4, 1\]\)\)"):
        loss = F.mse_loss(y_hat, y)
    (grad,) = torch.autograd.grad(loss, y_hat)
    # L = Σ_ij (ŷ_i − y_j)² / N² = Σ_i ŷ_i² / N, so ∂L/∂ŷ_i = 2·ŷ_i / N.
    assert loss.item() == pytest.approx((0 + 1 + 4 + 9) / n)
    assert grad.flatten().tolist() == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert torch.equal(grad, torch.autograd.grad(TF.mse_loss(y_hat, y), y_hat)[0])


def test_bce_refuses_mismatched_shapes_naming_both():
    with pytest.raises(ValueError, match=r"Target size \(torch.Size\(\[5\]\)\).*input size \(torch.Size\(\[5, 1\]\)\)"):
        F.bce_with_logits(torch.randn(5, 1), torch.rand(5))
    with pytest.raises(ValueError):
        TF.binary_cross_entropy_with_logits(torch.randn(5, 1), torch.rand(5))


REFUSED = {  # name: (ours, torch's, input shapes, the shapes our message names where it is not torch's)
    "linear (4, 3) by W (2, 5)": (F.linear, TF.linear, [(4, 3), (2, 5)], None),
    "linear 3-D x by W (2, 5)": (F.linear, TF.linear, [(6, 4, 3), (2, 5)], None),
    "linear 0-d x": (F.linear, TF.linear, [(), (1, 1)], None),
    "linear 3-D weight": (F.linear, TF.linear, [(4, 3), (1, 2, 3)], None),
    "linear bias (3,) for out = 2": (F.linear, TF.linear, [(4, 3), (2, 3), (3,)], None),
    "linear 2-D x, 1-D W and a bias": (F.linear, TF.linear, [(4, 3), (3,), ()], None),
    "linear bias larger than y": (F.linear, TF.linear, [(2, 4, 3), (2, 3), (5, 2, 4, 2)], [(5, 2, 4, 2), (2, 4, 2)]),
    "mse (5, 2) vs (3,)": (F.mse_loss, TF.mse_loss, [(5, 2), (3,)], None),
    "bce (5, 2) vs (2,)": (F.bce_with_logits, TF.binary_cross_entropy_with_logits, [(5, 2), (2,)], None),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refuses_what_torch_refuses(name):
    ours, native, shapes, named = REFUSED[name]
    inputs = [torch.randn(s) for s in shapes]
    with pytest.raises((RuntimeError, ValueError)) as native_error:
        native(*inputs)
    with pytest.raises(native_error.type) as our_error:
        ours(*inputs)
    message = str(our_error.value)
    if named is None:  # torch's own message (from matmul, where F.linear says linear)
        assert message.replace("matmul", "linear") == str(native_error.value)
    else:
        assert all(str(s) in message for s in named), message


def test_linear_refuses_mixed_dtypes_outside_autocast():
    with pytest.raises(RuntimeError, match="same dtype"):
        F.linear(torch.randn(4, 3), torch.randn(2, 3, dtype=torch.float64))


# --- torch.func: every transform against the same computation in stock PyTorch -----------------------


class _Ops:
    def __init__(self, linear, act, loss):
        self.linear, self.act, self.loss = linear, act, loss


ACTIVATIONS = {
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "relu": (F.relu, torch.relu),
    "leaky_relu": (lambda z: F.leaky_relu(z, 0.1), lambda z: TF.leaky_relu(z, 0.1)),
}
LOSS_FNS = {"mse": (F.mse_loss, TF.mse_loss), "bce": (F.bce_with_logits, TF.binary_cross_entropy_with_logits)}


def _nets(activation: str, loss: str):
    """The post's two-layer net with a bias, ours and stock: ``f(w1, b1, w2, x) -> ŷ``, ``L(w1, b1, w2, x, y)``."""
    pair = []
    for i in (0, 1):
        ops = _Ops((F.linear, TF.linear)[i], ACTIVATIONS[activation][i], LOSS_FNS[loss][i])

        def f(w1, b1, w2, x, ops=ops):
            return ops.linear(ops.act(ops.linear(x, w1, b1)), w2)

        def L(w1, b1, w2, x, y, f=f, ops=ops):
            return ops.loss(f(w1, b1, w2, x), y)

        pair.append((f, L))
    return pair


@pytest.mark.parametrize("loss", list(LOSS_FNS))
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_torch_func_transforms_match_native(activation, loss):
    gen = torch.Generator().manual_seed(12)
    d = dict(generator=gen, dtype=torch.float64)
    w1, b1, w2 = torch.randn(4, 2, **d), torch.randn(4, **d), torch.randn(1, 4, **d)
    xs, ys = torch.randn(3, 5, 2, **d), torch.rand(3, 5, 1, **d)
    x, y = xs[0], ys[0]
    (f, L), (f_ref, L_ref) = _nets(activation, loss)
    func = torch.func

    def check(transform):
        torch.testing.assert_close(transform(f, L), transform(f_ref, L_ref), rtol=1e-10, atol=1e-12)

    check(lambda f, L: func.vmap(f, in_dims=(None, None, None, 0))(w1, b1, w2, xs))  # a batch of batches
    check(lambda f, L: func.vmap(f, in_dims=(None, 0, None, None))(w1, torch.stack([b1, -b1]), w2, x))  # only b batched
    check(
        lambda f, L: func.vmap(func.grad(L), in_dims=(None, None, None, 0, 0))(w1, b1, w2, xs, ys)
    )  # per-sample grads
    check(lambda f, L: func.grad(L, argnums=(0, 1, 2))(w1, b1, w2, x, y))
    check(lambda f, L: func.jvp(lambda w1: f(w1, b1, w2, x), (w1,), (torch.ones_like(w1),)))
    check(lambda f, L: func.jvp(lambda *p: L(*p, x, y), (w1, b1, w2), (w1.sin(), b1.cos(), w2)))
    check(lambda f, L: func.jacrev(f, argnums=(0, 1, 2, 3))(w1, b1, w2, x))
    check(lambda f, L: func.jacfwd(f, argnums=(0, 1, 2, 3))(w1, b1, w2, x))
    check(lambda f, L: func.hessian(L, argnums=(0, 1))(w1, b1, w2, x, y))


def test_forward_ad_matches_reverse_at_relu_kink():
    # jacfwd uses jvp, jacrev uses backward: both must apply the same ReLU′(0).
    z = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64)
    for grad_at_zero in (0, 1):

        def relu(t, grad_at_zero=grad_at_zero):
            return F.relu(t, grad_at_zero)

        fwd, rev = torch.func.jacfwd(relu)(z), torch.func.jacrev(relu)(z)
        assert torch.equal(fwd, rev)
        assert torch.diagonal(fwd).tolist() == [0.0, float(grad_at_zero), 1.0]


# --- torch.compile: every model of the package in one graph, equal to eager -------------------------

MODELS = {
    "LinearNet": (lambda: models.LinearNet(w=3.0), 1, F.mse_loss),
    "SigmoidNet": (lambda: models.SigmoidNet(w1=0.5, w2=-1.0), 1, F.mse_loss),
    "ReLUNet": (lambda: models.ReLUNet(w1=0.5, w2=-1.0), 1, F.mse_loss),
    "ReLUNet ReLU'(0)=1": (lambda: models.ReLUNet(w1=0.5, w2=-1.0, relu_grad_at_zero=1), 1, F.mse_loss),
    "MLP relu": (lambda: models.MLP(2, 1, hidden=[8, 8]), 2, F.mse_loss),
    "MLP sigmoid, bce": (lambda: models.MLP(2, 1, hidden=[8], activation="sigmoid"), 2, F.bce_with_logits),
    "MLP leaky_relu": (
        lambda: models.MLP(2, 1, hidden=[8], activation="leaky_relu", negative_slope=0.1),
        2,
        F.mse_loss,
    ),
}


def _step_grads(net, loss_fn, x, y):
    net.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in net.parameters()]


def _compile_and_compare(name, backend):
    make, n_in, loss_fn = MODELS[name]
    torch.manual_seed(13)
    net = make()
    x, y = torch.randn(16, n_in), torch.rand(16, 1)
    x[:4] = 0.0  # z = 0 exactly in the post's nets: ReLU′(0) is the setting's, compiled as eager
    compiled = torch.compile(lambda x, y: loss_fn(net(x), y), fullgraph=True, backend=backend)
    loss, grads = _step_grads(net, loss_fn, x, y)
    net.zero_grad(set_to_none=True)
    compiled_loss = compiled(x, y)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, loss)
    for p, g in zip(net.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("name", list(MODELS))
def test_compile_fullgraph_matches_eager(name):
    # fullgraph=True fails on any graph break; aot_eager traces forward and our backward as inductor would.
    torch.compiler.reset()
    _compile_and_compare(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SigmoidNet", "MLP relu"])
def test_compile_inductor_matches_eager(name):
    torch.compiler.reset()
    _compile_and_compare(name, "inductor")


def test_compiled_grad_at_zero_is_the_setting():
    # A bias-free unit at z = 0: ∂L/∂w2 is 0 either way, ∂L/∂b1 is ReLU′(0)·… and tells the settings apart.
    for grad_at_zero in (0, 1):
        net = models.MLP(1, 1, hidden=[1], relu_grad_at_zero=grad_at_zero)
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(1.0)
            net.fc1.weight.zero_()
            net.fc1.bias.zero_()
        torch.compiler.reset()
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
        compiled(torch.ones(1, 1)).sum().backward()
        assert net.fc1.bias.grad.item() == float(grad_at_zero)


# --- autocast: incoming gradients in another dtype than the weights ---------------------------------


def test_autocast_bf16_mlp_gradients_have_the_parameters_dtype():
    torch.manual_seed(14)
    net = models.MLP(2, 1, hidden=[16, 16])
    native = torch.nn.Sequential(
        torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )
    native.load_state_dict(
        {k.replace("fc1", "0").replace("fc2", "2").replace("out", "4"): v for k, v in net.state_dict().items()}
    )
    x, y = torch.randn(32, 2), torch.randn(32, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = net(x), native(x)
        assert out.dtype == ref.dtype == torch.bfloat16
        loss, ref_loss = F.mse_loss(out, y), TF.mse_loss(ref, y)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    for p, q in zip(net.parameters(), native.parameters(), strict=True):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2)


def test_linear_backward_returns_each_gradient_in_its_inputs_dtype():
    # The layer after a bf16 one: x in bf16, W and b in float32, g in bf16 (the output's dtype under autocast).
    x = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    w, b = torch.randn(2, 3, requires_grad=True), torch.randn(2, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = F.linear(x, w, b)
    assert y.dtype == torch.bfloat16
    # backward itself, called with its ctx (a custom Function's grad_fn), before autograd casts anything
    grad_x, grad_w, grad_b = F.LinearFunction.backward(y.grad_fn, torch.ones(4, 2, dtype=torch.bfloat16))
    assert (grad_x.dtype, grad_w.dtype, grad_b.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    torch.testing.assert_close(grad_w, torch.ones(4, 2).t() @ x.detach().float(), rtol=1e-2, atol=1e-2)  # bf16 products
    torch.testing.assert_close(grad_b, torch.full((2,), 4.0))


def test_losses_return_the_logits_gradient_in_the_logits_dtype():
    # Under autocast ŷ comes in bf16 against a float32 y: the loss is promoted, ∂L/∂ŷ is not.
    y_hat = torch.randn(8, 1, dtype=torch.bfloat16, requires_grad=True)
    for fn, y in ((F.MSELossFunction, torch.randn(8, 1)), (F.BCEWithLogitsFunction, torch.rand(8, 1))):
        loss = fn.apply(y_hat, y)
        assert loss.dtype == torch.float32  # as torch's own ops promote
        grad, _ = fn.backward(loss.grad_fn, torch.ones(()))
        assert grad.dtype == torch.bfloat16


# --- the post's conventions and numbers, pinned -----------------------------------------------------


def test_relu_derivative_at_zero_is_a_setting():
    z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    (g0,) = torch.autograd.grad(F.relu(z, 0).sum(), z)
    (g1,) = torch.autograd.grad(F.relu(z, 1).sum(), z)
    assert g0.tolist() == [0.0, 0.0, 1.0]
    assert g1.tolist() == [0.0, 1.0, 1.0]


def test_leaky_relu_derivative_at_zero_is_the_slope_as_in_torch():
    z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(F.leaky_relu(z, 0.25).sum(), z)
    (ref,) = torch.autograd.grad(TF.leaky_relu(z, 0.25).sum(), z)
    assert g.tolist() == ref.tolist() == [0.25, 0.25, 1.0]


def test_the_posts_linear_example():
    # Section 3: x = 2, w = 3, y = 10: ŷ = 6, L = 16, ∂L/∂ŷ = −2(y − ŷ) = −8, ∂L/∂w = −16.
    net = models.LinearNet(w=3.0)
    y_hat = net(torch.tensor([[2.0]]))
    y_hat.retain_grad()
    loss = F.mse_loss(y_hat, torch.tensor([[10.0]]))
    loss.backward()
    assert (y_hat.item(), loss.item(), y_hat.grad.item(), net.w.grad.item()) == (6.0, 16.0, -8.0, -16.0)


def test_the_posts_sigmoid_example():
    # Section 4: x = 1, w1 = 0.5, w2 = −1, y = 0.5: L ≈ 1.259, ∂L/∂w2 ≈ −1.394, ∂L/∂w1 ≈ 0.527 (the
    # post rounds h = σ(0.5) to 0.622 before multiplying: unrounded, ∂L/∂w2 = −1.3974).
    net = models.SigmoidNet(w1=0.5, w2=-1.0)
    loss = F.mse_loss(net(torch.tensor([[1.0]])), torch.tensor([[0.5]]))
    loss.backward()
    assert loss.item() == pytest.approx(1.259, abs=1e-3)
    assert net.w2.grad.item() == pytest.approx(-1.394, abs=5e-3)
    assert net.w1.grad.item() == pytest.approx(0.527, abs=1e-3)


def test_backward_does_not_modify_grad_output():
    z = torch.randn(5, 3, requires_grad=True)
    outs = (
        F.sigmoid(z),
        F.relu(z),
        F.relu(z, 1),
        F.leaky_relu(z, 0.1),
        F.linear(z, torch.randn(2, 3)),
        F.mse_loss(z, z.detach() + 1),
    )
    for out in outs:
        g = torch.ones_like(out)
        torch.autograd.grad(out, z, g)
        assert torch.equal(g, torch.ones_like(out))


def _saved(fn, *inputs) -> list[Tensor]:
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*inputs)
    return out, saved


def test_saves_only_what_backward_needs():
    x, w = torch.randn(4, 3), torch.randn(2, 3, requires_grad=True)
    # A first layer: eager keeps x and W (jvp needs both, and vmap needs one pair for both: issue 18);
    # only compiled code, which has no jvp, keeps x alone.
    _, saved = _saved(F.linear, x, w)
    assert len(saved) == 2 and saved[0] is x and saved[1] is w
    h, saved = _saved(F.relu, w)  # the output, not the input: z can be freed
    assert len(saved) == 1 and saved[0].data_ptr() == h.data_ptr()
    _, saved = _saved(F.relu, w, 1)  # ReLU′(0) = 1 needs z
    assert len(saved) == 1 and saved[0] is w
    h, saved = _saved(F.sigmoid, w)
    assert len(saved) == 1 and saved[0].data_ptr() == h.data_ptr()
    h, saved = _saved(F.leaky_relu, w, 0.1)
    assert len(saved) == 1 and saved[0].data_ptr() == h.data_ptr()
    _, saved = _saved(F.leaky_relu, w, -0.5)  # a < 0: h > 0 no longer means z > 0
    assert len(saved) == 1 and saved[0] is w


def test_functions_call_no_library_derivative_and_no_private_name():
    source = Path(F.__file__).read_text()
    code = "\n".join(line.split("#")[0] for line in source.splitlines())  # comments may name what is avoided
    for banned in ("torch.ops", "aten", "torch._C", "super(torch.autograd.Function", "torch.nn.functional"):
        assert banned not in code, banned
    assert not re.search(r"\btorch\._", code)  # no private torch name
    assert re.findall(r"\w+_backward\(", code) == ["save_for_backward("] * code.count("save_for_backward(")


def test_the_manual_shows_sigmoid_function_as_it_stands():
    manual = (Path(__file__).resolve().parents[1] / "docs" / "functions.md").read_text()
    shown = manual.split("## One Function, whole", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert shown == inspect.getsource(F.SigmoidFunction)


def test_compile_needs_the_helpers_not_apply():
    # Why the helpers swap in a copy without jvp while compiling: Dynamo refuses a Function with one.
    torch.compiler.reset()
    direct = torch.compile(lambda z: F.SigmoidFunction.apply(z).sum(), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="custom jvp"):
        direct(torch.randn(3, requires_grad=True))
    helper = torch.compile(lambda z: F.sigmoid(z).sum(), fullgraph=True, backend="aot_eager")
    z = torch.randn(3, requires_grad=True)
    helper(z).backward()
    torch.testing.assert_close(z.grad, torch.sigmoid(z) * (1 - torch.sigmoid(z)))


# --- CUDA variants (run wherever a GPU is present) ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_functions_match_native_on_cuda(cuda, dtype):
    for case in CASES:
        inputs = [t.to(cuda) for t in _build(case, dtype)]
        out, grads = _value_and_grads(case.ours, inputs)
        ref, ref_grads = _value_and_grads(case.native, inputs)
        torch.testing.assert_close(out, ref, **TOLERANCES[dtype])
        for got, want in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(got, want, **TOLERANCES[dtype])


@pytest.mark.gpu
def test_gradcheck_on_cuda(cuda):
    for case in (LINEAR[0], ELEMENTWISE[0], LOSSES[0], LOSSES[5]):
        inputs = tuple(t.to(cuda).requires_grad_() for t in _build(case, torch.float64))
        assert gradcheck(case.ours, inputs, check_forward_ad=True)
