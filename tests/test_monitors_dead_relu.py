"""backprop_lab.monitors.dead_relu: dead and zero fractions on hand-made activations whose statistics are known.

Every value is read back from the real event files with tensorboard's reader.
"""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from torch import nn

from backprop_lab import models
from backprop_lab.module import BackpropModule
from backprop_lab.monitors import DeadReLUMonitor
from backprop_lab.monitors.dead_relu import statistics
from backprop_lab.monitors.record import local_derivative

from conftest import PlainData, PlainModule, fit, read_scalars, train_run

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


def _constructed(tmp_path, log_every: int, root: str | None = "seq"):
    seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        seq[0].weight.copy_(torch.eye(4)), seq[0].bias.zero_()
        seq[2].weight.copy_(-torch.eye(4)), seq[2].bias.zero_()
    x = torch.tensor(BATCHES, dtype=torch.float32).reshape(12, 4)
    data = PlainData(x, torch.ones(12, 1), probe_x=torch.tensor(PROBE))
    monitor = DeadReLUMonitor(root=root, probe_every_n_steps=1)
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
    assert monitor.recorder.activity_steps == [0, 1, 2, 3]
    assert monitor.recorder.activity["1"][0].tolist() == [0.5, 1.0, 0.0, 0.5]


def test_dead_forever_counts_every_training_step_not_only_logged_ones(tmp_path):
    # Scalars every 2 steps as Lightning counts: at step 1 only. Unit 1 revives at step 2, which is
    # not logged but still counts: from step 1 on only unit 2 is dead forever (not units 1 and 2).
    s, _ = _constructed(tmp_path, log_every=2)
    assert s["relu/dead_fraction/1"] == {1: 0.5}
    assert s["relu/dead_forever_fraction/1"] == {1: 0.25}


def test_without_root_the_monitor_watches_the_one_network_child_of_a_module(tmp_path):
    # PlainModule defines no forward; its one child `seq` holds every parameter: the default root, so
    # names and numbers are those of root="seq", and the probe set goes through `seq`.
    s, monitor = _constructed(tmp_path, log_every=1, root=None)
    assert s["relu/probe_dead_fraction/1"] == {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}
    assert s["relu/probe_dead_fraction/3"] == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert s["relu/dead_fraction/1"] == {0: 0.5, 1: 0.5, 2: 0.75}
    assert monitor.recorder.activity["1"][0].tolist() == [0.5, 1.0, 0.0, 0.5]


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


def test_a_leaky_unit_is_never_dead():
    # unit 0 is ≤ 0 on both samples, unit 1 is positive once; one activation of four is exactly 0.
    h = torch.tensor([[-0.01, 0.5], [-0.02, 0.0]])
    assert statistics(h) == (0.5, 0.25)
    assert statistics(h, negative_slope=0.01) == (0.0, 0.25)


# --- accumulated batches: one step is every micro-batch of it ----------------------------------------

# An MLP whose fc1 is the identity (lr = 0): act1 sees each micro-batch as it is. Two micro-batches of 4
# per update. Step 0: unit 0 is active only in the first micro-batch, unit 1 only in the second, units
# 2 and 3 in neither. Step 1: nothing active in the first, unit 3 only in the second.
MICRO_BATCHES = [
    [[1, -1, -1, -1], [0, -1, -1, -1], [2, -1, -1, -1], [0, -1, -1, -1]],  # step 0, micro-batch 1
    [[-1, 1, -1, -1], [-1, 3, -1, -1], [-1, 0, -1, -1], [-1, 0, -1, -1]],  # step 0, micro-batch 2
    [[-1, -1, -1, -1], [0, 0, 0, 0], [-1, -1, -1, -1], [-1, -1, -1, -1]],  # step 1, micro-batch 1
    [[-1, -1, -1, 2], [-1, -1, -1, -1], [-1, -1, -1, -1], [-1, -1, -1, -1]],  # step 1, micro-batch 2
]


def test_with_accumulated_batches_a_step_covers_every_micro_batch(tmp_path):
    net = models.MLP(in_features=4, out_features=1, hidden=[4], activation="relu", negative_slope=0.01,
                     init="default", bias_init=-1.0, relu_grad_at_zero=0)  # fmt: skip
    with torch.no_grad():
        net.fc1.weight.copy_(torch.eye(4)), net.fc1.bias.zero_()
    x = torch.tensor(MICRO_BATCHES, dtype=torch.float32).reshape(16, 4)
    module = BackpropModule(net, optimizer=partial(torch.optim.SGD, lr=0.0), loss_fn=nn.functional.mse_loss)
    monitor = DeadReLUMonitor(root="net", probe_every_n_steps=100)
    fit(tmp_path, module, PlainData(x, torch.ones(16, 1)), [monitor], steps=2, accumulate_grad_batches=2)
    s = read_scalars(tmp_path)
    # Step 0: units 2, 3 dead on both micro-batches (either one alone would show 3 of 4 dead).
    # Step 1: units 0, 1, 2 dead. Zeros: 14 + 14 of 32, then 16 + 15 of 32.
    assert s["relu/dead_fraction/act1"] == {0: 0.5, 1: 0.75}
    assert s["relu/zero_fraction/act1"] == {0: 28 / 32, 1: 31 / 32}
    # Last active step per unit: 0, 0, never, 1. Dead from step 1 on: units 0, 1, 2.
    assert s["relu/dead_forever_fraction/act1"] == {0: 0.25, 1: 0.75}
    assert monitor.dead_since == {"act1": None}


# --- what the monitor cannot see --------------------------------------------------------------------


class FunctionalReLUNet(nn.Module):
    """Two nn.Linear layers with the ReLU between them called as a function: no module for a hook."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 4), nn.Linear(4, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("root", ["seq", None])
def test_a_relu_called_as_a_function_is_reported_once_naming_the_module(tmp_path, root):
    torch.manual_seed(0)
    data = PlainData(torch.randn(8, 2), torch.randn(8, 1), probe_x=torch.randn(3, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning recorded, not once per location
        fit(tmp_path, PlainModule(FunctionalReLUNet(), lr=0.1), data, [DeadReLUMonitor(root=root, probe_every_n_steps=1)],
            steps=4)  # fmt: skip
    mine = [str(w.message) for w in caught if "activations called as functions" in str(w.message)]
    assert len(mine) == 1  # one warning, naming the function and the module that calls it
    assert mine[0].startswith("StepRecorder: activations called as functions in PlainModule have no module to hook")
    assert "torch.relu in FunctionalReLUNet.forward, 1 call a pass" in mine[0]
    assert not any(tag.startswith("relu/") for tag in read_scalars(tmp_path))  # nothing to count, no crash


# --- the post's ReLU run --------------------------------------------------------------------------------


def test_post_relu_run_dead_forever_from_the_step_it_died(tmp_path):
    # The unit dies at step 4 (test_train.py) and never comes back.
    _, s = train_run(tmp_path, "model=relu", "trainer.max_steps=8", "monitor.pictures=[]")
    assert [s["relu/dead_forever_fraction/h"][k] for k in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    # step 0, right after the update of the step the unit died at (an event: the probe then sees the
    # parameters before step 5) and the end
    assert s["relu/probe_dead_fraction/h"] == {0: 0.0, 5: 1.0, 8: 1.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 5, 40_000])  # one value, a loop's tail, vectorised chunks
def test_relu_prime_is_one_exactly_where_the_output_is_positive(dtype, n):
    # ReLU′ = 1[h > 0] by its definition, whatever h holds: −0, NaN, ±inf, denormals and negatives count as 0.
    special = [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-45, -1e-45, 2.5, -2.5]
    h = torch.tensor(special * n, dtype=dtype)
    truth = [1.0 if v > 0 else 0.0 for v in h.tolist()]  # Python's own comparison, value by value
    prime = local_derivative("relu", None, h)
    assert prime.dtype == dtype and prime.tolist() == truth
    assert not torch.signbit(prime).any()  # +0, never −0: sums and fractions of it print as 0
    assert local_derivative("leaky_relu", None, h, slope=0.0).tolist() == truth


@pytest.mark.parametrize("kind, slope", [("sigmoid", 0.0), ("tanh", 0.0), ("leaky_relu", 0.01), ("relu", 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_probes_passing_fraction_counts_every_nonzero_derivative(kind, slope, dtype):
    # Per unit, the fraction of samples whose local derivative is not 0, NaN and ±inf counting as not 0 (a
    # diverged unit passes something): checked against Python's own comparison, value by value.
    from backprop_lab.monitors.record import passing_fraction

    special = [0.0, -0.0, 1.0, -1.0, 0.5, float("nan"), float("inf"), -float("inf"), 1e-30, 3.0]
    h = torch.tensor(special, dtype=dtype).reshape(5, 2)
    prime = local_derivative(kind, None, h, slope=slope)
    per_sample = [[0.0 if v == 0 else 1.0 for v in row] for row in prime.tolist()]  # NaN == 0 is False
    truth = [sum(col) / len(col) for col in zip(*per_sample)]
    assert passing_fraction(kind, None, h, 0, slope, [0]).tolist() == pytest.approx(truth, rel=1e-6)  # a float32 mean
