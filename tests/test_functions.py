"""Every hand-written Function against gradcheck and against torch's own autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck

from backprop_lab import functions as F

DTYPES = [torch.float32, torch.float64]


def _rand(*shape, dtype=torch.float64, device="cpu", offset=0.0):
    return (torch.randn(*shape, dtype=dtype, device=device) + offset).requires_grad_()


def _away_from_zero(t: torch.Tensor) -> torch.Tensor:
    # Kinks of ReLU-like functions break finite differences; keep |z| > 0.1.
    with torch.no_grad():
        t.add_(torch.where(t >= 0, 0.1, -0.1))
    return t


# --- gradcheck, float64 ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (2, 4, 3)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_gradcheck(shape, bias):
    torch.manual_seed(0)
    x = _rand(*shape)
    w = _rand(2, shape[-1])
    b = _rand(2) if bias else None
    assert gradcheck(F.LinearFunction.apply, (x, w, b))


def test_sigmoid_gradcheck():
    torch.manual_seed(1)
    assert gradcheck(F.SigmoidFunction.apply, (_rand(4, 3),))


@pytest.mark.parametrize("grad_at_zero", [0, 1])
def test_relu_gradcheck(grad_at_zero):
    torch.manual_seed(2)
    z = _away_from_zero(_rand(4, 3))
    assert gradcheck(lambda t: F.ReLUFunction.apply(t, grad_at_zero), (z,))


def test_leaky_relu_gradcheck():
    torch.manual_seed(3)
    z = _away_from_zero(_rand(4, 3))
    assert gradcheck(lambda t: F.LeakyReLUFunction.apply(t, 0.2), (z,))


def test_mse_gradcheck():
    torch.manual_seed(4)
    assert gradcheck(F.MSELossFunction.apply, (_rand(6, 2), _rand(6, 2)))


# --- against torch's autograd on random inputs, float32 and float64 -----------------------------------


def _grads(out, inputs):
    g = torch.randn_like(out)
    return torch.autograd.grad(out, inputs, g), g


def _compare(ours, native, inputs_ours, inputs_native, dtype):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, native, **tol)
    g = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, inputs_ours, g), torch.autograd.grad(native, inputs_native, g)):
        torch.testing.assert_close(a, b, **tol)


def _twins(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors], [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (64, 8), (3, 5, 8)])
def test_linear_matches_native(dtype, shape):
    torch.manual_seed(5)
    (x, w, b), (x2, w2, b2) = _twins(torch.randn(*shape, dtype=dtype), torch.randn(4, shape[-1], dtype=dtype), torch.randn(4, dtype=dtype))
    _compare(F.linear(x, w, b), TF.linear(x2, w2, b2), (x, w, b), (x2, w2, b2), dtype)
    (x, w), (x2, w2) = _twins(torch.randn(*shape, dtype=dtype), torch.randn(4, shape[-1], dtype=dtype))
    _compare(F.linear(x, w), TF.linear(x2, w2), (x, w), (x2, w2), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_matches_native(dtype):
    torch.manual_seed(6)
    (z,), (z2,) = _twins(torch.randn(32, 7, dtype=dtype) * 4)
    _compare(F.sigmoid(z), torch.sigmoid(z2), (z,), (z2,), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_matches_native(dtype):
    torch.manual_seed(7)
    base = torch.randn(32, 7, dtype=dtype)
    base[0, :3] = 0.0  # native ReLU′(0) = 0, as ours by default
    (z,), (z2,) = _twins(base)
    _compare(F.relu(z), torch.relu(z2), (z,), (z2,), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_matches_native(dtype):
    torch.manual_seed(8)
    (z,), (z2,) = _twins(torch.randn(32, 7, dtype=dtype))
    _compare(F.leaky_relu(z, 0.1), TF.leaky_relu(z2, 0.1), (z,), (z2,), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_matches_native(dtype):
    torch.manual_seed(9)
    (a, b), (a2, b2) = _twins(torch.randn(16, 3, dtype=dtype), torch.randn(16, 3, dtype=dtype))
    _compare(F.mse_loss(a, b), TF.mse_loss(a2, b2), (a, b), (a2, b2), dtype)


# --- the post's conventions, pinned ------------------------------------------------------------------


def test_relu_derivative_at_zero_is_a_setting():
    z = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
    (g0,) = torch.autograd.grad(F.relu(z, 0).sum(), z)
    (g1,) = torch.autograd.grad(F.relu(z, 1).sum(), z)
    assert g0.tolist() == [0.0, 0.0, 1.0]
    assert g1.tolist() == [0.0, 1.0, 1.0]


def test_mse_local_derivative_is_the_posts():
    # Section 3: ŷ = 6, y = 10: L = 16 and ∂L/∂ŷ = −2(y − ŷ) = −8.
    y_hat = torch.tensor([[6.0]], requires_grad=True)
    loss = F.mse_loss(y_hat, torch.tensor([[10.0]]))
    loss.backward()
    assert loss.item() == 16.0
    assert y_hat.grad.item() == -8.0


def test_backward_does_not_modify_grad_output():
    z = torch.randn(5, 3, requires_grad=True)
    for out in (F.sigmoid(z), F.relu(z), F.leaky_relu(z, 0.1), F.linear(z, torch.randn(2, 3))):
        g = torch.ones_like(out)
        torch.autograd.grad(out, z, g)
        assert torch.equal(g, torch.ones_like(out))


def test_functions_work_under_torch_func():
    torch.manual_seed(10)
    w = torch.randn(3, 2, dtype=torch.float64)
    xs = torch.randn(4, 5, 2, dtype=torch.float64)

    def loss(w, x):
        return F.mse_loss(F.linear(F.sigmoid(F.linear(x, w)), torch.ones(1, 3, dtype=torch.float64)), torch.zeros(5, 1, dtype=torch.float64))

    def native(w, x):
        return TF.mse_loss(TF.linear(torch.sigmoid(TF.linear(x, w)), torch.ones(1, 3, dtype=torch.float64)), torch.zeros(5, 1, dtype=torch.float64))

    ours = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs)
    ref = torch.func.vmap(torch.func.grad(native), in_dims=(None, 0))(w, xs)
    torch.testing.assert_close(ours, ref)
    relu_grad = torch.func.grad(lambda z: F.relu(z).sum())(torch.tensor([-1.0, 2.0]))
    assert relu_grad.tolist() == [0.0, 1.0]


# --- CUDA variants (run wherever a GPU is present) ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_functions_match_native_on_cuda(cuda, dtype):
    torch.manual_seed(11)
    (x, w, b), (x2, w2, b2) = _twins(*(t.to(cuda) for t in (torch.randn(64, 8, dtype=dtype), torch.randn(4, 8, dtype=dtype), torch.randn(4, dtype=dtype))))
    _compare(F.linear(x, w, b), TF.linear(x2, w2, b2), (x, w, b), (x2, w2, b2), dtype)
    (z,), (z2,) = _twins(torch.randn(64, 8, dtype=dtype, device=cuda))
    _compare(F.sigmoid(z), torch.sigmoid(z2), (z,), (z2,), dtype)
    _compare(F.relu(z), torch.relu(z2), (z,), (z2,), dtype)
    _compare(F.leaky_relu(z, 0.1), TF.leaky_relu(z2, 0.1), (z,), (z2,), dtype)
    (a, t), (a2, t2) = _twins(torch.randn(64, 2, dtype=dtype, device=cuda), torch.randn(64, 2, dtype=dtype, device=cuda))
    _compare(F.mse_loss(a, t), TF.mse_loss(a2, t2), (a, t), (a2, t2), dtype)


@pytest.mark.gpu
def test_gradcheck_on_cuda(cuda):
    x = torch.randn(5, 3, dtype=torch.float64, device=cuda, requires_grad=True)
    w = torch.randn(2, 3, dtype=torch.float64, device=cuda, requires_grad=True)
    assert gradcheck(F.LinearFunction.apply, (x, w, None))
    assert gradcheck(F.SigmoidFunction.apply, (x,))
