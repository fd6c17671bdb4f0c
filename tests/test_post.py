"""The post's networks as data (backprop_lab.post) and the run list's order, without torch or a server.

Expected texts are written out by hand from the post; the numbers filled into formulas are given here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from backprop_lab import post
from backprop_lab.tensorboard_plugin.run_order import overrides, sort_runs


def test_the_module_imports_no_torch_and_no_hydra():
    code = "import sys, backprop_lab.post; sys.exit(bool({'torch', 'hydra', 'omegaconf'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_the_hidden_networks_graph_in_the_posts_notation():
    net = post.network("sigmoid")
    assert [n.id for n in net.nodes] == ["x", "w1", "z1", "h", "w2", "y_hat", "L", "y"]
    assert net.params == ("w2", "w1")  # the post updates w2 first
    edges = {e.id: (e.frm, e.to, e.local) for e in net.backward}
    # each backward edge carries the number of its local derivative: ∂ŷ/∂w2 = h, ∂ŷ/∂h = w2, ∂z1/∂w1 = x
    assert edges == {
        "loss": ("L", "y_hat", "dL_dy_hat"),
        "out_w": ("y_hat", "w2", "h"),
        "out_h": ("y_hat", "h", "w2"),
        "act": ("h", "z1", "dh_dz1"),
        "in_w": ("z1", "w1", "x"),
    }
    assert net.q("dL_dw1").formula == "∂L/∂ŷ · w2 · σ′(z1) · x"
    assert post.network("relu").q("dL_dw1").formula == "∂L/∂ŷ · w2 · ReLU′(z1) · x"
    assert post.network("relu").q("h").formula == "max(0, z1)"
    assert post.network("linear").rows == (
        *("y_hat", "loss", "dL_dy_hat", "dy_hat_dw", "dL_dw", "w_new", "y_hat_new", "loss_new"),
    )


def test_formulas_filled_with_a_steps_numbers():
    net = post.network("sigmoid")
    step = {"dL_dy_hat": -2.2449186624, "w2": -1.0, "dh_dz1": 0.2350037122, "x": 1.0, "y": 0.5, "y_hat": -0.6224593312}
    assert post.formula(net, "dL_dw1", step) == ("∂L/∂ŷ · w2 · σ′(z1) · x", "(-2.24492) · (-1) · 0.235004 · 1")
    assert post.formula(net, "loss", step)[1] == "(0.5 - (-0.622459))²"
    assert post.formula(net, "dL_dw2", step)[1] is None  # h is not given: no half-filled formula
    decayed = post.network("linear", weight_decay=0.5)
    numbers = {"w": 3.0, "lr_w": 0.1, "dL_dw": -16.0, "weight_decay": 0.5}
    assert post.formula(decayed, "w_new", numbers) == ("w − η · (∂L/∂w + λ · w)", "3 - 0.1 · ((-16) + 0.5 · 3)")


@pytest.mark.parametrize("z1, at_zero, expected", [
    (0.5, 0, ("1, as z1 > 0", "z1 = 0.5 > 0")),
    (-0.5, 0, ("0, as z1 < 0", "z1 = -0.5 < 0")),
    (0.0, 1, ("relu_grad_at_zero, as z1 = 0", "model.relu_grad_at_zero = 1")),
])  # fmt: skip
def test_relu_prime_reads_as_a_case(z1, at_zero, expected):
    assert post.formula(post.network("relu"), "dh_dz1", {"z1": z1}, at_zero) == expected


def test_the_posts_inputs_exactly_or_to_float32():
    have = {"model.w1": 0.5, "model.w2": -1.0, "data.x": 1.0, "data.y": 0.5}
    have.update({"optim.lr": 0.1, "optim.momentum": 0.0, "optim.weight_decay": 0.0})
    assert post.not_post_inputs("sigmoid", have) is None
    stored = dict(have, **{"optim.lr": 0.10000000149011612})  # η = 0.1 as float32 stores it
    assert post.not_post_inputs("sigmoid", stored) == "optim.lr=0.10000000149011612, where the post has 0.1"
    assert post.not_post_inputs("sigmoid", stored, rel=1e-6) is None
    assert post.not_post_inputs("sigmoid", dict(have, **{"model.w1": -0.5})) == "model.w1=-0.5, where the post has 0.5"


def test_text_of_missing_and_non_finite_numbers():
    assert [post.short(v) for v in (None, float("nan"), float("inf"), 0.0, -1.3973705692)] == [
        "—",
        "nan",
        "inf",
        "0",
        "-1.39737",
    ]


# --- the run list's order ------------------------------------------------------------------------------


def test_overrides_split_at_top_level_commas():
    assert overrides("model=mlp,model.hidden=[8,8],optim.lr=0.1") == [
        ("model", "mlp"),
        ("model.hidden", "[8,8]"),
        ("optim.lr", "0.1"),
    ]
    assert overrides("relu,optim.lr=0.5") == [(None, "relu"), ("optim.lr", "0.5")]


def test_runs_sort_by_the_overrides_that_differ_numbers_by_value():
    lrs = ["0.01", "0.03", "0.1", "0.3", "1", "3", "10", "30", "100", "1e3"]
    names = [f"model=sigmoid,optim.lr={lr}" for lr in reversed(lrs)]
    assert sort_runs(names) == [f"model=sigmoid,optim.lr={lr}" for lr in lrs]
    # two keys differ: the first one that appears leads, numbers before words, a missing key last
    names = ["model=relu,optim.lr=10", "model=linear,optim.lr=3", "model=relu,optim.lr=2", "model=linear"]
    assert sort_runs(names) == [
        "model=linear,optim.lr=3",
        "model=linear",
        "model=relu,optim.lr=2",
        "model=relu,optim.lr=10",
    ]
    assert sort_runs(["post_sigmoid", "mlp", "post_relu"]) == ["mlp", "post_relu", "post_sigmoid"]
