"""The step record on a zoo of models nobody here wrote, against truth computed in this file.

Every expected number comes from hooks written here, on a float64 copy of the network as it starts:
each call of an activation module gives (z, h); the local derivative comes from autograd (not from a
formula); "dead" is "derivative 0 on every sample", "saturated" is "derivative below the threshold on
every sample", units lie along the axis named in the zoo's row. Gradients come from ``backward`` on the
copy (``clip_grad_norm_`` for clipping, one backward per micro-batch for accumulation). The zoo is a
table: every check runs over every row, and Hypothesis draws MLPs of its own (widths, depths, killed units).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import lightning as L
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from backprop_lab import models
from backprop_lab.monitors import BackpropViewMonitor, DeadReLUMonitor, GradientMonitor, PictureMonitor, StepRecorder
from backprop_lab.monitors.backprop_view import describe

from conftest import read_scalars

THRESHOLD = 1e-3  # the saturation threshold the recorder is given below
# The activation modules of the zoo, as this test knows them (not the recorder's table).
RELU_LIKE = (nn.ReLU, models.ReLU)
LEAKY = (nn.LeakyReLU, models.LeakyReLU)
SATURATING = (nn.Sigmoid, models.Sigmoid, nn.Tanh)
OTHER = (nn.GELU, nn.SiLU)
ACTIVATIONS = (*RELU_LIKE, *LEAKY, *SATURATING, *OTHER)


class Wrap(L.LightningModule):
    """A stock LightningModule around ``net``: MSE loss, plain SGD."""

    def __init__(self, net: nn.Module, lr: float):
        super().__init__()
        self.net, self.lr = net, lr

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def fit(net: nn.Module, batches: list, steps: int, lr: float = 0.0, callbacks=(), **trainer_kwargs) -> StepRecorder:
    recorder = StepRecorder(saturation_threshold=THRESHOLD)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=[recorder, *callbacks],
        log_every_n_steps=1,
        precision="64-true",
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **trainer_kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Wrap(net, lr), DataLoader(batches, batch_size=None))
    return recorder


# --- the truth, by hooks written here -------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    units: int
    dead: float  # NaN where the zoo's convention says "no dead units defined" (GELU, SiLU)
    zero: float
    saturation: float


def truth(net: nn.Module, x: torch.Tensor, unit_dims: dict[str, int]) -> list[Entry]:
    """Every call of an activation module of ``net`` on ``x`` (float64, train mode), in call order."""
    net = copy.deepcopy(net).double().train()
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: calls.append((n, m, i[0].detach(), o.detach())))
        for n, m in net.named_modules()
        if isinstance(m, ACTIVATIONS)
    ]
    with torch.no_grad():
        net(x.double())
    for h in handles:
        h.remove()
    counts = {n: sum(1 for c in calls if c[0] == n) for n, *_ in calls}
    seen: dict[str, int] = {}
    out = []
    for name, module, z, h in calls:
        k = seen.get(name, 0)
        seen[name] = k + 1
        z_leaf = z.clone().requires_grad_(True)
        with torch.enable_grad():
            (deriv,) = torch.autograd.grad(module(z_leaf).sum(), z_leaf)  # elementwise: dh/dz by autograd
        dim = unit_dims.get(name, -1) % h.dim()
        per_unit = deriv.movedim(dim, 0).reshape(h.shape[dim], -1)  # (units, samples)
        dead = (per_unit == 0).all(dim=1).double().mean().item()
        saturated = (per_unit < THRESHOLD).all(dim=1).double().mean().item()
        out.append(
            Entry(
                name=f"{name}#{k}" if counts[name] > 1 else name,
                units=h.shape[dim],
                dead=math.nan if isinstance(module, OTHER) else dead,
                zero=(h == 0).double().mean().item(),
                saturation=saturated if isinstance(module, SATURATING) else math.nan,
            )
        )
    return out


def grad_truth(net: nn.Module, micro_batches: list, clip: float | None = None) -> dict[str, tuple[float, float]]:
    """Per parameter (the number for one element, else the L2 norm): (as backprop summed it, as applied)."""
    net = copy.deepcopy(net).double().train()
    for x, y in micro_batches:
        (((net(x.double()) - y.double()) ** 2).mean() / len(micro_batches)).backward()

    def number(g: torch.Tensor) -> float:
        return g.item() if g.numel() == 1 else g.norm().item()

    raw = {n: number(p.grad) for n, p in net.named_parameters()}
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(list(net.parameters()), clip)
    return {n: (raw[n], number(p.grad)) for n, p in net.named_parameters()}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)


def check_entries(record, expected: list[Entry]) -> None:
    activations = {n: s for n, s in record.layers.items() if s.kind is not None}
    assert list(activations) == [e.name for e in expected]  # call order, one entry per call
    for e in expected:
        got = activations[e.name]
        assert got.units == e.units, e.name
        assert same(got.dead_fraction, e.dead), (e.name, got.dead_fraction, e.dead)
        assert same(got.zero_fraction, e.zero), (e.name, got.zero_fraction, e.zero)
        assert same(got.saturation, e.saturation), (e.name, got.saturation, e.saturation)


# --- the zoo ----------------------------------------------------------------------------------------------


class ReusedReLU(nn.Module):
    """fc1(4→16) → relu → fc2(16→8) → relu → out: one ReLU module called at two widths."""

    def __init__(self, widths=(4, 16, 8)):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(widths[0], widths[1]), nn.Linear(widths[1], widths[2])
        self.relu, self.out = nn.ReLU(), nn.Linear(widths[2], 1)

    def forward(self, x):
        return self.out(self.relu(self.fc2(self.relu(self.fc1(x)))))


class ResidualBlock(nn.Module):
    """A ResNet-style pair: the same ReLU module twice at equal widths, with a skip connection."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.act, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)
        with torch.no_grad():
            self.fc2.bias[:3] = -30.0  # three units of the second call dead, none of the first

    def forward(self, x):
        h = self.act(self.fc1(x))
        return self.out(self.act(self.fc2(h) + h))


class OutOfOrder(nn.Module):
    """Declared fc1, fc2, fc3, out, act, gelu; called fc1 → act → fc2 → act → fc3 → gelu → out."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.out = (
            nn.Linear(2, 32),
            nn.Linear(32, 32),
            nn.Linear(32, 16),
            nn.Linear(16, 1),
        )
        self.act, self.gelu = nn.ReLU(), nn.GELU()
        with torch.no_grad():
            self.fc1.bias[:5] = -40.0
            self.fc2.bias[:6] = -40.0

    def forward(self, x):
        return self.out(self.gelu(self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))))


def cnn() -> nn.Module:
    """Conv → BatchNorm → ReLU → Conv → ReLU → pool → Linear, three channels killed by BatchNorm's shift."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 1),
    )  # fmt: skip
    with torch.no_grad():
        net[1].bias[:3] = -100.0  # γ·x̂ + β with x̂ within a few units of 0: negative everywhere
    return net


def transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0, batch_first=True, activation=nn.ReLU())
    with torch.no_grad():
        layer.linear1.bias[:8] = -20.0  # 8 of 32 feed-forward units dead: 0.25
    return layer


def every_activation() -> nn.Module:
    """Tanh, Sigmoid, LeakyReLU, GELU, SiLU in turn; the first layers' weights large, so some units saturate."""
    net = nn.Sequential(
        nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 12), nn.Sigmoid(), nn.Linear(12, 12), nn.LeakyReLU(0.1),
        nn.Linear(12, 12), nn.GELU(), nn.Linear(12, 12), nn.SiLU(), nn.Linear(12, 1),
    )  # fmt: skip
    with torch.no_grad():
        net[0].bias[:4] = 30.0  # tanh′ ≈ 0 for these units on every sample
        net[2].bias[:5] = -40.0  # σ′ ≈ 0 for these
        net[4].bias[:6] = -40.0  # leaky units with z < 0: silent, not dead
    return net


def data(shape: tuple[int, ...], out: tuple[int, ...], seed: int = 0, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g, dtype=torch.float64),
             torch.randn(*out, generator=g, dtype=torch.float64)) for _ in range(n)]  # fmt: skip


@dataclass
class Row:
    name: str
    build: object  # () -> nn.Module
    x: tuple[int, ...]
    y: tuple[int, ...]
    unit_dims: dict[str, int] = field(default_factory=dict)  # the axis of the units, per module (default: last)
    dead: dict[str, float] = field(default_factory=dict)  # dead fractions known by construction
    dead_at_least: dict[str, float] = field(default_factory=dict)  # killed by construction (others may die too)


ZOO = [
    Row("post sigmoid", lambda: models.SigmoidNet(w1=0.5, w2=-1.0), (1, 1), (1, 1)),
    Row("post relu, ReLU′(0) = 0, z1 = 0", lambda: models.ReLUNet(w1=0.0, w2=-1.0), (1, 1), (1, 1), dead={"h": 1.0}),
    Row(
        "post relu, ReLU′(0) = 1, z1 = 0",
        lambda: models.ReLUNet(0.0, -1.0, relu_grad_at_zero=1),
        (1, 1),
        (1, 1),
        dead={"h": 0.0},
    ),  # fmt: skip
    Row("mlp", lambda: models.MLP(2, 1, hidden=[16, 16], init="negative_bias", bias_init=-0.5), (32, 2), (32, 1)),
    Row("cnn with batchnorm", cnn, (8, 3, 6, 6), (8, 1), unit_dims={"2": 1, "4": 1}, dead={"2": 3 / 8}),
    Row("transformer encoder layer", transformer, (16, 8, 16), (16, 8, 16), dead={"activation": 0.25}),
    Row("reused relu, two widths", ReusedReLU, (16, 4), (16, 1)),
    Row("reused relu, equal widths", ResidualBlock, (16, 8), (16, 1)),
    Row("declared out of call order", OutOfOrder, (64, 2), (64, 1), dead_at_least={"act#0": 5 / 32, "act#1": 6 / 32}),
    Row("tanh sigmoid leaky gelu silu", every_activation, (16, 4), (16, 1), dead={"5": 0.0}),
]


@pytest.mark.parametrize("row", ZOO, ids=[r.name for r in ZOO])
def test_the_record_is_the_truth_on_every_zoo_model(row):
    torch.manual_seed(0)
    net = row.build()
    start = copy.deepcopy(net)
    batches = data(row.x, row.y)
    recorder = fit(net, batches, steps=2, lr=0.01)
    record = recorder.history[0]
    expected = truth(start, batches[0][0], row.unit_dims)
    check_entries(record, expected)
    for name, dead in row.dead.items():  # what the construction fixes, beside what the hooks measured
        assert record.layers[name].dead_fraction == pytest.approx(dead), name
    for name, dead in row.dead_at_least.items():
        assert record.layers[name].dead_fraction >= dead, name
    for name, (backprop, applied) in grad_truth(start, [batches[0]]).items():
        assert record.params[name].grad_backprop == pytest.approx(backprop, rel=1e-9, abs=1e-12), name
        assert record.params[name].grad == pytest.approx(applied, rel=1e-9, abs=1e-12), name
    # step 1 is taken after one update: the truth on the updated copy
    updated = copy.deepcopy(start).double()
    grads = torch.autograd.grad(((updated(batches[0][0]) - batches[0][1]) ** 2).mean(), list(updated.parameters()))
    with torch.no_grad():
        for p, g in zip(updated.parameters(), grads):
            p -= 0.01 * g
    check_entries(recorder.history[1], truth(updated, batches[1][0], row.unit_dims))


def test_the_transformer_layer_dead_fraction_is_a_quarter_in_the_monitor_too():
    torch.manual_seed(0)
    monitor = DeadReLUMonitor()  # the defaults, on a stock module
    fit(transformer(), data((16, 8, 16), (16, 8, 16)), steps=2, callbacks=[monitor])
    assert monitor.last_dead_fraction == {"activation": 0.25}


def test_a_reused_activation_at_two_widths_no_longer_crashes_and_keeps_its_calls_apart():
    torch.manual_seed(0)
    monitor = DeadReLUMonitor()
    recorder = fit(ReusedReLU(), data((16, 4), (16, 1)), steps=1, callbacks=[monitor])
    assert [(n, s.units) for n, s in recorder.history[0].layers.items() if s.kind] == [("relu#0", 16), ("relu#1", 8)]
    assert set(monitor.last_dead_fraction) == {"relu#0", "relu#1"}


def test_the_view_lists_layers_in_call_order_with_each_calls_dead_fraction(tmp_path):

    torch.manual_seed(0)
    net = OutOfOrder()
    start = copy.deepcopy(net)
    batches = data((64, 2), (64, 1))
    view = BackpropViewMonitor()
    trainer = L.Trainer(max_steps=2, logger=TensorBoardLogger(str(tmp_path), name="", version=""), callbacks=[view],
                        log_every_n_steps=1, precision="64-true", accelerator="cpu", enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Wrap(net, 0.01), DataLoader(batches, batch_size=None))
    kind, layout = describe(view.recorder.net, view.recorder.history[0])
    assert [(layer["name"], layer["type"]) for layer in layout["layers"]] == [
        ("fc1", "linear"), ("act#0", "relu"), ("fc2", "linear"), ("act#1", "relu"), ("fc3", "linear"),
        ("gelu", "gelu"), ("out", "linear"),
    ]  # fmt: skip
    row = view.history.row(0)
    expected = {e.name: e.dead for e in truth(start, batches[0][0], {})}
    assert row["act#0/dead_fraction"] == pytest.approx(expected["act#0"])
    assert row["act#1/dead_fraction"] == pytest.approx(expected["act#1"])
    assert 0 <= row["act#1/dead_fraction"] <= 1


def test_under_accumulation_and_clipping_both_gradients_and_every_micro_batch_are_recorded():
    torch.manual_seed(0)
    net = models.MLP(2, 1, hidden=[8, 8], init="negative_bias", bias_init=-0.4)
    start = copy.deepcopy(net)
    micro = data((16, 2), (16, 1), n=4)  # two steps of two micro-batches each
    recorder = fit(net, micro, steps=2, lr=0.05, accumulate_grad_batches=2, gradient_clip_val=0.1)
    record = recorder.history[0]
    assert record.backward and record.batch == 32
    for name, (backprop, applied) in grad_truth(start, micro[:2], clip=0.1).items():
        assert record.params[name].grad_backprop == pytest.approx(backprop, rel=1e-9), name
        assert record.params[name].grad == pytest.approx(applied, rel=1e-9), name
    norm = math.sqrt(sum(record.params[n].grad ** 2 for n in record.params))
    assert norm == pytest.approx(0.1, rel=1e-5) and norm <= 0.1  # clipped to 0.1 (torch adds 1e-6 to the norm)
    # dead units over both micro-batches: the truth on the two batches together
    check_entries(record, truth(start, torch.cat([micro[0][0], micro[1][0]]), {}))


def test_functional_activations_are_named_in_one_warning():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.fc3(torch.sigmoid(self.fc2(nn.functional.relu(self.fc1(x)))))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recorder = StepRecorder()
        trainer = L.Trainer(max_steps=3, logger=False, callbacks=[recorder], accelerator="cpu",
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
        batches = [(x.float(), y.float()) for x, y in data((4, 2), (4, 1), n=3)]
        trainer.fit(Wrap(Functional(), 0.1), DataLoader(batches, batch_size=None))
    mine = [str(w.message) for w in caught if "activations called as functions" in str(w.message)]
    assert len(mine) == 1
    assert "torch.nn.functional.relu in Functional.forward, 1 call a pass" in mine[0]
    assert "torch.sigmoid in Functional.forward, 1 call a pass" in mine[0]
    assert recorder.functional and not any(s.kind for s in recorder.history[0].layers.values())


# --- drawn by Hypothesis: MLPs of any width and depth, with units killed on purpose -----------------------


@st.composite
def mlps(draw):
    widths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=3))
    killed = [draw(st.sets(st.integers(0, w - 1), max_size=w)) for w in widths]
    activation = draw(st.sampled_from(["relu", "leaky", "tanh"]))
    return widths, killed, activation


@settings(max_examples=12, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mlps())
def test_drawn_mlps_with_killed_units(case):
    widths, killed, activation = case
    torch.manual_seed(0)
    act = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.05), "tanh": nn.Tanh}[activation]
    layers, n_in = [], 3
    for width, dead in zip(widths, killed):
        linear = nn.Linear(n_in, width)
        with torch.no_grad():
            for unit in dead:  # z = −50 on every sample: ReLU′ = 0, tanh′ ≈ 0
                linear.weight[unit] = 0.0
                linear.bias[unit] = -50.0
        layers += [linear, act()]
        n_in = width
    net = nn.Sequential(*layers, nn.Linear(n_in, 1))
    start = copy.deepcopy(net)
    batches = data((10, 3), (10, 1), seed=len(widths))
    record = fit(net, batches, steps=1).history[0]
    expected = truth(start, batches[0][0], {})
    check_entries(record, expected)
    for e, dead in zip(expected, killed):  # the killed units at least, by construction
        if activation == "relu":
            assert e.dead >= len(dead) / e.units
        if activation == "tanh":
            assert e.saturation >= len(dead) / e.units
        if activation == "leaky":
            assert e.dead == 0.0


@pytest.mark.parametrize("row", ZOO, ids=[r.name for r in ZOO])
def test_every_monitor_with_its_defaults_drops_into_a_stock_module(tmp_path, row):
    torch.manual_seed(0)
    callbacks = [GradientMonitor(), DeadReLUMonitor(), BackpropViewMonitor(), PictureMonitor()]
    trainer = L.Trainer(max_steps=2, logger=TensorBoardLogger(str(tmp_path), name="", version=""),
                        callbacks=callbacks, log_every_n_steps=1, precision="64-true", accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        accumulate_grad_batches=2)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Wrap(row.build(), 0.01), DataLoader(data(row.x, row.y, n=4), batch_size=None))
    recorders = {id(cb.recorder) for cb in callbacks}
    assert len(recorders) == 1  # one record, shared by the four
    s = read_scalars(tmp_path)
    assert set(s[f"grad_norm/{next(iter(callbacks[0].recorder.history[0].params))}"]) == {0, 1}
    view = callbacks[2]
    if view.history is not None:  # a network with a Linear layer: every gradient of the tab is there
        for step in (0, 1):
            row_values = view.history.row(view.history.index(step))
            grads = [v for k, v in row_values.items() if k.endswith("grad_norm") or k.startswith("dL_dw")]
            assert grads and all(math.isfinite(g) for g in grads), row_values
            assert row_values["backward"] == 1.0 and row_values["batch"] == 2 * row.x[0]


def test_the_record_survives_a_checkpoint_as_it_was(tmp_path):
    import io

    torch.manual_seed(0)
    recorder = fit(ReusedReLU(), data((16, 4), (16, 1), n=3), steps=3, lr=0.05)
    buffer = io.BytesIO()
    torch.save(recorder.state_dict(), buffer)
    buffer.seek(0)
    restored = StepRecorder()
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # as Lightning resumes a run
    assert [repr(r) for r in restored.history] == [repr(r) for r in recorder.history]
    assert {n: t.tolist() for n, t in restored.last_active().items()} == {
        n: t.tolist() for n, t in recorder.last_active().items()
    }


def test_records_of_earlier_steps_join_the_history_and_its_checkpoint():
    torch.manual_seed(0)
    recorder = fit(ReusedReLU(), data((16, 4), (16, 1), n=3), steps=3, lr=0.05)
    given = StepRecorder()
    given.extend(recorder.history[:2])
    given.extend(recorder.history[2:])
    assert given.history == recorder.history  # the same objects, in order
    restored = StepRecorder()
    restored.load_state_dict(given.state_dict())  # and so in its checkpoints
    assert [repr(r) for r in restored.history] == [repr(r) for r in recorder.history]
    with pytest.raises(ValueError, match="step 0 comes after step 2"):
        given.extend(recorder.history[:1])


# --- large activations: the recorder's reused buffer (monitors/record.py, SCRATCH_FROM … SCRATCH_UP_TO) -----------


def wide_mlp(widths: tuple[int, ...], killed: int, activation=nn.ReLU) -> nn.Module:
    """2 → widths … → 1, the first ``killed`` units of each hidden layer at z = −50 on every sample (a ReLU unit
    dead, a tanh unit saturated), the next ``killed`` at z = 0 exactly (h = 0 for both kinds)."""
    layers, n_in = [], 2
    for width in widths:
        linear = nn.Linear(n_in, width)
        with torch.no_grad():
            linear.weight[: 2 * killed] = 0.0
            linear.bias[:killed] = -50.0
            linear.bias[killed : 2 * killed] = 0.0
        layers += [linear, activation()]
        n_in = width
    return nn.Sequential(*layers, nn.Linear(n_in, 1))


@pytest.mark.parametrize(
    "batch, widths, activation",
    [
        (512, (64, 128), nn.ReLU),  # 32,768 then 65,536 elements: the buffer made, then grown
        (512, (128, 64, 8), nn.ReLU),  # a large call, a smaller one (a view of the buffer), a small one (its own)
        (4100, (1024,), nn.ReLU),  # 4,198,400 elements: above the most the buffer holds
        (512, (128, 64), nn.Tanh),  # the zero count of a kind with a derivative of its own, into the same buffer
    ],
    ids=["grows", "shrinks", "above the cap", "tanh"],
)
def test_large_activations_are_counted_as_the_truth_says_step_after_step(batch, widths, activation):
    from backprop_lab.monitors.record import SCRATCH_FROM, SCRATCH_UP_TO

    sizes = [batch * w for w in widths]
    assert any(SCRATCH_FROM <= n <= SCRATCH_UP_TO for n in sizes) or any(n > SCRATCH_UP_TO for n in sizes)
    torch.manual_seed(0)
    net = wide_mlp(widths, killed=3, activation=activation)
    start = copy.deepcopy(net)
    batches = data((batch, 2), (batch, 1), n=2)
    recorder = fit(net, batches, steps=2, lr=0.0)  # η = 0: step 1 has the same weights, a new batch
    for step in (0, 1):
        expected = truth(start, batches[step][0], {})
        check_entries(recorder.history[step], expected)
        for e in expected:
            assert e.zero >= 3 / e.units  # the units at z = 0
            if activation is nn.ReLU:
                assert e.dead >= 6 / e.units and e.zero < 1
            else:
                assert e.saturation >= 3 / e.units  # (and dead: tanh′(−50) rounds to 0 in float64)


def test_the_reused_buffer_keeps_few_views_whatever_the_shapes():
    # A sequence model sees a new activation shape at every length: the buffer's views stay few, each one the shape
    # asked for and written through to the one buffer, which is as big as the largest activation.
    from backprop_lab.monitors.record import SCRATCH_FROM, SCRATCH_VIEWS

    recorder = StepRecorder()
    width, longest = SCRATCH_FROM // 64, 3 * SCRATCH_VIEWS + 64
    recorder._scratch_for(torch.empty(longest, width))
    for tokens in [*range(64, longest), *range(longest - 1, 63, -7)]:  # each shape ≥ 2¹⁵ elements, some twice
        h = torch.empty(tokens, width)
        view = recorder._scratch_for(h)
        assert view.shape == h.shape
        view.fill_(float(tokens))
        (buffer,) = [t for key, t in recorder._scratch.items() if len(key) == 2]
        assert buffer.numel() == longest * width and buffer[: h.numel()].eq(tokens).all()
        assert len(recorder._scratch) <= SCRATCH_VIEWS + 2
