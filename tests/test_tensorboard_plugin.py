"""The Backprop tab's backend in a real TensorBoard server on a loopback port, queried over HTTP.

The runs are trained here with the Python API into a temporary logdir: the post's sigmoid step (pinned
at steps 0 and 1), the post's ReLU net dying at step 4, a small MLP, and a sweep of linear runs (lr 0.03
to 10, one diverging) named by their overrides as Hydra names sweep jobs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from test_backprop_view import approx, fit, fit_post, post_cfg

from backprop_lab import models
from backprop_lab.monitors import SharpnessMonitor
from backprop_lab.replay import replay

SWEEP = "sweeps/2026-01-01_00-00-00.000000"
RUNS = {  # run (path under the logdir) -> its last step
    "post_sigmoid": 1,
    "post_sigmoid_lr100": 3,  # the post's §4 step with η = 100: z1 = −52.26 after it, σ′ ≈ 2e-23
    "post_relu": 200,
    "mlp": 20,
    f"{SWEEP}/model=linear,optim.lr=0.1": 30,
    f"{SWEEP}/model=linear,optim.lr=0.3": 128,  # η > 1/x² = 0.25: the loss is inf at step 128
    # as strings these sort 0.03, 0.1, 0.3, 10, 3: the run list orders them by value
    f"{SWEEP}/model=linear,optim.lr=10": 2,
    f"{SWEEP}/model=linear,optim.lr=3": 2,
    f"{SWEEP}/model=linear,optim.lr=0.03": 2,
}
SWEEP_BY_LR = [f"{SWEEP}/model=linear,optim.lr={lr}" for lr in ("0.03", "0.1", "0.3", "3", "10")]


def train_runs(logdir: Path) -> None:
    fit_post(logdir / "post_sigmoid", models.SigmoidNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=1)
    fit_post(logdir / "post_sigmoid_lr100", models.SigmoidNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=3, lr=100.0)
    fit_post(logdir / "post_relu", models.ReLUNet(w1=0.5, w2=-1.0), 1.0, 0.5, steps=200)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, generator=gen) * 6 - 3
    net = models.MLP(1, 1, hidden=[16, 16, 16], activation="sigmoid")
    fit(logdir / "mlp", net, [(x, torch.sin(x))], steps=20, every=1)
    fit_post(logdir / SWEEP / "model=linear,optim.lr=0.1", models.LinearNet(w=3.0), 2.0, 10.0, steps=30, lr=0.1)
    fit_post(  # with the sharpness monitor: λ_max = 2x² = 8, so η·λ_max = 2.4 > 2
        logdir / SWEEP / "model=linear,optim.lr=0.3", models.LinearNet(w=3.0), 2.0, 10.0, steps=200, lr=0.3,
        before=[SharpnessMonitor(every_n_steps=50)],
    )  # fmt: skip
    for lr in (10, 3, 0.03):
        fit_post(logdir / SWEEP / f"model=linear,optim.lr={lr}", models.LinearNet(w=3.0), 2.0, 10.0, steps=2, lr=lr)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard_server(logdir: Path, *flags: str, timeout: float = 60.0, runs: dict[str, int] | None = None):
    """``python -m tensorboard.main --logdir logdir`` on 127.0.0.1; yields the base URL once every run of
    ``runs`` ({run: last step}; default RUNS) is loaded to its last step; stops the server."""
    runs = RUNS if runs is None else runs
    port = free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", *flags]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode}: {server.stderr.read()[-2000:]}")
            try:
                listed = {r["run"]: r["last_step"] for r in get(url + "/data/plugin/backprop/runs")["runs"]}
                if listed == runs:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not load the runs within {timeout} s")
            time.sleep(0.25)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def get_error(url: str) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url, timeout=10)
    return caught.value.code, json.load(caught.value)


def graph(url: str, run: str, step: int | None = None) -> dict:
    query = urllib.parse.urlencode({"run": run, **({} if step is None else {"step": step})})
    return get(f"{url}/data/plugin/backprop/graph?{query}")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("backprop_runs")
    train_runs(root)
    return root


@pytest.fixture(scope="module")
def server(logdir):
    with tensorboard_server(logdir) as url:  # TensorBoard's default loader (the Rust data server where it runs)
        yield url


@pytest.mark.slow
def test_the_plugin_is_listed_and_serves_its_module(server):
    listing = get(server + "/data/plugins_listing")["backprop"]
    assert listing["enabled"] is True and listing["tab_name"] == "Backprop"
    assert listing["loading_mechanism"] == {"type": "IFRAME", "module_path": "/data/plugin/backprop/index.js"}
    with urllib.request.urlopen(server + "/data/plugin/backprop/index.js", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/javascript")
        assert "export async function render()" in r.read().decode()
    with urllib.request.urlopen(server + "/data/plugin/backprop/style.css", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/css")


@pytest.mark.slow
def test_runs_grouped_by_sweep_and_named_by_their_overrides(server):
    answer = get(server + "/data/plugin/backprop/runs")
    by_run = {r["run"]: r for r in answer["runs"]}
    assert set(by_run) == set(RUNS)
    swept = by_run[f"{SWEEP}/model=linear,optim.lr=0.3"]
    assert (swept["group"], swept["name"]) == (SWEEP, "model=linear,optim.lr=0.3")
    assert (swept["model"], swept["kind"]) == ("linear", "graph")
    assert by_run["post_relu"]["model"] == "relu" and by_run["post_relu"]["group"] == ""
    assert (by_run["mlp"]["kind"], by_run["mlp"]["description"]) == ("layers", "mlp 1→16→16→16→1, sigmoid")
    groups = {g["group"]: g["runs"] for g in answer["groups"]}
    assert groups[SWEEP] == SWEEP_BY_LR  # by η's value, not as text
    assert [r["run"] for r in answer["runs"]] == [
        "mlp",
        "post_relu",
        "post_sigmoid",
        "post_sigmoid_lr100",
        *SWEEP_BY_LR,
    ]


@pytest.mark.slow
def test_sigmoid_graph_at_steps_0_and_1_with_the_posts_figures(server):
    g = graph(server, "post_sigmoid", 0)
    assert (g["step"], g["steps"], g["kind"], g["model"], g["backward"]) == (0, [0, 1], "graph", "sigmoid", True)
    v = {k: q["value"] for k, q in g["values"].items()}
    assert v["loss"] == approx(1.2599149502)
    assert v["dL_dw2"] == approx(-1.3973705692)
    assert v["dL_dw1"] == approx(0.5275642193)
    assert v["loss_new"] == approx(1.0501050768)  # the new forward pass: L at step 1
    nodes = {n["id"]: n for n in g["nodes"]}
    assert [n["id"] for n in g["nodes"]] == ["x", "w1", "z1", "h", "w2", "y_hat", "L", "y"]
    assert nodes["h"]["label"] == "h = σ(z1)" and nodes["h"]["value"]["value"] == approx(0.6224593312)
    assert nodes["z1"]["grad"]["value"] == approx(0.5275642193)
    edges = {e["id"]: e for e in g["edges"]}
    assert (edges["act"]["from"], edges["act"]["to"]) == ("h", "z1")
    assert edges["act"]["local"]["value"] == approx(0.2350037122)  # σ′(z1)
    assert edges["act"]["grad_from"]["value"] == approx(2.2449186624)  # ∂L/∂h
    assert edges["act"]["dead"] is False
    assert edges["in_w"]["local"]["value"] == 1.0 and edges["in_w"]["grad"]["value"] == approx(0.5275642193)
    params = {p["name"]: p for p in g["params"]}
    assert params["w1"]["value"]["value"] == 0.5 and params["w1"]["lr"]["value"] == approx(0.1)
    assert params["w1"]["new"]["value"] == approx(0.4472435781)
    assert params["w2"]["new"]["value"] == approx(-0.8602629431)
    # the post's figures beside the values, marked where the replay marks them
    assert g["post"]["shown"] is True and (g["post"]["figures"], g["post"]["marks"]) == (11, 2)
    marked = {k for k, q in g["values"].items() if q.get("post") and q["post"]["marked"]}
    rows = replay(post_cfg("sigmoid", 1.0, 0.5, w1=0.5, w2=-1.0)).rows
    assert marked == {row.key for row in rows if row.post and row.post.marked} == {"dL_dw2", "loss_new"}
    assert g["values"]["h"]["post"]["figure"] == "0.622" and g["values"]["h"]["post"]["marked"] is False
    assert g["diagnoses"] == []

    g1 = graph(server, "post_sigmoid", 1)
    assert (g1["step"], g1["index"], g1["backward"]) == (1, 1, False)
    assert g1["values"]["loss"]["value"] == approx(1.0501050768)
    assert g1["post"]["shown"] is False  # the post prints step 0 only


@pytest.mark.slow
def test_the_final_pass_has_no_gradient_and_says_so_never_nan(server):
    g = graph(server, "post_sigmoid", 1)  # after the one update: a forward pass, no backward
    assert g["note"] == "no backward at the final pass"
    assert g["values"]["loss"]["value"] == approx(1.0501050768) and g["values"]["w1"]["value"] == approx(0.4472435781)
    for key in ("dL_dy_hat", "dL_dh", "dL_dz1", "dL_dw1", "dL_dw2", "dh_dz1", "lr_w1", "lr_w2", "dL_dL"):
        assert (g["values"][key]["value"], g["values"][key]["text"]) == (None, "—"), key
        assert g["values"][key]["why"] == "no backward at the final pass"
    params = {p["name"]: p for p in g["params"]}
    assert params["w1"]["new"]["value"] is None and params["w1"]["with_values"] is None
    assert [(c["key"], c["value"], c["with_values"]) for c in g["chain"]] == [
        ("dL_dw1", None, None),
        ("dL_dw2", None, None),
    ]
    assert "nan" not in json.dumps(g)
    # the MLP's last step: weight norms, and "—" for what needs a backward pass
    mlp = graph(server, "mlp", 20)
    assert mlp["note"] == "no backward at the final pass" and mlp["gradient_ratio"] is None
    for layer in (entry for entry in mlp["layers"] if entry["type"] == "linear"):
        assert layer["weight_norm"] > 0 and (layer["grad_norm"], layer["update_ratio"], layer["lr"]) == (
            None,
            None,
            None,
        )
    assert "nan" not in json.dumps(mlp)
    # the last step of every run: no NaN anywhere (a diverged run's loss is "inf", its gradients "—")
    for run, last in RUNS.items():
        assert "nan" not in json.dumps(graph(server, run, last)), run
    # a step with a backward pass has its numbers, and its chain rule written out with them
    g0 = graph(server, "post_sigmoid", 0)
    assert g0["note"] is None
    chain = {c["key"]: c for c in g0["chain"]}
    assert chain["dL_dw1"]["formula"] == "∂L/∂ŷ · w2 · σ′(z1) · x"
    assert chain["dL_dw1"]["with_values"] == "(-2.24492) · (-1) · 0.235004 · 1"
    assert {p["name"]: p for p in g0["params"]}["w1"]["with_values"] == "0.5 - 0.1 · 0.527564"


@pytest.mark.slow
def test_a_saturated_sigmoid_unit_is_marked_from_the_step_it_saturates(server):
    act0 = {e["id"]: e for e in graph(server, "post_sigmoid_lr100", 0)["edges"]}["act"]
    assert (act0["saturated"], act0["saturated_since"]) == (False, None)  # σ′(0.5) = 0.235
    g = graph(server, "post_sigmoid_lr100", 1)
    # w1′ = 0.5 − 100 · 0.5275642193 (the post's ∂L/∂w1) = −52.25642193, and x = 1: z1 = w1′
    assert g["values"]["z1"]["value"] == approx(-52.25642193)
    act = {e["id"]: e for e in g["edges"]}["act"]
    assert (act["saturated"], act["saturated_since"], act["threshold"], act["dead"]) == (True, 1, 1e-3, False)
    assert 0 < act["local"]["value"] < 1e-20  # σ′(−52.26) = e^−52.26 ≈ 2e-23
    (found,) = [d for d in g["diagnoses"] if d["kind"] == "saturation"]
    assert (found["step"], found["where"]) == (1, "h")
    assert {e["id"]: e for e in graph(server, "post_sigmoid_lr100", 3)["edges"]}["act"]["saturated_since"] == 1


@pytest.mark.slow
def test_series_of_the_loss_and_the_posts_weights(server):
    s = get(server + "/data/plugin/backprop/series?run=post_relu")
    assert s["steps"] == list(range(201)) and [one["key"] for one in s["series"]] == ["loss", "w1", "w2"]
    loss, w1, w2 = (one["values"] for one in s["series"])
    # §5: L = (0.5 − (−1)·0.5)² = 1 at step 0; the unit dies at step 4 with w1 = −0.0381204359, L = 0.25 for good
    assert (loss[0], w1[0], w2[0]) == (approx(1.0), 0.5, -1.0)
    assert w1[4] == approx(-0.0381204359) and w1[200] == approx(-0.0381204359) and loss[200] == approx(0.25)
    assert [one["key"] for one in get(server + "/data/plugin/backprop/series?run=mlp")["series"]] == ["loss"]
    diverged = get(server + f"/data/plugin/backprop/series?run={SWEEP}/model=linear,optim.lr=0.3")
    assert diverged["series"][0]["values"][128] is None and diverged["series"][0]["values"][0] == 16.0
    code, body = get_error(server + "/data/plugin/backprop/series?run=nope")
    assert code == 400 and body["param"] == "run"


def test_the_plugin_imports_no_torch():
    # TensorBoard imports the plugin in its server; torch there would make the first request wait seconds.
    code = "import sys, backprop_lab.tensorboard_plugin.plugin; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.slow
def test_relu_every_step_kept_and_dead_since_step_4(server):
    g3 = graph(server, "post_relu", 3)
    assert g3["steps"] == list(range(201))  # every logged step, not TensorBoard's default sample of 10
    assert {e["id"]: e for e in g3["edges"]}["act"]["dead"] is False
    g = graph(server, "post_relu", 4)
    act = {e["id"]: e for e in g["edges"]}["act"]
    assert (act["dead"], act["dead_since"], act["local"]["value"], act["grad"]["value"]) == (True, 4, 0.0, 0.0)
    assert g["dead"] == {"h": {"dead": True, "since": 4}}
    assert g["values"]["z1"]["value"] == approx(-0.0381204359)
    (dead,) = g["diagnoses"]
    assert (dead["kind"], dead["step"], dead["where"]) == ("dead_unit", 4, "h")
    assert "dead since step 4" in dead["text"] and "ReLU′(z1) = 0" in dead["text"]
    assert {e["id"]: e for e in graph(server, "post_relu", 150)["edges"]}["act"]["dead_since"] == 4
    relu0 = graph(server, "post_relu")  # no step: the first logged one, with the post's §5 figures
    assert relu0["step"] == 0 and relu0["post"]["shown"] is True and relu0["post"]["marks"] == 0
    assert relu0["values"]["dL_dw1"]["post"]["figure"] == "2"


@pytest.mark.slow
def test_mlp_layers_and_a_diverging_sweep_run(server):
    g = graph(server, "mlp", 0)
    assert g["kind"] == "layers" and g["steps"] == list(range(21))
    assert [layer["name"] for layer in g["layers"]] == ["fc1", "act1", "fc2", "act2", "fc3", "act3", "out"]
    fc1 = g["layers"][0]
    assert fc1["update_ratio"] == approx(fc1["lr"] * fc1["grad_norm"] / fc1["weight_norm"])
    assert g["gradient_ratio"] == approx(g["layers"][-1]["grad_norm"] / fc1["grad_norm"])
    diverged = graph(server, f"{SWEEP}/model=linear,optim.lr=0.3", 128)
    assert diverged["values"]["loss"]["value"] == "inf"
    (found,) = diverged["diagnoses"]
    assert (found["kind"], found["step"]) == ("divergence", 128) and "η < 1/x² = 0.25" in found["text"]
    # the run's sharpness/* scalars, as its own diagnoses read them: λ_max = 2x² = 8 from step 0
    assert "passed the edge of stability at step 0" in found["text"]
    assert "η·λ_max = 0.3 · 8 = 2.4 > 2" in found["text"]
    calm = graph(server, f"{SWEEP}/model=linear,optim.lr=0.1", 0)
    assert calm["values"]["dL_dw"]["value"] == -16.0 and calm["post"]["shown"] is True and calm["diagnoses"] == []


@pytest.mark.slow
def test_bad_parameters_are_400_naming_the_parameter(server):
    base = server + "/data/plugin/backprop/graph"
    for query, param, words in [
        ("", "run", "missing query parameter run"),
        ("?run=nope", "run", "'nope' has no backprop data"),
        ("?run=post_relu&step=four", "step", "not an integer"),
        ("?run=post_relu&step=201", "step", "not a logged step"),
    ]:
        code, body = get_error(base + query)
        assert code == 400 and body["param"] == param and words in body["error"]


@pytest.mark.slow
def test_the_python_loader_serves_the_same(logdir):
    with tensorboard_server(logdir, "--load_fast=false") as url:
        g = graph(url, "post_relu", 4)
        assert len(g["steps"]) == 201 and {e["id"]: e for e in g["edges"]}["act"]["dead_since"] == 4
