"""backprop_lab.module: BackpropModule trains the post's networks step by step, and says how a run ended.

The post's numbers (sections 3–5) come from one-step runs through the code path the CLI uses. Expected
values are written out (computed by hand from the post's formulas), never by the code under test. The
post rounds and in places slips (e.g. it prints ∂L/∂w2 = −1.394 and w2 → −0.861 where the exact values
are −1.3974 and −0.8603); the exact values are pinned here.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck

from backprop_lab import functions as F
from backprop_lab.module import LOSS_BY_TASK

from conftest import built_run, train_run

APPROX = dict(abs=5e-5)

# --- the post's step, through training ------------------------------------------------------------


def test_linear_one_step(tmp_path):
    result, s = train_run(tmp_path, "model=linear", "trainer.max_steps=1")
    assert s["train/loss"][0] == pytest.approx(16.0)  # L = (10 − 3·2)²
    assert s["grads/w"][0] == pytest.approx(-16.0)  # ∂L/∂w = −2(y − ŷ)·x
    assert s["params/w"][0] == pytest.approx(3.0)
    assert s["params/w"][1] == pytest.approx(4.6)  # w − η·∂L/∂w
    assert s["train/loss"][1] == pytest.approx(0.64, abs=1e-5)  # (10 − 9.2)²
    assert s["grad_norm/w"][0] == pytest.approx(16.0)
    assert result.steps == 1 and result.status == "finished"
    assert result.final_loss == pytest.approx(0.64, abs=1e-5)


def test_sigmoid_one_step(tmp_path):
    result, s = train_run(tmp_path, "model=sigmoid", "trainer.max_steps=1")
    assert s["train/loss"][0] == pytest.approx(1.2599149502, **APPROX)
    assert s["grads/w2"][0] == pytest.approx(-1.3973705692, **APPROX)
    assert s["grads/w1"][0] == pytest.approx(0.5275642193, **APPROX)
    assert s["params/w1"][0] == pytest.approx(0.5) and s["params/w2"][0] == pytest.approx(-1.0)
    assert s["params/w1"][1] == pytest.approx(0.4472435781, **APPROX)
    assert s["params/w2"][1] == pytest.approx(-0.8602629431, **APPROX)
    assert s["train/loss"][1] == pytest.approx(1.0501050768, **APPROX)
    assert set(s["train/loss"]) == {0, 1}
    assert "relu/dead_fraction/h" not in s  # no ReLU in this net


def test_relu_one_step(tmp_path):
    _, s = train_run(tmp_path, "model=relu", "trainer.max_steps=1")
    assert s["train/loss"][0] == pytest.approx(1.0)  # ŷ = −0.5, (0.5 + 0.5)²
    assert s["grads/w1"][0] == pytest.approx(2.0)  # (−2)(0.5 − (−0.5))·(−1)·1·1
    assert s["grads/w2"][0] == pytest.approx(-1.0)  # ∂L/∂ŷ·h = −2·0.5
    assert s["params/w1"][1] == pytest.approx(0.3)
    assert s["params/w2"][1] == pytest.approx(-0.9)
    assert s["train/loss"][1] == pytest.approx(0.5929, abs=1e-6)  # ŷ = −0.9·0.3 = −0.27
    assert s["relu/dead_fraction/h"][0] == 0.0
    assert s["relu/zero_fraction/h"][0] == 0.0


def test_step_semantics_every_logged_value_is_from_before_the_update(tmp_path):
    # Linear: w_{k+1} = w_k − 0.1·(−2)(10 − 2w_k)·2 = 0.2·w_k + 4, so w_k = 5 − 2·0.2^k.
    _, s = train_run(tmp_path, "model=linear", "trainer.max_steps=3", "tol=0")
    for k in range(4):
        w = 5 - 2 * 0.2**k
        assert s["params/w"][k] == pytest.approx(w, abs=1e-5)
        assert s["train/loss"][k] == pytest.approx((10 - 2 * w) ** 2, abs=1e-4)
    for k in range(3):
        assert s["grads/w"][k] == pytest.approx(-4 * (10 - 2 * (5 - 2 * 0.2**k)), abs=1e-4)
    assert set(s["grads/w"]) == {0, 1, 2}  # no gradient at the final forward pass


def test_relu_dead_from_the_start_never_moves(tmp_path):
    result, s = train_run(tmp_path, "model=relu", "model.w1=-0.5", "trainer.max_steps=5")
    assert all(s["grads/w1"][k] == 0.0 for k in range(5))
    assert all(s["params/w1"][k] == -0.5 for k in range(6))
    assert s["relu/dead_fraction/h"][0] == 1.0 and s["relu/zero_fraction/h"][0] == 1.0
    assert result.dead_since == {"h": 0}


@pytest.mark.parametrize("grad_at_zero, expected_w1_grad", [(0, 0.0), (1, 2.0)])
def test_relu_at_exactly_zero_follows_the_setting(tmp_path, grad_at_zero, expected_w1_grad):
    # w1 = 0: z1 = 0, h = 0, ŷ = 0, ∂L/∂ŷ = −1, ∂L/∂w1 = −1·w2·ReLU′(0)·x = −1·(−2)·ReLU′(0).
    _, s = train_run(
        tmp_path,
        "model=relu",
        "model.w1=0",
        "model.w2=-2",
        f"model.relu_grad_at_zero={grad_at_zero}",
        "trainer.max_steps=1",
    )
    assert s["train/loss"][0] == pytest.approx(0.25)
    assert s["grads/w1"][0] == expected_w1_grad
    assert s["grads/w2"][0] == 0.0  # h = 0


# --- how a run ends ---------------------------------------------------------------------------------


# linear: L_k = 16·0.04^k falls below 1e-8 first at k = 7, so the run stops after update 7 (8 steps);
# sigmoid: its loss (float32) first falls below 1e-8 at step 117.
@pytest.mark.parametrize("model, steps", [("linear", 8), ("sigmoid", 118)])
def test_default_runs_converge(tmp_path, model, steps):
    result, s = train_run(tmp_path, f"model={model}")
    assert result.status == "converged"
    assert result.final_loss < 1e-8
    assert result.steps == steps  # stops once below tol
    assert s["train/loss"][result.steps] == pytest.approx(result.final_loss, abs=1e-9)


def test_diverging_run_stops_with_status_and_keeps_its_logs(tmp_path):
    result, s = train_run(tmp_path, "model=linear", "optim.lr=10", "trainer.max_steps=500")
    assert result.status == "diverged"
    # w_{k+1} − 5 = (1 − 10·8)(w_k − 5) = −79·(w_k − 5): L_k = 16·79^(2k) passes float32's
    # 3.4e38 at k = 10 (16·79^20 ≈ 1.4e39), so the loss of step 10 is inf.
    assert result.diverged_at == 10
    assert s["train/loss"][9] == pytest.approx(16 * 79.0**18, rel=1e-3)
    assert result.final_loss == float("inf")
    assert result.steps == result.diverged_at  # no update from the non-finite loss
    assert s["train/loss"][0] == pytest.approx(16.0)
    assert result.diverged_at not in s["params/w"]  # no final pass from non-finite parameters


def test_callback_metrics_hold_the_last_steps_loss_for_early_stopping_and_checkpoints(tmp_path):
    # Two updates of the post's §4 net: the loss of step 1 (the last step) is the post's L′ = 1.0501050768.
    # The final forward pass after it (step 2) goes to the loggers only.
    module, data, trainer = built_run(tmp_path, "model=sigmoid", "trainer.max_steps=2", "monitor.pictures=[]")
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(1.0501050768, **APPROX)
    # The second update by hand from the post's w1′, w2′: ∂L/∂w2 = ∂L/∂ŷ·h, ∂L/∂w1 = ∂L/∂ŷ·w2·h(1 − h)·x.
    w1, w2 = 0.4472435781, -0.8602629431
    h = 1 / (1 + math.exp(-w1))
    dl_dy_hat = -2 * (0.5 - w2 * h)
    w1, w2 = w1 - 0.1 * dl_dy_hat * w2 * h * (1 - h), w2 - 0.1 * dl_dy_hat * h
    assert module.final_loss == pytest.approx((0.5 - w2 / (1 + math.exp(-w1))) ** 2, **APPROX)
    assert module.status == "finished" and trainer.global_step == 2


# --- the losses of LOSS_BY_TASK: binary cross-entropy on logits ------------------------------------
# (Function tests proper live in test_functions.py; these pin the loss the classification runs use.)


def test_classification_trains_with_binary_cross_entropy_and_regression_with_squared_error():
    assert {"regression": F.mse_loss, "classification": F.bce_with_logits} == LOSS_BY_TASK


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
