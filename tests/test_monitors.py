"""The monitors on a stock torch.nn model and on constructed activations whose statistics are known by hand.

Every value is read back from the real event files with tensorboard's reader.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backprop_lab.config import ConfigError, validate
from backprop_lab.monitors import DeadReLUMonitor, GradientMonitor
from backprop_lab.monitors.pictures import PictureMonitor
from conftest import compose_config, event_accumulator, read_scalars, train_run


class PlainModule(L.LightningModule):
    """A LightningModule with nothing of backprop-lab in it: stock layers, stock loss, stock SGD."""

    def __init__(self, seq: nn.Sequential, lr: float):
        super().__init__()
        self.seq, self.lr = seq, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.seq(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class PlainData(L.LightningDataModule):
    """Batches of 4 in order, and a probe set for the monitors (what backprop-lab's data modules have)."""

    def __init__(self, x, y, probe_x=None):
        super().__init__()
        self.x, self.y = x, y
        if probe_x is not None:
            self.probe_x, self.probe_y = probe_x, torch.zeros(len(probe_x), 1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=4, shuffle=False)


def fit(tmp_path, module, data, callbacks, steps, log_every=1):
    trainer = L.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(str(tmp_path), name="", version="", default_hp_metric=False),
        callbacks=callbacks,
        log_every_n_steps=log_every,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=data)
    return trainer


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


# Hand-built activations. Layer "0" is the identity (W = I, b = 0) and lr = 0, so the first ReLU ("1")
# sees each batch as it is; layer "2" is −I, so the second ReLU ("3") sees −ReLU(x) ≤ 0: all dead.
# Columns are units; rows samples. Unit 0 is active only at step 1, unit 1 dead at step 1 and
# revived at step 2, unit 2 never active, unit 3 dead from step 2 on.
BATCHES = [
    [[0, 1, -1, 1], [0, -1, -1, 1], [0, 2, -1, 1], [0, -2, -1, 1]],  # step 0
    [[1, -1, -1, 1], [0, -1, -1, 1], [0, -1, -1, 1], [0, -1, -1, 1]],  # step 1
    [[0, 3, -1, -1], [0, 0, -1, -1], [0, 0, -1, -1], [0, 0, -1, -1]],  # step 2
]
PROBE = [[1, 1, -1, 0.5], [0, 1, -1, 0]]  # units 0, 1, 3 active on some probe sample; unit 2 on none


def _constructed(tmp_path, log_every: int):
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        seq[0].weight.copy_(torch.eye(4)), seq[0].bias.zero_()
        seq[2].weight.copy_(-torch.eye(4)), seq[2].bias.zero_()
    x = torch.tensor(BATCHES, dtype=torch.float32).reshape(12, 4)
    data = PlainData(x, torch.ones(12, 1), probe_x=torch.tensor(PROBE))
    monitor = DeadReLUMonitor(root="seq", probe_every_n_steps=1)
    fit(tmp_path, PlainModule(seq, lr=0.0), data, [monitor], steps=3, log_every=log_every)
    return read_scalars(tmp_path), monitor


def test_dead_and_zero_fractions_are_exact_on_constructed_batches(tmp_path):
    s, monitor = _constructed(tmp_path, log_every=1)
    # Dead units per step: {0, 2}, {1, 2}, {0, 2, 3} of 4.
    assert s["relu/dead_fraction/1"] == {0: 0.5, 1: 0.5, 2: 0.75}
    # Zeros per step: 4+2+4+0, 3+4+4+0, 4+3+4+4 of 16 activations.
    assert s["relu/zero_fraction/1"] == {0: 10 / 16, 1: 11 / 16, 2: 15 / 16}
    assert s["relu/dead_fraction/3"] == {0: 1.0, 1: 1.0, 2: 1.0}
    assert s["relu/zero_fraction/3"] == {0: 1.0, 1: 1.0, 2: 1.0}
    # The probe pass (every step and at the end, step 3) sees only unit 2 dead, and its activations
    # never reach the batch statistics above.
    assert s["relu/probe_dead_fraction/1"] == {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}
    assert s["relu/probe_dead_fraction/3"] == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    # Last active step per unit: 1, 2, never, 1. Dead from step s on: s = 0, 1: unit 2; s = 2: units 0, 2, 3.
    assert s["relu/dead_forever_fraction/1"] == {0: 0.25, 1: 0.25, 2: 0.75}
    assert s["relu/dead_forever_fraction/3"] == {0: 1.0, 1: 1.0, 2: 1.0}
    assert monitor.dead_since == {"1": None, "3": 0}
    # Probe activity per unit: active on 1/2, 2/2, 0/2, 1/2 of the probe samples.
    assert monitor.activity_steps == [0, 1, 2, 3]
    assert monitor.activity["1"][0].tolist() == [0.5, 1.0, 0.0, 0.5]


def test_dead_forever_counts_every_training_step_not_only_logged_ones(tmp_path):
    # Scalars every 2 steps as Lightning counts: at step 1 only. Unit 1 revives at step 2, which is
    # not logged but still counts: from step 1 on only unit 2 is dead forever (not units 1 and 2).
    s, _ = _constructed(tmp_path, log_every=2)
    assert s["relu/dead_fraction/1"] == {1: 0.5}
    assert s["relu/dead_forever_fraction/1"] == {1: 0.25}


def test_leaky_relu_units_are_never_dead(tmp_path):
    seq = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1), nn.Linear(4, 1))
    with torch.no_grad():
        seq[0].weight.copy_(-torch.eye(4)), seq[0].bias.fill_(-1.0)  # z < 0 on every sample
    data = PlainData(torch.rand(8, 4), torch.ones(8, 1), probe_x=torch.rand(3, 4))
    fit(tmp_path, PlainModule(seq, lr=0.0), data, [DeadReLUMonitor(root="seq", probe_every_n_steps=1)], steps=2)
    s = read_scalars(tmp_path)
    assert s["relu/dead_fraction/1"] == {0: 0.0, 1: 0.0}
    assert s["relu/probe_dead_fraction/1"] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert s["relu/dead_forever_fraction/1"] == {0: 0.0, 1: 0.0}
    assert s["relu/zero_fraction/1"] == {0: 0.0, 1: 0.0}


def test_update_ratio_of_the_posts_linear_net(tmp_path):
    # w0 = 3, g0 = −2(10 − 6)·2 = −16: ‖η·g‖/‖w‖ = 1.6/3. w1 = 4.6, g1 = −2(10 − 9.2)·2 = −3.2: 0.32/4.6.
    _, s = train_run(tmp_path, "model=linear", "trainer.max_steps=2", "monitor.pictures=[]")
    assert s["update_ratio/w"][0] == pytest.approx(1.6 / 3, rel=1e-6)
    assert s["update_ratio/w"][1] == pytest.approx(0.32 / 4.6, rel=1e-5)


def test_update_ratio_is_not_logged_while_the_weight_is_zero(tmp_path):
    # w1 = 0: ‖w1‖ = 0, no ratio at step 0; w2 = −2 has ∂L/∂w2 = 0 (h = 0) so its ratio is 0.
    _, s = train_run(tmp_path, "model=relu", "model.w1=0", "model.w2=-2", "trainer.max_steps=1", "monitor.pictures=[]")
    assert 0 not in s.get("update_ratio/w1", {})
    assert s["update_ratio/w2"][0] == 0.0


def test_post_relu_run_dead_forever_from_the_step_it_died(tmp_path):
    # The unit dies at step 4 (tests/test_post_numbers.py) and never comes back.
    _, s = train_run(tmp_path, "model=relu", "trainer.max_steps=8", "monitor.pictures=[]")
    assert [s["relu/dead_forever_fraction/h"][k] for k in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert s["relu/probe_dead_fraction/h"] == {0: 0.0, 8: 1.0}  # step 0 and the end


BAD_MONITOR = [
    ("monitor.picture_every_n_steps=0", "monitor.picture_every_n_steps=0 is not accepted: use an integer >= 1"),
    ("monitor.histogram_every_n_steps=0", "monitor.histogram_every_n_steps=0 is not accepted: use an integer >= 1"),
    ("monitor.pictures=[fit,surface]", "monitor.pictures=['fit', 'surface'] is not accepted: use a list of loss_surface"),
]


@pytest.mark.parametrize("override, message", BAD_MONITOR)
def test_bad_monitor_values_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match="unknown: surface" if "surface" in override else "integer") as error:
        validate(compose_config(override))
    assert message in str(error.value)


def test_picture_monitor_refuses_an_unknown_picture():
    with pytest.raises(ValueError, match="unknown pictures \\['surface'\\]"):
        PictureMonitor(pictures=["surface"])
