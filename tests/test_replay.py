"""The replay of the post's step: every exact value, every mark, the ReLU cases, the formats, TensorBoard.

Expected values are written out by hand from the post's formulas (never computed by the code under
test), to 10 decimals; the replay runs in float64, so they hold to 1e-10. The marks follow the rule
"the post's figure is off by more than one unit in its last printed digit".
"""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from backprop_lab.config import ConfigError, validate
from backprop_lab.post import compare, post_figures
from backprop_lab.replay import log_replay, replay, to_json, to_markdown

from conftest import ROOT, compose_config, event_accumulator, run_cli, train_run

EXACT = dict(abs=1e-10)
REPLAY_SCRIPT = ROOT / "scripts" / "replay.py"


def values(r) -> dict[str, float]:
    return {row.key: row.value for row in r.rows}


def marked(r) -> set[str]:
    return {row.key for row in r.rows if row.post is not None and row.post.marked}


# --- §4 sigmoid -----------------------------------------------------------------------------------

SIGMOID = {
    "z1": 0.5,
    "h": 0.6224593312,
    "y_hat": -0.6224593312,
    "loss": 1.2599149502,
    "dL_dy_hat": -2.2449186624,
    "dL_dw2": -1.3973705692,  # ∂L/∂ŷ · h
    "dL_dh": 2.2449186624,  # ∂L/∂ŷ · w2
    "dh_dz1": 0.2350037122,  # σ(0.5)·(1 − σ(0.5))
    "dL_dz1": 0.5275642193,
    "dL_dw1": 0.5275642193,  # ∂L/∂ŷ · w2 · σ′(z1) · x
    "w2_new": -0.8602629431,  # −1 − 0.1·(−1.3973705692)
    "w1_new": 0.4472435781,  # 0.5 − 0.1·0.5275642193
    "z1_new": 0.4472435781,
    "h_new": 0.6099836704,  # σ(0.4472435781)
    "y_hat_new": -0.5247463476,
    "loss_new": 1.0501050768,
}


def test_sigmoid_every_exact_value_in_the_posts_order():
    r = replay(compose_config("model=sigmoid"))
    assert [row.key for row in r.rows] == list(SIGMOID)
    for key, expected in SIGMOID.items():
        assert values(r)[key] == pytest.approx(expected, **EXACT), key
    assert [row.phase for row in r.rows] == ["forward"] * 4 + ["backward"] * 6 + ["update"] * 2 + ["new forward"] * 4


def test_sigmoid_marks_where_the_post_slips():
    r = replay(compose_config("model=sigmoid"))
    assert r.post_column and r.post_figures == 11
    # −1.394 vs −1.3973705692: off by 0.0034 > 0.001; 1.052 vs 1.0501050768: off by 0.0019 > 0.001.
    assert marked(r) == {"dL_dw2", "loss_new"} and r.marks == 2
    assert r.row("dL_dw2").post.diff == pytest.approx(0.0033705692, **EXACT)
    assert r.row("loss_new").post.diff == pytest.approx(0.0018949232, **EXACT)
    # Within one unit of the last digit, so not marked: 1.259 (0.00091 off), −2.244 (0.00092),
    # 0.527 (0.00056), and −0.861 (0.00074 off −0.8602629431; correctly rounded it would be −0.860).
    assert r.row("loss").post.diff == pytest.approx(-0.0009149502, **EXACT)
    assert r.row("dL_dy_hat").post.diff == pytest.approx(0.0009186624, **EXACT)
    assert r.row("w2_new").post.diff == pytest.approx(-0.0007370569, **EXACT)
    assert r.row("w1_new").post.diff == pytest.approx(-0.0002435781, **EXACT)
    assert r.row("dL_dh").post is None and r.row("dL_dz1").post is None  # the post prints neither
    assert r.summary == (
        "2 of 11 post figures differ from the exact value by more than one unit in their last printed digit: "
        "∂L/∂w2 (§4 Backward Pass), L′ (§4 Update)"
    )


def test_sigmoid_rows_show_the_product_of_local_factors_with_values():
    r = replay(compose_config("model=sigmoid"))
    assert r.row("dL_dw1").formula == "∂L/∂ŷ · w2 · σ′(z1) · x"
    assert r.row("dL_dw1").with_values == "(-2.24492) · (-1) · 0.235004 · 1"
    assert r.row("dL_dw2").with_values == "(-2.24492) · 0.622459"
    assert r.row("dh_dz1").with_values == "0.622459 · (1 - 0.622459)"
    assert r.row("w2_new").with_values == "-1 - 0.1 · (-1.39737)"
    md = to_markdown(r)
    assert "| backward | ∂L/∂ŷ | −2 · (y − ŷ) | -2 · (0.5 - (-0.622459)) | -2.2449186624 | -2.244 | ✓ |" in md
    assert "| -1.3973705692 | -1.394 | ✗ exact -1.3974, post − exact = +0.0034 |" in md
    assert "| 1.0501050768 | 1.052 | ✗ exact 1.0501, post − exact = +0.0019 |" in md


def test_intermediate_gradients_come_from_the_hand_written_backward(monkeypatch):
    # Double what SigmoidFunction.backward returns: a replay that recomputed σ′ by formula would not
    # notice; this one shows it in σ′(z1), ∂L/∂z1 and ∂L/∂w1, and leaves ∂L/∂h (upstream of σ) alone.
    from backprop_lab import functions

    original = functions.SigmoidFunction.backward
    monkeypatch.setattr(functions.SigmoidFunction, "backward", staticmethod(lambda ctx, g: 2 * original(ctx, g)))
    v = values(replay(compose_config("model=sigmoid")))
    assert v["dL_dh"] == pytest.approx(2.2449186624, **EXACT)
    assert v["dh_dz1"] == pytest.approx(0.4700074244, **EXACT)
    assert v["dL_dz1"] == pytest.approx(1.0551284386, **EXACT)
    assert v["dL_dw1"] == pytest.approx(1.0551284386, **EXACT)


# --- §3 linear, §5 ReLU -------------------------------------------------------------------------------


def test_linear_every_exact_value_and_no_marks():
    r = replay(compose_config("model=linear"))
    expected = {
        "y_hat": 6.0,
        "loss": 16.0,
        "dL_dy_hat": -8.0,
        "dy_hat_dw": 2.0,  # x
        "dL_dw": -16.0,
        "w_new": 4.6,  # 3 − 0.1·(−16)
        "y_hat_new": 9.2,
        "loss_new": 0.64,
    }
    assert [row.key for row in r.rows] == list(expected)
    for key, value in expected.items():
        assert values(r)[key] == pytest.approx(value, **EXACT), key
    assert r.post_figures == 8 and r.marks == 0
    assert r.row("dL_dw").with_values == "(-8) · 2"
    assert (
        r.summary == "0 of 8 post figures differ from the exact value by more than one unit in their last printed digit"
    )


def test_relu_active_case_of_the_post():
    r = replay(compose_config("model=relu"))
    expected = {
        "z1": 0.5, "h": 0.5, "y_hat": -0.5, "loss": 1.0, "dL_dy_hat": -2.0, "dL_dw2": -1.0, "dL_dh": 2.0,
        "dh_dz1": 1.0, "dL_dz1": 2.0, "dL_dw1": 2.0, "w2_new": -0.9, "w1_new": 0.3,
        "z1_new": 0.3, "h_new": 0.3, "y_hat_new": -0.27, "loss_new": 0.5929,
    }  # fmt: skip
    for key, value in expected.items():
        assert values(r)[key] == pytest.approx(value, **EXACT), key
    assert r.row("dh_dz1").quantity == "ReLU′(z1)" and r.row("dh_dz1").formula == "1, as z1 > 0"
    assert r.row("dL_dw1").with_values == "(-2) · (-1) · 1 · 1"  # the post's (−2)(0.5 − (−0.5))·(−1)·1·1
    assert r.post_figures == 6 and r.marks == 0
    assert r.notes == []


def test_relu_dead_unit_passes_exactly_zero_and_says_why():
    r = replay(compose_config("model=relu", "model.w1=-0.5"))
    v = values(r)
    # z1 = −0.5: h = 0, ŷ = 0, L = 0.25, ∂L/∂ŷ = −1, ∂L/∂h = −1·(−1) = 1, but ReLU′ = 0 below it.
    assert v["z1"] == -0.5 and v["h"] == 0.0 and v["y_hat"] == 0.0 and v["loss"] == 0.25
    assert v["dL_dy_hat"] == -1.0 and v["dL_dh"] == 1.0
    assert v["dh_dz1"] == 0.0 and v["dL_dz1"] == 0.0 and v["dL_dw1"] == 0.0 and v["dL_dw2"] == 0.0
    assert v["w1_new"] == -0.5 and v["w2_new"] == -1.0 and v["loss_new"] == 0.25
    md = to_markdown(r)
    assert "| ∂L/∂z1 | ∂L/∂h · ReLU′(z1) | 1 · 0 | 0 (exactly) |" in md
    assert "| ∂L/∂w1 | ∂L/∂ŷ · w2 · ReLU′(z1) · x | (-1) · (-1) · 0 · 1 | 0 (exactly) |" in md
    # The dead unit in the diagnoses' words, the same sentence training and the Backprop tab print.
    (note,) = r.notes
    assert note.startswith(
        "The ReLU unit h is dead since step 0: z1 = w1 · x = -0.5 ≤ 0 on every sample, so h = 0 and ReLU′(z1) = 0."
    )
    assert "∂L/∂w1 = 0, so w1 stays at -0.5" in note and "the loss stays at 0.25" in note
    # Not the post's inputs: no post column, and the closing line says why.
    assert not r.post_column and r.post_figures == 0 and "| post |" not in md
    assert (
        r.summary
        == "the post's column is left out: these are not the post's inputs (model.w1=-0.5, where the post has 0.5)"
    )


@pytest.mark.parametrize("grad_at_zero", [0, 1])
def test_relu_at_exactly_zero_follows_relu_grad_at_zero(grad_at_zero):
    # w1 = 0: z1 = 0, h = 0, ŷ = 0, ∂L/∂ŷ = −1, ∂L/∂h = 1, ∂L/∂w1 = 1·ReLU′(0)·1, w1′ = −0.1·ReLU′(0).
    r = replay(compose_config("model=relu", "model.w1=0", f"model.relu_grad_at_zero={grad_at_zero}"))
    v = values(r)
    assert v["z1"] == 0.0 and v["h"] == 0.0 and v["loss"] == 0.25 and v["dL_dh"] == 1.0
    assert v["dh_dz1"] == [0.0, 1.0][grad_at_zero]
    assert v["dL_dw1"] == [0.0, 1.0][grad_at_zero]
    assert v["w1_new"] == pytest.approx([0.0, -0.1][grad_at_zero], **EXACT)
    assert v["dL_dw2"] == 0.0 and v["loss_new"] == 0.25  # h = 0 now, and h′ = 0 after the update
    assert r.row("dh_dz1").formula == "relu_grad_at_zero, as z1 = 0"
    assert r.row("dh_dz1").with_values == f"model.relu_grad_at_zero = {grad_at_zero}"
    head = (
        'z1 = w1 · x = 0 exactly, where ReLU′ is undefined (the post: "set to 0 or 1"); '
        f"model.relu_grad_at_zero={grad_at_zero} sets ReLU′(0) = {grad_at_zero}"
    )
    if grad_at_zero == 0:
        assert r.notes[0] == head and len(r.notes) == 2
        assert r.notes[1].startswith("The ReLU unit h is dead since step 0: z1 = w1 · x = 0 ≤ 0")
        assert "w1 stays at 0" in r.notes[1]
    else:
        assert r.notes == [
            head + ", so the gradient passes as if the unit were active: ∂L/∂w1 = 1",
            "the update moved z1 to z1′ = w1′ · x = -0.1: from the next step on ReLU′ = 0, the unit is dead "
            "and w1 stops moving",
        ]


# --- inputs other than the post's -----------------------------------------------------------------------


def test_weight_decay_shows_in_the_update_formula_and_drops_the_post_column():
    r = replay(compose_config("model=sigmoid", "optim.weight_decay=0.5"))
    # w2′ = −1 − 0.1·(−1.3973705692 + 0.5·(−1)); w1′ = 0.5 − 0.1·(0.5275642193 + 0.5·0.5)
    assert r.row("w2_new").value == pytest.approx(-0.8102629431, **EXACT)
    assert r.row("w1_new").value == pytest.approx(0.4222435781, **EXACT)
    assert r.row("w2_new").formula == "w2 − η · (∂L/∂w2 + λ · w2)"
    assert not r.post_column and "optim.weight_decay=0.5" in r.summary


def test_a_start_value_not_exact_in_float32_is_replayed_exactly():
    # The CLI builds the network in float64: w1 = 0.1 stays 0.1, not float32's 0.10000000149.
    r = replay(compose_config("model=relu", "model.w1=0.1", "model.w2=2"))
    assert r.row("z1").value == 0.1 and r.row("y_hat").value == 0.2
    assert r.row("loss").value == pytest.approx(0.09, **EXACT)


@pytest.mark.parametrize(
    "figure, exact_value, is_marked",
    [
        ("1.259", 1.2599149502, False),  # 0.00091 off: within one unit of 0.001
        ("-0.861", -0.8602629431, False),  # 0.00074 off
        ("-1.394", -1.3973705692, True),  # 0.0034 off
        ("1.052", 1.0501050768, True),  # 0.0019 off
        ("2", 1.0, False),  # exactly one unit off is not "more than one unit"
        ("2", 0.999, True),
        ("1.0", 1.0999, False),  # "1.0" is read to 0.1, not to 1
        ("1.0", 1.1001, True),
    ],
)
def test_one_unit_in_the_last_printed_digit(figure, exact_value, is_marked):
    assert compare(figure, exact_value)[1] is is_marked


def test_every_figure_in_the_data_file_lands_on_a_row():
    for model, entry in post_figures().items():
        r = replay(compose_config(f"model={model}"))
        assert r.post_column, model
        assert set(entry["figures"]) <= {row.key for row in r.rows}, model
        assert r.post_figures == len(entry["figures"])


# --- refusals ------------------------------------------------------------------------------------------


def test_bad_replay_format_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"replay.format='xml' is not accepted: use one of table, markdown, json"):
        validate(compose_config("replay.format=xml"))


def test_a_network_that_is_not_the_posts_is_refused():
    cfg = compose_config("model=sigmoid", "model._target_=backprop_lab.models.HiddenUnitNet")
    with pytest.raises(
        ConfigError, match=r"model._target_='backprop_lab.models.HiddenUnitNet' is not accepted by the replay"
    ):
        replay(cfg)


def test_data_without_the_posts_one_example_is_refused():
    # A data set of many samples, as another data group would give (a plain config: no schema).
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config("model=sigmoid")))
    cfg.data = {"_target_": "backprop_lab.data.SomeDataModule", "n_samples": 256}
    with pytest.raises(ConfigError, match=r"is not accepted by the replay: it needs the post's one example"):
        replay(cfg)


# --- JSON ----------------------------------------------------------------------------------------------


def test_json_document_has_the_documented_keys():
    doc = json.loads(to_json(replay(compose_config("model=sigmoid"))))
    assert list(doc) == [
        "model",
        "section",
        "dtype",
        "inputs",
        "post_column",
        "rows",
        "notes",
        "post_figures",
        "marks",
        "summary",
    ]
    assert doc["inputs"] == {
        "model.w1": 0.5, "model.w2": -1.0, "data.x": 1.0, "data.y": 0.5,
        "optim.lr": 0.1, "optim.momentum": 0.0, "optim.weight_decay": 0.0,
    }  # fmt: skip
    row = doc["rows"][5]
    assert list(row) == ["key", "phase", "quantity", "formula", "with_values", "value", "post"]
    assert list(row["post"]) == ["figure", "section", "diff", "marked"]
    assert row["key"] == "dL_dw2" and row["post"]["figure"] == "-1.394" and row["post"]["marked"] is True
    assert row["post"]["section"] == "§4 Backward Pass"


@pytest.mark.slow
def test_cli_json_for_the_sigmoid_step(tmp_path):
    proc = run_cli("model=sigmoid", "replay.format=json", cwd=tmp_path, script=REPLAY_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    got = {row["key"]: row["value"] for row in doc["rows"]}
    for key, expected in SIGMOID.items():
        assert got[key] == pytest.approx(expected, **EXACT), key
    assert {row["key"] for row in doc["rows"] if row["post"] and row["post"]["marked"]} == {"dL_dw2", "loss_new"}
    assert doc["marks"] == 2 and doc["post_figures"] == 11 and doc["model"] == "sigmoid"
    assert list(tmp_path.iterdir()) == []  # a replay writes nothing: no outputs/, no .hydra/, no log


@pytest.mark.slow
def test_cli_table_for_a_dead_relu_and_a_refused_format(tmp_path):
    proc = run_cli("model=relu", "model.w1=-0.5", cwd=tmp_path, script=REPLAY_SCRIPT, env={"COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "│ ∂L/∂w1 " in proc.stdout and "0 (exactly)" in proc.stdout
    assert "The ReLU unit h is dead since step 0: z1 = w1 · x = -0.5 ≤ 0" in proc.stdout
    assert "the post's column is left out" in proc.stdout
    bad = run_cli("model=relu", "replay.format=xml", cwd=tmp_path, script=REPLAY_SCRIPT)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "replay.format='xml' is not accepted: use one of table, markdown, json" in bad.stderr


# --- TensorBoard -----------------------------------------------------------------------------------------


def _texts(log_dir) -> dict[str, list]:
    acc = event_accumulator(log_dir)
    return {tag: acc.Tensors(tag) for tag in acc.Tags()["tensors"] if tag.endswith("/text_summary")}


def test_training_writes_the_replay_as_text_at_step_0(tmp_path):
    train_run(tmp_path, "model=sigmoid", "trainer.max_steps=1")
    (event,) = _texts(tmp_path)["replay/text_summary"]
    text = event.tensor_proto.string_val[0].decode()
    assert event.step == 0
    assert "| -1.3973705692 | -1.394 | ✗ exact -1.3974, post − exact = +0.0034 |" in text
    assert text.endswith("∂L/∂w2 (§4 Backward Pass), L′ (§4 Update)")


def test_training_without_the_replay_text(tmp_path):
    train_run(tmp_path, "model=linear", "trainer.max_steps=1", "replay.to_tensorboard=false")
    assert "replay/text_summary" not in _texts(tmp_path)
    assert "config/text_summary" in _texts(tmp_path)


def test_log_replay_skips_a_network_that_is_not_the_posts():
    import torch

    class Trainer:  # would fail the test if log_replay wrote anything
        is_global_zero = True
        loggers = property(lambda self: pytest.fail("log_replay wrote for a network that is not the post's"))

    log_replay(Trainer(), compose_config("model=sigmoid"), torch.nn.Linear(1, 1))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["table", "markdown", "json"])
def test_the_replay_into_a_pipe_that_closes_early_prints_no_traceback(tmp_path, fmt):
    import subprocess
    import sys

    line = f"{sys.executable} {REPLAY_SCRIPT} model=relu replay.format={fmt} | head -c 40"
    proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout.encode()) == 40  # bytes: "§" is two
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
