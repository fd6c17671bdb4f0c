"""The named experiments of configs/experiment/: each claim of the README pinned on a real run (issue 4, item 6).

Each composes the experiment exactly as `python scripts/train.py experiment=<name>` does and trains it
on the CPU (seed 0), reading the values back from the event files.
"""

from __future__ import annotations

import statistics

import pytest

from conftest import compose_config, read_scalars, run_cli, train_run

NO_PICTURES = "monitor.pictures=[]"  # pictures are tested elsewhere; here they would cost seconds


def _ratio(s, step):
    """How many times the last layer's gradient norm exceeds the first layer's at ``step``."""
    return s["grad_norm/out.weight"][step] / s["grad_norm/fc1.weight"][step]


def test_experiments_compose_as_documented():
    dead = compose_config("experiment=dead_relu")
    assert (list(dead.model.hidden), dead.model.activation, dead.optim.lr) == ([64, 64], "relu", 0.3)
    assert dead.data._target_ == "backprop_lab.data.SineDataModule" and dead.trainer.max_steps == 300
    leaky = compose_config("experiment=leaky_fix")
    assert (list(leaky.model.hidden), leaky.model.activation, leaky.model.negative_slope, leaky.optim.lr) == (
        [64, 64],
        "leaky_relu",
        0.01,
        0.3,
    )
    deep = compose_config("experiment=vanishing_sigmoid")
    assert (list(deep.model.hidden), deep.model.activation) == ([32] * 6, "sigmoid")
    relu = compose_config("experiment=deep_relu")
    assert (list(relu.model.hidden), relu.model.activation, relu.model.init, relu.optim.lr) == (
        [32] * 6,
        "relu",
        "he",
        0.01,
    )
    # a key given on the command line still wins over the experiment's
    assert compose_config("experiment=dead_relu", "optim.lr=0.05").optim.lr == 0.05


def test_dead_relu_kills_most_of_the_second_layer(tmp_path):
    result, s = train_run(tmp_path, "experiment=dead_relu", "trainer.max_steps=150", NO_PICTURES)
    dead = s["relu/dead_fraction/act2"]
    assert dead[0] == pytest.approx(13 / 64)  # at the start, 13 of 64 units are off on the batch
    assert min(dead[k] for k in range(10, 150)) > 0.8  # after 10 large updates, over 80 % stay dead
    assert result.final_loss > 0.4  # the net predicts little more than the mean of sin(x)


def test_leaky_fix_has_no_dead_units_and_learns(tmp_path):
    result, s = train_run(tmp_path, "experiment=leaky_fix", NO_PICTURES)
    for layer in ("act1", "act2"):
        assert set(s[f"relu/dead_fraction/{layer}"].values()) == {0.0}
        assert len(s[f"relu/dead_fraction/{layer}"]) == 300
    assert result.final_loss < 0.15  # dead_relu, from the same start, ends above 0.4


def test_vanishing_sigmoid_first_layer_gradient_is_orders_below_the_last(tmp_path):
    result, s = train_run(tmp_path, "experiment=vanishing_sigmoid", "trainer.max_steps=100", NO_PICTURES)
    ratios = [_ratio(s, k) for k in range(100)]
    assert min(ratios) >= 100
    assert statistics.median(ratios) >= 1e4
    assert result.final_loss > 0.4  # the first layers barely move: it learns almost nothing


def test_deep_relu_gradient_reaches_the_first_layer_and_it_learns(tmp_path):
    result, s = train_run(tmp_path, "experiment=deep_relu", "trainer.max_steps=100", NO_PICTURES)
    ratios = [_ratio(s, k) for k in range(100)]
    assert ratios[0] < 30  # the sigmoid net of the same shape: above 10⁴
    assert statistics.median(ratios) < 30
    assert result.final_loss < 0.3  # vanishing_sigmoid after as many steps: above 0.4


@pytest.mark.slow
def test_an_experiment_is_one_command(tmp_path):
    proc = run_cli("experiment=dead_relu", "trainer.max_steps=20", NO_PICTURES, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    # a single run is named after its experiment, then its other overrides
    assert run.name.endswith("_dead_relu,monitor.pictures=,trainer.max_steps=20")  # a list without brackets
    s = read_scalars(run)
    assert s["relu/dead_fraction/act2"][0] == pytest.approx(13 / 64)
    assert s["relu/dead_fraction/act2"][19] > 0.8
    assert "grad_norm/fc1.weight" in s and "grad_norm/out.weight" in s


@pytest.mark.parametrize(
    "overrides, log_every, histogram_every, probe_every",
    [
        (["model=relu"], 1, 25, 25),  # every step; histograms and the probe 8 times in a default run
        (["model=mlp"], 1, 25, 25),  # a model config sets no trainer or monitor key
        (["model=mlp", "trainer.log_every_n_steps=3"], 3, 25, 25),  # the command line wins
        (["experiment=dead_relu"], 1, 10, 10),  # a short experiment, watched step by step
    ],
)
def test_models_and_experiments_set_their_monitoring_intervals(overrides, log_every, histogram_every, probe_every):
    cfg = compose_config(*overrides)
    assert cfg.trainer.log_every_n_steps == log_every
    assert cfg.monitor.histogram_every_n_steps == histogram_every
    assert cfg.monitor.probe_every_n_steps == probe_every
