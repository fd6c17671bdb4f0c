"""backprop_lab.monitors.common and .layout: the monitors on any LightningModule, at Lightning's cadence.

Every value is read back from the real event files with tensorboard's reader.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from backprop_lab.monitors import DeadReLUMonitor, GradientMonitor, custom_scalars_layout
from backprop_lab.monitors.pictures import PictureMonitor

from conftest import PlainData, PlainModule, event_accumulator, fit, read_scalars, train_run


def test_monitors_on_a_stock_nn_sequential_log_the_same_tags(tmp_path):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    data = PlainData(torch.randn(12, 2), torch.randn(12, 1), probe_x=torch.randn(5, 2))
    callbacks = [
        GradientMonitor(root="seq", histogram_every_n_steps=2),
        DeadReLUMonitor(root="seq", probe_every_n_steps=2),
        PictureMonitor(root="seq", every_n_steps=2),
    ]
    fit(tmp_path, PlainModule(seq, lr=0.1), data, callbacks, steps=3)
    acc = event_accumulator(tmp_path)
    s = read_scalars(tmp_path)
    for name in ["0.weight", "0.bias", "2.weight", "4.weight"]:
        assert set(s[f"grad_norm/{name}"]) == {0, 1, 2}
        assert set(s[f"update_ratio/{name}"]) == {0, 1, 2}
    assert set(s["grads/4.bias"]) == {0, 1, 2}  # one element: a scalar
    for layer in ["1", "3"]:
        assert set(s[f"relu/dead_fraction/{layer}"]) == {0, 1, 2}
        assert set(s[f"relu/zero_fraction/{layer}"]) == {0, 1, 2}
        assert set(s[f"relu/probe_dead_fraction/{layer}"]) == {0, 2, 3}  # every 2 steps, and at the end
        assert set(s[f"relu/dead_forever_fraction/{layer}"]) == {0, 1, 2}
    histograms = acc.Tags()["histograms"]
    assert {"grads/0.weight", "params/0.weight", "grads/2.weight"} <= set(histograms)
    assert [e.step for e in acc.Histograms("grads/0.weight")] == [0, 2]
    # No loss_fn attribute and 2-D regression data: no loss surface, no fitted curve.
    assert sorted(acc.Tags()["images"]) == ["pictures/grad_norm_by_layer", "pictures/unit_activity"]
    assert [e.step for e in acc.Images("pictures/unit_activity")] == [2, 3]


def test_the_monitors_log_at_the_steps_lightning_logs_the_loss(tmp_path):
    # log_every_n_steps=3: Lightning logs self.log at steps 2 and 5 ((k + 1) % 3 == 0), and the final
    # forward pass adds train/loss at step 7; the monitors' scalars sit at exactly the same steps.
    _, s = train_run(
        tmp_path, "model=relu", "trainer.log_every_n_steps=3", "trainer.max_steps=7", "monitor.pictures=[]"
    )
    assert set(s["train/loss"]) == {2, 5, 7}
    assert set(s["epoch"]) == {2, 5}
    for tag in ["grad_norm/w1", "grad_norm/w2", "grads/w1", "update_ratio/w2"]:
        assert set(s[tag]) == {2, 5}, tag
    for tag in ["relu/dead_fraction/h", "relu/zero_fraction/h", "relu/dead_forever_fraction/h"]:
        assert set(s[tag]) == {2, 5}, tag
    assert set(s["params/w1"]) == {2, 5, 7}  # the parameters also where training ended
    # probe_every_n_steps=25: step 0, the end, and step 6, right after the update of step 5, where the
    # batch statistics first see it dead
    assert set(s["relu/probe_dead_fraction/h"]) == {0, 6, 7}
    # The unit dies at step 4 (test_train.py): alive at step 2, dead at 5, the loss then (0.5 − 0)².
    assert s["relu/dead_fraction/h"] == {2: 0.0, 5: 1.0}
    assert s["train/loss"][5] == 0.25 and s["train/loss"][7] == 0.25


def test_every_custom_scalars_chart_matches_the_tags_a_run_logs(tmp_path):
    _, s = train_run(tmp_path / "mlp", "model=mlp", "model.hidden=[4,4]", "trainer.max_steps=2", "monitor.pictures=[]")
    charts = {
        title: regexes for category in custom_scalars_layout().values() for title, (_, regexes) in category.items()
    }
    matched = {title: {tag for tag in s for r in regexes if re.fullmatch(r, tag)} for title, regexes in charts.items()}
    assert matched["training loss"] == {"train/loss"}
    weights = {"grad_norm/fc1.weight", "grad_norm/fc2.weight", "grad_norm/out.weight"}
    assert matched["gradient norm of every weight (first layer to last)"] == weights  # no biases
    assert matched["dead fraction on the batch"] == {"relu/dead_fraction/act1", "relu/dead_fraction/act2"}
    assert matched["parameters w, w1, w2"] == set()  # the MLP has no w, w1, w2
    # and the post's net: its one-number parameters and their gradients
    _, post = train_run(tmp_path / "post", "model=sigmoid", "trainer.max_steps=1", "monitor.pictures=[]")
    params = {tag for tag in post for r in charts["parameters w, w1, w2"] if re.fullmatch(r, tag)}
    assert params == {"params/w1", "params/w2"}


def test_the_monitors_import_no_hydra_and_no_omegaconf():
    # A practitioner's script imports the monitors only: torch, Lightning and TensorBoard, not the app.
    import subprocess
    import sys

    check = "import backprop_lab.monitors, sys; print(sorted(m for m in ('hydra', 'omegaconf') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
