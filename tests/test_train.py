"""backprop_lab.train: build_run and train, from a composed config to a finished run, its hparams and closing lines."""

from __future__ import annotations

import json
import logging
import urllib.parse

import pytest
from hydra.utils import instantiate

from backprop_lab import functions as F
from backprop_lab.module import LOSS_BY_TASK
from backprop_lab.monitors import DeadReLUMonitor, GradientMonitor, PictureMonitor, StepRecorder
from backprop_lab.train import flat_hparams, monitors, sizes_from_data

from conftest import built_run, compose_config, train_run

NO_PICTURES = "monitor.pictures=[]"  # the pictures are tested in test_monitors_pictures.py; here they cost seconds


def test_moons_train_with_binary_cross_entropy(tmp_path):
    cfg = compose_config("model=mlp", "data=moons")
    data = instantiate(cfg.data, seed=0)
    net = instantiate(cfg.model, **sizes_from_data(cfg.model, data))
    assert LOSS_BY_TASK[data.task] is F.bce_with_logits
    assert (net.fc1.in_features, net.out.out_features) == (2, 1)
    assert LOSS_BY_TASK[instantiate(compose_config("model=mlp").data, seed=0).task] is F.mse_loss
    assert sizes_from_data(compose_config("model=sigmoid").model, data) == {}  # the post's nets: one in, one out


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


def test_default_relu_run_dies_and_says_when(tmp_path):
    # w1: 0.5 → 0.3 → 0.1614 → 0.0525 → −0.0381: z1 < 0 from step 4 on, and nothing moves again.
    result, s = train_run(tmp_path, "model=relu", "trainer.max_steps=30")
    assert result.dead_since == {"h": 4}
    assert [s["relu/dead_fraction/h"][k] for k in range(6)] == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert s["params/w1"][4] == pytest.approx(-0.03812, abs=1e-4)
    assert s["params/w1"][30] == s["params/w1"][4]
    assert s["grads/w1"][10] == 0.0 and s["grads/w2"][10] == 0.0
    assert result.final_loss == pytest.approx(0.25)  # ŷ = 0: (0.5 − 0)²
    assert result.status == "finished"
    assert result.final_dead_fraction == 1.0


def test_monitors_can_be_turned_off(tmp_path):
    _, s = train_run(
        tmp_path, "model=relu", "trainer.max_steps=2", "monitor.gradients=false", "monitor.dead_relu=false"
    )
    # "epoch" is Lightning's own, logged with every self.log metric
    assert set(s) == {"train/loss", "epoch", "hparams/final_loss", "hparams/best_loss", "hparams/steps"}
    # two updates: w1 = 0.1614, w2 = −0.8538, so ŷ = −0.13780 and L = (0.5 + 0.13780)² = 0.40679
    assert s["train/loss"][0] == pytest.approx(1.0) and s["train/loss"][2] == pytest.approx(0.40679, abs=1e-4)


def test_monitor_keys_choose_the_callbacks_and_their_intervals():
    chosen = monitors(compose_config("monitor.backprop_view=false", "monitor.probe_every_n_steps=7").monitor)
    # the one record they all read first, pictures last
    assert [type(cb) for cb in chosen] == [StepRecorder, GradientMonitor, DeadReLUMonitor, PictureMonitor]
    assert all(cb.root == "net" for cb in chosen)
    assert chosen[2].probe_every_n_steps == 7 and chosen[1].histogram_every_n_steps == 25
    assert chosen[0].saturation_threshold == 1e-3
    assert monitors(compose_config("monitor.gradients=false", "monitor.dead_relu=false",
                                   "monitor.backprop_view=false", NO_PICTURES).monitor) == []  # fmt: skip


def test_hparams_record_the_runs_final_metrics_and_its_config(tmp_path):
    result, s = train_run(tmp_path, "model=relu", "trainer.max_steps=10", NO_PICTURES)
    # Dead from step 4: the loss stays at (0.5 − 0)² = 0.25, the best of the run; logged at the run's last step
    assert s["hparams/final_loss"] == {10: 0.25} and s["hparams/best_loss"] == {10: 0.25}
    assert s["hparams/steps"] == {10: 10.0} and s["hparams/final_dead_fraction"] == {10: 1.0}
    params = flat_hparams(compose_config("model=mlp"))
    assert params["optim.lr"] == 0.1 and params["model.hidden"] == "[16, 16]" and params["model.activation"] == "relu"
    assert not any(key.split(".")[-1].startswith("_") for key in params)  # no _target_, _partial_


def test_the_closing_lines_say_how_the_run_ended_why_the_unit_died_and_where_the_logs_are(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="backprop_lab")
    train_run(tmp_path / "outputs" / "runs" / "r", "model=relu", "trainer.max_steps=10", NO_PICTURES)
    lines = [r.getMessage() for r in caplog.records if r.name == "backprop_lab"]
    assert lines[0].startswith("run finished after 10 steps: loss 0.25 (best 0.25) in ")
    # w1 = −0.03812 after the fourth update (test_default_relu_run_dies_and_says_when), x = 1: the
    # Backprop tab's diagnosis (backprop_lab.diagnoses), word for word
    assert lines[1].startswith("The ReLU unit h is dead since step 4: z1 = w1 · x = -0.03812 ≤ 0 on every sample")
    assert "What helps: a smaller learning rate η" in lines[1]
    assert lines[-3] == "TensorBoard logs: outputs/runs/r  (open with: tensorboard --logdir outputs/runs/r)"
    # the Backprop tab where the unit died, as an address that opens it there (docs/backprop_view.md)
    assert lines[-2] == (
        "then the Backprop tab at step 4 (dead unit h): "
        "http://localhost:6006/#backprop&p.backprop.run=r&p.backprop.step=4&p.backprop.phase=backward"
    )
    # TensorBoard's Time Series on the loss, weights and gradients, smoothing off (its address's query)
    story = urllib.parse.urlsplit(lines[-1].split(": ", 1)[1])
    assert story.fragment == "timeseries"
    query = urllib.parse.parse_qs(story.query)
    assert query["smoothing"] == ["0"]
    pinned = ["train/loss", "params/w1", "grads/w1", "params/w2", "grads/w2"]
    assert json.loads(query["pinnedCards"][0]) == [{"plugin": "scalars", "tag": tag} for tag in pinned]


def test_without_the_view_and_tensorboard_the_closing_lines_carry_the_same_diagnosis(tmp_path, caplog, monkeypatch):
    # The diagnoses come from the step record, whatever the loggers: CSV only, no Backprop tab.
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="backprop_lab")
    train_run(tmp_path / "r", "model=relu", "trainer.max_steps=10", "monitor.backprop_view=false", "logger=csv",
              NO_PICTURES)  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "backprop_lab"]
    assert lines[1].startswith("The ReLU unit h is dead since step 4: z1 = w1 · x = -0.03812 ≤ 0 on every sample")
    assert lines[-1].startswith("logs: ")


def test_build_run_builds_without_training(tmp_path):
    module, data, trainer = built_run(tmp_path, "model=sigmoid", "trainer.max_steps=5")
    assert trainer.global_step == 0 and trainer.max_steps == 5 and trainer.log_every_n_steps == 1
    assert [(n, p.item()) for n, p in module.net.named_parameters()] == [("w1", 0.5), ("w2", -1.0)]
    assert data.train_set.x.tolist() == [[1.0]] and data.train_set.y.tolist() == [[0.5]]
