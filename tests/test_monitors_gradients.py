"""backprop_lab.monitors.gradients: GradientMonitor logs the gradient the update applies, and w before it.

Expected values are recomputed by hand (float math from the post's formulas) or with stock PyTorch
(autograd, ``clip_grad_norm_``) from the same start, never read off the code under test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from torch import nn

from backprop_lab import models
from backprop_lab.loggers import TensorBoardLogger
from backprop_lab.module import BackpropModule
from backprop_lab.monitors import GradientMonitor
from backprop_lab.monitors.common import find_callback

from conftest import PlainData, PlainModule, built_run, event_accumulator, fit, read_scalars, train_run

NO_PICTURES = "monitor.pictures=[]"
X, Y, LR = 1.0, 0.5, 0.1  # the post's §4 example and learning rate


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def sigmoid_net_step(w1: float, w2: float) -> tuple[float, float, float]:
    """(L, ∂L/∂w1, ∂L/∂w2) of the post's §4 net: ŷ = w2·σ(w1·x), L = (y − ŷ)²."""
    h = sigmoid(w1 * X)
    dl_dy_hat = -2 * (Y - w2 * h)
    return (Y - w2 * h) ** 2, dl_dy_hat * w2 * h * (1 - h) * X, dl_dy_hat * h


# --- update ratio -------------------------------------------------------------------------------------


def test_update_ratio_of_the_posts_linear_net(tmp_path):
    # w0 = 3, g0 = −2(10 − 6)·2 = −16: ‖η·g‖/‖w‖ = 1.6/3. w1 = 4.6, g1 = −2(10 − 9.2)·2 = −3.2: 0.32/4.6.
    _, s = train_run(tmp_path, "model=linear", "trainer.max_steps=2", NO_PICTURES)
    assert s["update_ratio/w"][0] == pytest.approx(1.6 / 3, rel=1e-6)
    assert s["update_ratio/w"][1] == pytest.approx(0.32 / 4.6, rel=1e-5)


def test_update_ratio_is_not_logged_while_the_weight_is_zero(tmp_path):
    # w1 = 0: ‖w1‖ = 0, no ratio at step 0; w2 = −2 has ∂L/∂w2 = 0 (h = 0) so its ratio is 0.
    _, s = train_run(tmp_path, "model=relu", "model.w1=0", "model.w2=-2", "trainer.max_steps=1", NO_PICTURES)
    assert 0 not in s.get("update_ratio/w1", {})
    assert s["update_ratio/w2"][0] == 0.0


# --- step k: w before the k-th update, the gradient it applies -----------------------------------------


def test_every_logged_w_is_the_value_before_that_steps_update(tmp_path):
    _, s = train_run(tmp_path / "every", "model=sigmoid", "trainer.max_steps=6", "tol=0", NO_PICTURES)
    assert (s["params/w1"][0], s["params/w2"][0]) == (0.5, -1.0)
    for k in range(6):
        w1, w2 = s["params/w1"][k], s["params/w2"][k]
        loss, g1, g2 = sigmoid_net_step(w1, w2)
        # the loss and gradient of step k are those of the logged w: w is read before the update
        assert s["train/loss"][k] == pytest.approx(loss, rel=1e-5)
        assert s["grads/w1"][k] == pytest.approx(g1, rel=1e-5) and s["grads/w2"][k] == pytest.approx(g2, rel=1e-5)
        # w ← w − η·g with the logged gradient gives the w logged at the next step
        assert s["params/w1"][k + 1] == pytest.approx(w1 - LR * s["grads/w1"][k], rel=1e-6)
        assert s["params/w2"][k + 1] == pytest.approx(w2 - LR * s["grads/w2"][k], rel=1e-6)
    # Every third step (steps 2 and 5): the same values as the every-step run at those steps.
    _, third = train_run(
        tmp_path / "third", "model=sigmoid", "trainer.max_steps=6", "tol=0", "trainer.log_every_n_steps=3", NO_PICTURES
    )
    for k in (2, 5):
        assert third["params/w1"][k] == s["params/w1"][k] and third["grads/w1"][k] == s["grads/w1"][k]
    assert third["params/w1"][6] == s["params/w1"][6]


def test_under_gradient_clipping_the_logged_gradient_is_the_clipped_one_the_update_applies(tmp_path):
    # The post's §4 start has ‖g‖ = ‖(0.5276, −1.3974)‖ = 1.494 > 0.1: Lightning clips it to norm 0.1.
    _, s = train_run(
        tmp_path, "model=sigmoid", "trainer.gradient_clip_val=0.1", "trainer.max_steps=3", "tol=0", NO_PICTURES
    )
    w = [torch.tensor(0.5, requires_grad=True), torch.tensor(-1.0, requires_grad=True)]
    for k in range(3):
        for p in w:
            p.grad = None
        ((Y - w[1] * torch.sigmoid(w[0] * X)) ** 2).backward()
        torch.nn.utils.clip_grad_norm_(w, max_norm=0.1)
        g = [p.grad.item() for p in w]
        logged = [s["grad_norm/w1"][k], s["grad_norm/w2"][k]]
        assert math.hypot(*logged) == pytest.approx(0.1, rel=1e-5) and math.hypot(*logged) <= 0.1 + 1e-6
        assert logged == pytest.approx([abs(g[0]), abs(g[1])], rel=1e-5)
        assert [s["grads/w1"][k], s["grads/w2"][k]] == pytest.approx(g, rel=1e-5)
        ratios = [abs(LR * gi) / abs(p.item()) for gi, p in zip(g, w)]
        assert [s["update_ratio/w1"][k], s["update_ratio/w2"][k]] == pytest.approx(ratios, rel=1e-5)
        with torch.no_grad():
            for p in w:
                p -= LR * p.grad
        assert [s["params/w1"][k + 1], s["params/w2"][k + 1]] == pytest.approx([p.item() for p in w], rel=1e-6)


def test_with_accumulated_batches_the_gradient_is_the_one_of_both_micro_batches(tmp_path):
    # Two micro-batches of 4 per update. Lightning divides each micro-batch's loss by 2 before backward,
    # so the gradient the update applies is (g1 + g2)/2: the gradient of the mean loss over all 8 samples.
    torch.manual_seed(0)
    net = models.MLP(in_features=2, out_features=1, hidden=[3], activation="relu", negative_slope=0.01,
                     init="default", bias_init=-1.0, relu_grad_at_zero=0)  # fmt: skip
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    module = BackpropModule(net, optimizer=partial(torch.optim.SGD, lr=LR), loss_fn=nn.functional.mse_loss)
    fit(tmp_path, module, PlainData(x, y), [GradientMonitor(root="net")], steps=1, accumulate_grad_batches=2)
    s = read_scalars(tmp_path)

    ref = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    ref.load_state_dict({k.replace("fc1", "0").replace("out", "2"): v for k, v in start.items()})
    per_batch = []
    for xb, yb in ((x[:4], y[:4]), (x[4:], y[4:])):
        ref.zero_grad()
        nn.functional.mse_loss(ref(xb), yb).backward()
        per_batch.append([p.grad.clone() for p in ref.parameters()])
    applied = [(g1 + g2) / 2 for g1, g2 in zip(*per_batch)]
    ref.zero_grad()
    nn.functional.mse_loss(ref(x), y).backward()  # the same: the gradient of the whole 8
    for name, g, whole in zip(start, applied, (p.grad for p in ref.parameters())):
        assert s[f"grad_norm/{name}"][0] == pytest.approx(g.norm().item(), rel=1e-5), name
        assert s[f"grad_norm/{name}"][0] == pytest.approx(whole.norm().item(), rel=1e-5), name
    second_alone = per_batch[1][0].norm().item()
    assert s["grad_norm/fc1.weight"][0] != pytest.approx(second_alone, rel=1e-3)  # not the last micro-batch's
    # out.bias has one element: its value and gradient are scalars, and the update applied (g1 + g2)/2
    assert s["grads/out.bias"][0] == pytest.approx(applied[3].item(), rel=1e-5)
    assert s["params/out.bias"][1] == pytest.approx(start["out.bias"].item() - LR * applied[3].item(), rel=1e-5)


# --- the gradient-norm history: layers first to last --------------------------------------------------

DEEP_MLP = ("model=mlp", "model.hidden=[4,4,4,4,4,4]", "trainer.max_steps=2", NO_PICTURES)
DEEP_ORDER = [f"fc{i}.{kind}" for i in range(1, 7) for kind in ("weight", "bias")] + ["out.weight", "out.bias"]


def test_the_gradient_norm_history_lists_the_layers_first_to_last(tmp_path):
    module, data, trainer = built_run(tmp_path, *DEEP_MLP)
    trainer.fit(module, datamodule=data)
    history = find_callback(trainer, GradientMonitor).recorder.history
    assert [r.step for r in history] == [0, 1, 2]  # the two updates, then the final forward pass
    assert list(history[0].params) == DEEP_ORDER
    # out.bias has one element: its gradient is the signed number, the others are norms
    assert all(
        r.params[n].grad != 0 and r.params[n].grad == r.params[n].grad_backprop for r in history[:2] for n in DEEP_ORDER
    )


@pytest.mark.slow
def test_the_layer_order_is_the_same_under_any_string_hash_seed(tmp_path):
    # A set of names would come out in an order that changes with PYTHONHASHSEED: this process has a
    # random one (pytest leaves it unset), the one started here a fixed one.
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from conftest import built_run\n"
        "from backprop_lab.monitors import GradientMonitor\n"
        "from backprop_lab.monitors.common import find_callback\n"
        f"module, data, trainer = built_run(Path(sys.argv[2]), *{DEEP_MLP!r})\n"
        "trainer.fit(module, datamodule=data)\n"
        "print(','.join(find_callback(trainer, GradientMonitor).recorder.history[0].params))\n"
    )
    tests_dir = os.path.dirname(__file__)
    for seed in ("1",):
        proc = subprocess.run(
            [sys.executable, "-c", script, tests_dir, str(tmp_path / seed)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONWARNINGS": "ignore"},
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip().splitlines()[-1].split(",") == DEEP_ORDER, seed


# --- histograms: the tensors themselves, bucket for bucket, through either TensorBoard logger ------------------


@pytest.mark.parametrize("gathering", [False, True], ids=["lightning-logger", "backprop-lab-logger"])
def test_histograms_in_the_event_files_are_the_tensors_before_and_after_the_update(tmp_path, gathering):
    # Lightning's TensorBoardLogger gets each set of histograms as an event of its own; backprop-lab's puts it in
    # the step's one event with the scalars. Either way TensorBoard's reader must find, at every histogram step,
    # the parameters before that step's update and the gradients it applied, as torch.histc buckets them.
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = torch.randn(24, 3), torch.randn(24, 2)
    seen: dict[int, dict[str, torch.Tensor]] = {}

    class Truth(Callback):  # runs before the monitor: copies of what it must have binned
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen[trainer.global_step] = {f"params/{n}": p.detach().clone() for n, p in seq.named_parameters()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen[trainer.global_step - 1].update({f"grads/{n}": p.grad.clone() for n, p in seq.named_parameters()})

    logger = (TensorBoardLogger if gathering else LightningTensorBoardLogger)(
        str(tmp_path), name="", version="", default_hp_metric=False
    )
    trainer = L.Trainer(
        max_steps=5,
        logger=logger,
        callbacks=[Truth(), GradientMonitor(histogram_every_n_steps=2)],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(PlainModule(seq, lr=0.5), datamodule=PlainData(x, y))
    acc = event_accumulator(tmp_path)
    got = {tag: {e.step: e.histogram_value for e in acc.Histograms(tag)} for tag in acc.Tags()["histograms"]}
    assert set(got) == {f"{kind}/{n}" for kind in ("params", "grads") for n, _ in seq.named_parameters()}
    for tag, by_step in got.items():
        assert sorted(by_step) == [0, 2, 4], tag
        for step, h in by_step.items():
            v = seen[step][tag].reshape(-1)
            lo, hi = v.min().item(), v.max().item()
            assert (h.min, h.max, h.num) == (lo, hi, v.numel()), (tag, step)
            assert h.sum == pytest.approx(v.double().sum().item(), rel=1e-12, abs=1e-12)
            assert h.sum_squares == pytest.approx((v.double() ** 2).sum().item(), rel=1e-6)
            assert list(h.bucket_limit) == pytest.approx(torch.linspace(lo, hi, 65, dtype=torch.float64).tolist())
            assert list(h.bucket) == [0.0, *torch.histc(v, bins=64, min=lo, max=hi).tolist()], (tag, step)
    # the run moved: the histograms of step 4 are not those of step 0
    assert got["params/0.weight"][4].sum != got["params/0.weight"][0].sum
