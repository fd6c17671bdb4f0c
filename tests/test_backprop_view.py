"""BackpropViewMonitor writes the Backprop tab's data: read back with TensorBoard's own event reader.

Pinned: the post's sigmoid step (x = 1, y = 0.5, w1 = 0.5, w2 = −1, η = 0.1) number by number, equal to
the float64 replay to float32 precision, and L at step 1; the ReLU unit of the post dying at step 4;
the linear step of §3; per-layer norms, update ratios and dead fractions of an MLP against the same
quantities computed here by hand; the cadence; nothing written without a TensorBoard logger.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util
from torch.utils.data import DataLoader

from backprop_lab import functions as F
from backprop_lab import models
from backprop_lab.diagnoses import diagnose
from backprop_lab.module import BackpropModule
from backprop_lab.monitors.backprop_view import GRAPH_TAG, LAYERS_TAG, PLUGIN_NAME, BackpropViewMonitor
from backprop_lab.replay import replay

for _name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.ERROR)


def fit(
    run_dir: Path, net, batches, steps: int, lr=0.1, loss=F.mse_loss, momentum=0.0, every=1, logger=True, before=()
):
    """Train ``net`` on ``batches`` (cycled) for ``steps`` updates with BackpropViewMonitor (after the callbacks
    ``before``); return the monitor."""
    batches = list(batches)
    data = [batches[i % len(batches)] for i in range(steps)]
    module = BackpropModule(net, functools.partial(torch.optim.SGD, lr=lr, momentum=momentum), loss, tol=0.0)
    monitor = BackpropViewMonitor(root="net")
    if logger is True:
        logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False)
    trainer = L.Trainer(
        max_steps=steps,
        logger=logger,
        callbacks=[*before, monitor],
        log_every_n_steps=every,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, DataLoader(data, batch_size=None))
    return monitor


def fit_post(run_dir: Path, net, x: float, y: float, steps: int, **kw):
    return fit(run_dir, net, [(torch.tensor([[x]]), torch.tensor([[y]]))], steps, **kw)


def read(run_dir: Path) -> tuple[str, dict, dict[int, dict[str, float]]]:
    """(tag, layout, {step: {field: value}}) from the run's event files, by TensorBoard's reader."""
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    (tag,) = [t for t in acc.Tags()["tensors"] if t.startswith("backprop/")]
    metadata = acc.SummaryMetadata(tag)
    assert metadata.plugin_data.plugin_name == PLUGIN_NAME
    layout = json.loads(metadata.plugin_data.content)
    steps = {}
    for event in acc.Tensors(tag):
        values = tensor_util.make_ndarray(event.tensor_proto).tolist()
        steps[event.step] = dict(zip(layout["fields"], values))
    return tag, layout, steps


def post_cfg(model: str, x: float, y: float, lr: float = 0.1, **params):
    """A config the replay takes: the post's network with ``params``, one example, plain SGD."""
    target = {"sigmoid": "SigmoidNet", "relu": "ReLUNet", "linear": "LinearNet"}[model]
    return OmegaConf.create(
        {
            "model": {"_target_": f"backprop_lab.models.{target}", **params},
            "data": {"_target_": "backprop_lab.data.ExampleDataModule", "x": x, "y": y},
            "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": lr, "momentum": 0.0, "weight_decay": 0.0},
        }
    )


def approx(value):
    return pytest.approx(value, rel=1e-6, abs=1e-7)  # float32 training, float64 reference


def test_sigmoid_step_is_the_posts_step_and_the_replays(tmp_path):
    monitor = fit_post(tmp_path, models.SigmoidNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=1)
    tag, layout, steps = read(tmp_path)
    assert tag == GRAPH_TAG
    assert (layout["kind"], layout["model"], layout["activation"]) == ("graph", "sigmoid", "sigmoid")
    assert sorted(steps) == [0, 1]  # the one update at step 0, the final forward pass at step 1
    s0, s1 = steps[0], steps[1]
    assert s0["loss"] == approx(1.2599149502)
    assert s0["dL_dw2"] == approx(-1.3973705692)
    assert s0["dL_dw1"] == approx(0.5275642193)
    assert s1["loss"] == approx(1.0501050768)
    # the chain rule, link by link, as the tab draws it
    assert (s0["x"], s0["y"], s0["z1"], s0["w1"], s0["w2"]) == (1.0, 0.5, 0.5, 0.5, -1.0)
    assert s0["h"] == approx(1 / (1 + math.exp(-0.5)))
    assert s0["dh_dz1"] == approx(s0["h"] * (1 - s0["h"]))
    assert s0["dL_dy_hat"] == approx(-2 * (0.5 - s0["y_hat"]))
    assert s0["dL_dh"] == approx(s0["dL_dy_hat"] * s0["w2"])
    assert s0["dL_dz1"] == approx(s0["dL_dh"] * s0["dh_dz1"])
    assert s0["dL_dw1"] == approx(s0["dL_dz1"] * s0["x"])
    assert (s0["lr_w1"], s0["lr_w2"], s0["batch"], s0["backward"]) == (approx(0.1), approx(0.1), 1.0, 1.0)
    # every quantity the replay computes in float64, the same to float32 precision
    rows = {row.key: row.value for row in replay(post_cfg("sigmoid", 1.0, 0.5, w1=0.5, w2=-1.0)).rows}
    compared = [
        "z1",
        "h",
        "y_hat",
        "loss",
        "dL_dy_hat",
        "dL_dw2",
        "dL_dh",
        "dh_dz1",
        "dL_dz1",
        "dL_dw1",
        "w2_new",
        "w1_new",
    ]
    for key in compared:
        assert s0[key] == approx(rows[key]), key
    assert s1["loss"] == approx(rows["loss_new"])
    assert s1["z1"] == approx(rows["z1_new"]) and s1["h"] == approx(rows["h_new"])
    # step 1 is a forward pass only
    assert s1["backward"] == 0.0
    assert all(math.isnan(s1[k]) for k in ("dL_dy_hat", "dL_dw1", "dL_dw2", "w1_new", "w2_new"))
    # what the monitor keeps in memory is what it wrote
    assert list(monitor.history.steps) == [0, 1]
    assert monitor.history.row(0)["dL_dw1"] == approx(s0["dL_dw1"])


def test_relu_unit_dies_at_step_4_and_w1_stops(tmp_path):
    monitor = fit_post(tmp_path, models.ReLUNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=200)
    _, layout, steps = read(tmp_path)
    assert layout["model"] == "relu" and layout["relu_grad_at_zero"] == 0
    assert sorted(steps) == list(range(201))  # a two-parameter net: every step, then the final pass
    assert [steps[k]["dh_dz1"] for k in range(6)] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert steps[3]["z1"] == approx(0.0524887051) and steps[4]["z1"] == approx(-0.0381204359)
    assert steps[3]["dL_dw1"] == approx(0.9060914099)
    for k in range(4, 200):
        assert steps[k]["h"] == 0.0 and steps[k]["dL_dz1"] == 0.0 and steps[k]["dL_dw1"] == 0.0
        assert steps[k]["w1"] == steps[4]["w1"] and steps[k]["loss"] == approx(0.25)
    # w′ is read after the optimizer step: it is the next step's w
    for k in range(200):
        assert steps[k]["w1_new"] == steps[k + 1]["w1"] and steps[k]["w2_new"] == steps[k + 1]["w2"]
    (found,) = diagnose(monitor.history)
    assert (found.kind, found.step, found.where) == ("dead_unit", 4, "h")


def test_linear_step_of_section_3(tmp_path):
    fit_post(tmp_path, models.LinearNet(w=3.0), 2.0, 10.0, steps=1)
    _, layout, steps = read(tmp_path)
    assert layout["model"] == "linear"
    s0 = steps[0]
    assert (s0["y_hat"], s0["loss"], s0["dL_dy_hat"], s0["dL_dw"]) == (6.0, 16.0, -8.0, -16.0)
    assert s0["w_new"] == approx(4.6) and steps[1]["y_hat"] == approx(9.2) and steps[1]["loss"] == approx(0.64)


def test_momentum_shows_the_update_the_optimizer_made(tmp_path):
    fit_post(tmp_path, models.SigmoidNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=3, momentum=0.9)
    _, layout, steps = read(tmp_path)
    assert layout["momentum"] == 0.9
    s1 = steps[1]
    plain = s1["w1"] - 0.1 * s1["dL_dw1"]
    assert s1["w1_new"] == steps[2]["w1"] and s1["w1_new"] != approx(plain)  # the momentum buffer moved it more


def test_mlp_layers_first_to_last_against_hand_computed_values(tmp_path):
    torch.manual_seed(0)
    net = models.MLP(2, 1, hidden=[8, 8], activation="relu", init="negative_bias", bias_init=-0.3)
    start = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 2, generator=gen), torch.randn(16, 1, generator=gen)
    monitor = fit(tmp_path, net, [(x, y)], steps=12, lr=0.05, every=5)
    tag, layout, steps = read(tmp_path)
    assert tag == LAYERS_TAG
    assert [layer["name"] for layer in layout["layers"]] == ["fc1", "act1", "fc2", "act2", "out"]
    assert sorted(steps) == [0, 4, 9, 12]  # step 0, Lightning's cadence (k + 1) % 5 == 0, the final pass
    s0 = steps[0]
    # the same quantities by hand, on a copy of the starting network
    loss = F.mse_loss(start(x), y)
    loss.backward()
    assert s0["loss"] == approx(loss.item())
    for name in ("fc1", "fc2", "out"):
        w = start.get_submodule(name).weight
        assert s0[f"{name}/weight_norm"] == approx(w.norm().item())
        assert s0[f"{name}/grad_norm"] == approx(w.grad.norm().item())
        assert s0[f"{name}/lr"] == approx(0.05)
        assert s0[f"{name}/update_ratio"] == approx(0.05 * w.grad.norm().item() / w.norm().item())
    h1 = torch.relu(start.fc1(x))
    h2 = torch.relu(start.fc2(h1))
    assert s0["act1/dead_fraction"] == approx((h1.amax(0) <= 0).float().mean().item())
    assert s0["act2/dead_fraction"] == approx((h2.amax(0) <= 0).float().mean().item())
    assert s0["act1/dead_fraction"] + s0["act2/dead_fraction"] > 0  # the negative bias kills some units
    assert steps[12]["backward"] == 0.0 and math.isnan(steps[12]["fc1/grad_norm"])
    assert steps[12]["fc1/weight_norm"] == approx(net.fc1.weight.norm().item())
    assert list(monitor.history.steps) == [0, 4, 9, 12]


def test_nothing_without_a_tensorboard_logger(tmp_path):
    monitor = fit_post(tmp_path, models.SigmoidNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=2, logger=CSVLogger(str(tmp_path)))
    assert monitor.history is None
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
