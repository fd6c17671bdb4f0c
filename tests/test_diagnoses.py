"""diagnose() on histories built by hand: each diagnosis, its step, its words; and none where there is nothing."""

from __future__ import annotations

import math

import pytest

from backprop_lab.diagnoses import Diagnosis, History, diagnose, gradient_ratios, streak_start
from backprop_lab.monitors.backprop_view import GRAPH_FIELDS

from conftest import run_cli

NAN = math.nan


def hidden_history(activation: str, steps: list[dict]) -> History:
    """A post hidden-unit net's history; unnamed fields are NaN."""
    layout = {"kind": "graph", "model": activation, "activation": activation, "fields": GRAPH_FIELDS["hidden"]}
    return History.from_rows(layout, [(k, [row.get(f, NAN) for f in layout["fields"]]) for k, row in enumerate(steps)])


def relu_row(z1: float, w1: float, w1_new: float, loss: float = 0.25, dL_dw1: float = 0.0) -> dict:
    return {
        "z1": z1,
        "h": max(z1, 0.0),
        "dh_dz1": 1.0 if z1 > 0 else 0.0,
        "w1": w1,
        "w1_new": w1_new,
        "loss": loss,
        "lr_w1": 0.1,
        "dL_dw1": dL_dw1,
        "x": 1.0,
    }


def test_dead_unit_since_the_step_z1_went_below_zero():
    rows = [
        relu_row(0.3, 0.3, 0.16, 0.59, 1.4),
        relu_row(0.16, 0.16, 0.05, 0.41, 1.1),
        relu_row(0.05, 0.05, -0.04, 0.3, 0.9),
    ]
    rows += [relu_row(-0.04, -0.04, -0.04)] * 5
    found = diagnose(hidden_history("relu", rows))
    assert found == [Diagnosis(3, "dead_unit", found[0].text, "h")]
    text = found[0].text
    assert "dead since step 3" in text and "z1 = w1 · x = -0.04 ≤ 0" in text
    assert "ReLU′(z1) = 0" in text and "no gradient passes" in text.lower()
    assert "update of step 2" in text and "from 0.05 to -0.04" in text
    assert "smaller learning rate" in text and "leaky_relu" in text


def test_a_unit_alive_at_the_end_is_not_dead():
    rows = [relu_row(-0.1, -0.1, -0.1)] * 3 + [relu_row(0.2, 0.2, 0.2)]
    assert diagnose(hidden_history("relu", rows)) == []


def test_a_sigmoid_unit_never_dies():
    rows = [{"z1": -5.0, "h": 0.0067, "dh_dz1": 0.0066, "loss": 1.0}] * 4
    assert diagnose(hidden_history("sigmoid", rows)) == []


def layers_history(rows: list[dict], acts: str = "relu") -> History:
    layers = [
        {"name": "fc1", "type": "linear", "shape": [4, 1]},
        {"name": "act1", "type": acts, "units": 4},
        {"name": "fc2", "type": "linear", "shape": [4, 4]},
        {"name": "act2", "type": acts, "units": 4},
        {"name": "out", "type": "linear", "shape": [1, 4]},
    ]
    fields = ["loss"]
    for layer in layers:
        if layer["type"] == "linear":
            fields += [f"{layer['name']}/{k}" for k in ("weight_norm", "grad_norm", "lr", "update_ratio")]
        elif layer["type"] == "relu":
            fields.append(f"{layer['name']}/dead_fraction")
    layout = {"kind": "layers", "model": "mlp", "layers": layers, "fields": fields}
    return History.from_rows(layout, [(10 * k, [row.get(f, NAN) for f in fields]) for k, row in enumerate(rows)])


def norms(first: float, last: float, dead2: float = 0.0, loss: float = 0.5) -> dict:
    return {
        "loss": loss,
        "fc1/grad_norm": first,
        "fc2/grad_norm": (first * last) ** 0.5,
        "out/grad_norm": last,
        "fc1/weight_norm": 1.0,
        "fc1/lr": 0.1,
        "fc1/update_ratio": 0.1 * first,
        "act1/dead_fraction": 0.0,
        "act2/dead_fraction": dead2,
    }


def test_dead_and_dying_relu_layers():
    rows = [norms(1, 1, 0.25), norms(1, 1, 0.5), norms(1, 1, 0.75), norms(1, 1, 1.0), norms(1, 1, 1.0)]
    (dead,) = diagnose(layers_history(rows))
    assert (dead.kind, dead.step, dead.where) == ("dead_layer", 30, "act2")
    assert (
        "all the units (" in dead.text
        and " have ReLU′" in dead.text
        and "ReLU′(z) = 0 on every sample" in dead.text
        and "at step 0: 25%" in dead.text
    )
    (dying,) = diagnose(layers_history(rows[:3]))
    assert (dying.kind, dying.step, dying.where) == ("dying_layer", 10, "act2") and "75% of the units" in dying.text


def test_vanishing_gradients_beyond_a_thousandfold():
    h = layers_history([norms(1e-2, 1.0), norms(5e-4, 1.0), norms(1e-4, 1.0), norms(NAN, NAN)], acts="sigmoid")
    assert gradient_ratios(h)[:3] == pytest.approx([100.0, 2000.0, 10000.0])
    (found,) = diagnose(h)
    assert (found.kind, found.step, found.where) == ("vanishing_gradients", 10, "fc1")
    assert "10,000 times smaller than that of out (1)" in found.text and "σ′(z) ≤ 1/4" in found.text
    assert diagnose(layers_history([norms(1e-2, 1.0)] * 3, acts="sigmoid")) == []  # 100×: not beyond 10³


def linear_history(losses: list[float], x: float = 2.0, lr: float = 0.3) -> History:
    layout = {"kind": "graph", "model": "linear", "fields": GRAPH_FIELDS["linear"]}
    rows = [{"loss": v, "x": x, "lr_w": lr} for v in losses]
    return History.from_rows(layout, [(k, [r.get(f, NAN) for f in layout["fields"]]) for k, r in enumerate(rows)])


def test_divergence_names_the_step_and_the_posts_stability_bound():
    (found,) = diagnose(linear_history([16.0, 31.4, 61.5, 120.5, math.inf]))
    assert (found.kind, found.step, found.where) == ("divergence", 4, None)
    assert "the loss became inf at step 4" in found.text and "η = 0.3" in found.text
    assert "η < 1/x² = 0.25" in found.text and "η = 0.125" in found.text


def test_a_loss_growing_a_thousandfold_is_divergence_too():
    losses = [16.0 * 1.96**k for k in range(12)]  # |1 − 2ηx²| = 1.4 per step: the error grows, the loss by 1.96
    (found,) = diagnose(linear_history(losses))
    assert found.kind == "divergence" and found.step == 4  # the first loss past ten times its start
    assert "grew from 16" in found.text
    assert diagnose(linear_history([16.0, 4.0, 1.0])) == []


def test_history_storage():
    h = linear_history([3.0, 2.0, 1.0])
    assert len(h) == 3 and h.column("loss") == [3.0, 2.0, 1.0] and h.row(-1)["loss"] == 1.0
    assert h.index(2) == 2
    with pytest.raises(ValueError, match="not a logged step"):
        h.index(7)
    with pytest.raises(ValueError, match="fields"):
        h.add(3, [1.0])
    assert streak_start([False, True, True, False, True], [0, 5, 10, 15, 20], 2) == 5
    assert streak_start([False, True], [0, 5], 0) is None
    assert diagnose(History({"kind": "graph", "fields": ["loss"]})) == []


# --- saturation: the post's §6, small gradients ------------------------------------------------------


def sigmoid_row(w1: float, w1_new: float, x: float = 1.0, loss: float = 0.25, lr: float = 100.0) -> dict:
    z1 = w1 * x
    h = 1 / (1 + math.exp(-z1))
    return {"z1": z1, "h": h, "dh_dz1": h * (1 - h), "w1": w1, "w1_new": w1_new, "loss": loss, "lr_w1": lr,
            "dL_dw1": 0.5276, "x": x}  # fmt: skip


def test_a_sigmoid_unit_thrown_far_from_zero_is_saturated_from_the_next_step():
    # The lr = 100 run of the post's §4 net: w1 = 0.5 → −52.26 after one update, σ′ = 2e-23 from then on.
    rows = [sigmoid_row(0.5, -52.26, loss=1.26)] + [sigmoid_row(-52.26, -52.26)] * 4
    (found,) = diagnose(hidden_history("sigmoid", rows))
    assert (found.kind, found.step, found.where) == ("saturation", 1, "h")
    assert "saturated since step 1: z1 = w1 · x = -52.26" in found.text
    assert f"σ′(z1) = σ(z1)·(1 − σ(z1)) = {rows[1]['dh_dz1']:.4g}, below 0.001" in found.text
    assert "update of step 0 did it: w1 went from 0.5 to -52.26 (η = 100" in found.text
    assert "smaller learning rate" in found.text and "another start" in found.text and "relu" in found.text


def test_a_sigmoid_unit_near_zero_or_leaving_saturation_is_not_saturated():
    assert diagnose(hidden_history("sigmoid", [sigmoid_row(0.5, 0.45)] * 3)) == []
    # σ′(−6) = 2.5e-3 is above the threshold: small, not saturated
    assert diagnose(hidden_history("sigmoid", [sigmoid_row(-6.0, -6.0)] * 3)) == []
    # saturated at the start, out of it at the end: nothing to report at the end
    assert diagnose(hidden_history("sigmoid", [sigmoid_row(-20.0, 0.1), sigmoid_row(0.1, 0.1)])) == []


def test_a_layer_whose_units_stay_saturated():
    rows = [{**norms(1, 1), "act1/saturation": s} for s in (0.0, 0.25, 0.75, 1.0)]
    history = layers_history(rows, acts="sigmoid")
    fields = [*history.fields, "act1/saturation", "act2/saturation"]
    layout = {**history.layout, "fields": fields}
    history = History.from_rows(layout, [(10 * k, [row.get(f, NAN) for f in fields]) for k, row in enumerate(rows)])
    (found,) = [d for d in diagnose(history) if d.kind == "saturated_layer"]
    assert (found.step, found.where) == (20, "act1")
    assert "100% of its 4 units have a derivative below 0.001" in found.text and "at step 0: 0%" in found.text


@pytest.mark.slow
def test_the_cli_sweep_says_the_lr_100_sigmoid_run_is_saturated_and_the_lr_01_run_is_not(tmp_path):
    proc = run_cli("-m", "model=sigmoid", "optim.lr=0.1,100", "trainer.enable_progress_bar=false", cwd=tmp_path,
                   timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    job0, job1 = out.split("#1 : model=sigmoid optim.lr=100")
    assert "saturated" not in job0 and "run converged" in job0
    (line,) = [x for x in job1.splitlines() if x.startswith("The sigmoid unit h is saturated since step 1")]
    # one update of η = 100 from the post's start: w1 = 0.5 − 100 · 0.5276 = −52.26, σ′(−52.26) = 2.0e-23
    w1 = 0.5 - 100 * 0.5275642193
    assert f"z1 = w1 · x = {w1:.4g}" in line
    sigma = 1 / (1 + math.exp(-w1))
    printed = float(line.split("σ(z1)·(1 − σ(z1)) = ")[1].split(",")[0])
    assert printed == pytest.approx(sigma * (1 - sigma), rel=1e-3) and printed < 1e-3
    assert "the loss stays near 0.25" in line and "(η = 100, ∂L/∂w1 = 0.5276)" in line
