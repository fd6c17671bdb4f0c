"""backprop_lab.monitors.pictures: which pictures are drawn when, and the loss surface they are drawn from."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from backprop_lab import functions as F
from backprop_lab.models import LinearNet, ReLUNet, SigmoidNet
from backprop_lab.monitors.common import find_callback
from backprop_lab.monitors.pictures import PictureMonitor, loss_on_grid

from conftest import built_run, read_images, train_run


def test_post_relu_run_draws_surface_activity_and_gradients_at_intervals_and_at_the_end(tmp_path):
    train_run(tmp_path, "model=relu", "trainer.max_steps=20", "monitor.picture_every_n_steps=10")
    pics = read_images(tmp_path)
    # One training example: no fitted function to draw.
    assert sorted(pics) == ["pictures/grad_norm_by_layer", "pictures/loss_surface", "pictures/unit_activity"]
    for series in pics.values():
        assert [e.step for e in series] == [10, 20]
    e = pics["pictures/loss_surface"][-1]
    assert (e.width, e.height) == (640, 440)
    assert Image.open(io.BytesIO(e.encoded_image_string)).size == (640, 440)


def test_sigmoid_run_has_no_unit_activity_and_pictures_can_be_chosen(tmp_path):
    train_run(tmp_path / "a", "model=sigmoid", "trainer.max_steps=3")
    assert sorted(read_images(tmp_path / "a")) == ["pictures/grad_norm_by_layer", "pictures/loss_surface"]
    train_run(tmp_path / "b", "model=sigmoid", "trainer.max_steps=3", "monitor.pictures=[loss_surface]")
    assert [e.step for e in read_images(tmp_path / "b")["pictures/loss_surface"]] == [3]  # at the end only
    assert len(read_images(tmp_path / "b")) == 1
    train_run(tmp_path / "c", "model=sigmoid", "trainer.max_steps=3", "monitor.pictures=[]")
    assert read_images(tmp_path / "c") == {}


@pytest.mark.parametrize("data", ["sine", "moons"])
def test_mlp_fit_is_drawn_for_1d_regression_and_2d_classification(tmp_path, data):
    train_run(
        tmp_path,
        "model=mlp",
        f"data={data}",
        "model.hidden=[8]",
        "data.n_samples=32",
        "data.n_probe=16",
        "trainer.max_steps=4",
        "monitor.picture_every_n_steps=2",
        "monitor.pictures=[fit]",
    )
    assert [e.step for e in read_images(tmp_path)["pictures/fit"]] == [2, 4]


def _grid(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_loss_surface_values_are_the_posts():
    x, y = torch.tensor([[2.0]]), torch.tensor([[10.0]])
    # L(w) = (10 − 2w)²: 16 at the post's start, 0.64 after its one step, 0 at w = 5.
    losses = loss_on_grid(LinearNet(w=3.0), F.mse_loss, x, y, _grid([3.0], [4.6], [5.0]))
    assert losses.tolist() == pytest.approx([16.0, 0.64, 0.0], abs=1e-5)

    x, y = torch.tensor([[1.0]]), torch.tensor([[0.5]])
    # Sigmoid at the post's (w1, w2) = (0.5, −1): 1.2599; ReLU there: (0.5 + 0.5)² = 1; ReLU with w1 < 0: 0.5² = 0.25.
    sigmoid = loss_on_grid(SigmoidNet(w1=0.5, w2=-1.0), F.mse_loss, x, y, _grid([0.5, -1.0]))
    assert sigmoid.tolist() == pytest.approx([1.2599149502], abs=5e-6)
    relu = loss_on_grid(
        ReLUNet(w1=0.5, w2=-1.0, relu_grad_at_zero=0), F.mse_loss, x, y, _grid([0.5, -1.0], [-0.5, -1.0], [0.5, 1.0])
    )
    assert relu.tolist() == pytest.approx([1.0, 0.25, 0.0], abs=1e-6)


def test_loss_surface_falls_back_to_one_call_per_point_for_a_loss_vmap_cannot_batch():
    def loss_with_item(y_hat, y):  # .item() is refused under vmap
        return ((y - y_hat) ** 2).mean() * (1.0 + 0.0 * float((y - y_hat).sum().item()))

    x, y = torch.tensor([[2.0]]), torch.tensor([[10.0]])
    losses = loss_on_grid(LinearNet(w=3.0), loss_with_item, x, y, _grid([3.0], [5.0]))
    assert losses.tolist() == pytest.approx([16.0, 0.0])


def _loss_surface_path(tmp_path, *overrides):
    """The path the picture draws: the record's w1, w2 before every update (read through the public record)."""
    module, data, trainer = built_run(tmp_path, *overrides)
    trainer.fit(module, datamodule=data)
    history = find_callback(trainer, PictureMonitor).recorder.history
    return [[r.params["w1"].value, r.params["w2"].value] for r in history if r.backward]


def test_loss_surface_path_is_recorded_before_every_update_whatever_the_log_cadence(tmp_path):
    # The loss surface asks the record for every step, also when scalars are logged every 3 steps and
    # without the gradient monitor. The post's §4 run: w1 0.5 → 0.4472 after one step, w2 −1 → −0.8603.
    args = ("model=sigmoid", "trainer.max_steps=4", "monitor.pictures=[loss_surface]", "trainer.log_every_n_steps=3")
    shared = _loss_surface_path(tmp_path / "a", *args)
    alone = _loss_surface_path(tmp_path / "b", *args, "monitor.gradients=false", "monitor.dead_relu=false")
    assert len(shared) == len(alone) == 4 and shared == alone  # steps 0–3, before each update
    assert shared[0] == [0.5, -1.0]
    w1, w2 = 0.5, -1.0
    h = 1 / (1 + math.exp(-w1))
    g = -2 * (0.5 - w2 * h)
    assert shared[1] == pytest.approx([w1 - 0.1 * g * w2 * h * (1 - h), w2 - 0.1 * g * h], abs=1e-6)


def test_picture_monitor_refuses_an_unknown_picture():
    with pytest.raises(ValueError, match="unknown pictures \\['surface'\\]"):
        PictureMonitor(pictures=["surface"])


@pytest.mark.parametrize(
    ("first", "last", "ratio"),
    [(2.0, 0.5, "4"), (1e-6, 1e-3, "0.001"), (np.inf, np.inf, None), (np.nan, 1.0, None), (1.0, 0.0, None)],
)
def test_the_gradient_norm_title_gives_the_first_to_last_ratio_only_where_it_is_a_number(first, last, ratio):
    from backprop_lab.monitors.pictures import _grad_norm_title

    norms = {"fc1.weight": np.array([1.0, first]), "out.weight": np.array([1.0, last])}
    title = _grad_norm_title(np.array([0, 7]), norms, ["fc1.weight", "out.weight"], 7)
    assert title.splitlines()[0] == "gradient norm by layer, step 7"
    if ratio is None:
        assert len(title.splitlines()) == 1
    else:
        assert title.splitlines()[1] == f"‖g‖ of fc1.weight / ‖g‖ of out.weight = {ratio} at step 7"
