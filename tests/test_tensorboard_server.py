"""A real TensorBoard server on a loopback port reads back what a short run wrote, over its HTTP data API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import train_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tensorboard_server(logdir: Path, timeout: float = 60.0):
    """``tensorboard --logdir logdir`` on 127.0.0.1; yields its base URL once it answers; stops it."""
    port = free_port()
    server = subprocess.Popen(
        # load_fast=false: the Python reader, which loads a small logdir at once and needs no helper binary
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--load_fast=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(url + "/data/plugins_listing"), timeout, server)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def wait_for(probe, timeout: float, server: subprocess.Popen | None = None):
    """Call ``probe`` until it returns something truthy, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            pytest.fail(f"tensorboard exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            result = probe()
            if result:
                return result
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.25)
    pytest.fail(f"no answer within {timeout} s")


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def post(url: str, body: dict):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_tensorboard_serves_the_runs_scalars_histograms_images_hparams_and_layout(tmp_path):
    run_dir = tmp_path / "relu"
    train_run(
        run_dir,
        "model=mlp",
        "data=moons",
        "data.n_samples=64",
        "data.n_probe=32",
        "model.hidden=[8,8]",
        "trainer.max_steps=6",
        "monitor.histogram_every_n_steps=3",
        "monitor.picture_every_n_steps=3",
    )
    with tensorboard_server(tmp_path) as url:
        scalars = wait_for(lambda: get(url + "/data/plugin/scalars/tags").get("relu"), 60)
        for tag in [
            "train/loss",
            "grad_norm/fc1.weight",
            "update_ratio/out.weight",
            "relu/dead_fraction/act1",
            "relu/zero_fraction/act2",
            "relu/probe_dead_fraction/act1",
            "relu/dead_forever_fraction/act2",
            "hparams/final_loss",
        ]:
            assert tag in scalars, tag
        assert "hp_metric" not in scalars

        histograms = get(url + "/data/plugin/histograms/tags")["relu"]
        assert {"params/fc1.weight", "grads/fc1.weight", "grads/fc2.bias"} <= set(histograms)
        assert "grads/out.bias" in scalars  # one element: a scalar, as for the post's nets

        images = get(url + "/data/plugin/images/tags")["relu"]
        assert {"pictures/fit", "pictures/unit_activity", "pictures/grad_norm_by_layer"} <= set(images)
        # Pictures drawn at step 3 and at the end (step 6).
        series = get(url + "/data/plugin/images/images?run=relu&tag=pictures/fit")
        assert [e["step"] for e in series] == [3, 6]

        layout = get(url + "/data/plugin/custom_scalars/layout")
        titles = {c["title"] for c in layout["category"]}
        assert titles == {"loss", "the post's numbers", "gradients", "dead ReLU"}

        experiment = post(url + "/data/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {h["name"] for h in experiment["hparamInfos"]}
        # the headline first (TensorBoard orders columns by name), each shown by its own name
        assert [(h["name"], h["displayName"]) for h in experiment["hparamInfos"][:3]] == [
            ("1. model", "model"),
            ("2. optim.lr", "optim.lr"),
            ("3. status", "status"),
        ]
        assert {"model.activation", "monitor.picture_every_n_steps"} <= hparams
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"hparams/final_loss", "hparams/best_loss", "hparams/final_dead_fraction"} <= metrics
        assert "hp_metric" not in metrics

        # The dashboard's own query: which columns, which session statuses.
        columns = [
            {"hparam": "3. status", "includeInResult": True},
            {"hparam": "trainer.max_steps", "includeInResult": True},
        ]
        columns.append({"metric": {"tag": "hparams/steps", "group": ""}, "includeInResult": True})
        statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
        query = {
            "experimentName": "",
            "startIndex": 0,
            "sliceSize": 10,
            "allowedStatuses": statuses,
            "colParams": columns,
        }
        (group,) = post(url + "/data/plugin/hparams/session_groups", query)["sessionGroups"]
        assert group["hparams"] == {"3. status": "finished", "trainer.max_steps": 6}
        assert group["name"] == "relu"  # the Trial ID: the run's name less the time a CLI run's name starts with
        assert {m["name"]["tag"]: m["value"] for m in group["metricValues"]}["hparams/steps"] == 6.0
        assert group["sessions"][0]["status"] == "STATUS_SUCCESS"


@pytest.mark.slow
def test_a_resumed_run_is_served_with_each_step_once_as_the_uninterrupted_run(tmp_path):
    """A run stopped after 5 of 12 steps (its final pass, pictures and end-of-run scalars written at step 5) and
    resumed: the TensorBoard server drops what the first run wrote from step 5 on (a fresh run's file begins with a
    session start, the resumed run's is the second), so the loss, a weight and the Backprop tab's series hold each
    step once, with the uninterrupted run's values; the pictures are the resumed run's only."""
    from backprop_lab.config import validate
    from backprop_lab.train import train

    from conftest import compose_config

    common = ("model=sigmoid", "monitor.picture_every_n_steps=100")
    train_run(tmp_path / "whole", *common, "trainer.max_steps=12")
    train_run(tmp_path / "resumed", *common, "trainer.max_steps=5")
    cfg = compose_config("trainer.accelerator=cpu", *common, "trainer.max_steps=12", f"resume={tmp_path / 'resumed'}")
    validate(cfg)
    train(cfg, run_dir=tmp_path / "resumed")
    with tensorboard_server(tmp_path) as url:
        wait_for(lambda: len(get(url + "/data/plugin/scalars/tags")) == 2, 60)
        for tag in ("train/loss", "params/w1"):
            served = {
                run: get(url + f"/data/plugin/scalars/scalars?run={run}&tag={urllib.parse.quote(tag)}")
                for run in ("whole", "resumed")
            }
            steps = [step for _, step, _ in served["resumed"]]
            assert steps == sorted(set(steps)) == list(range(13)), tag  # each step once: the first run's 5 dropped
            assert [v for *_, v in served["resumed"]] == [v for *_, v in served["whole"]], tag
        series = {run: get(url + f"/data/plugin/backprop/series?run={run}") for run in ("whole", "resumed")}
        assert series["resumed"]["steps"] == series["whole"]["steps"] == list(range(13))
        assert series["resumed"]["series"] == series["whole"]["series"]
        image_tags = get(url + "/data/plugin/images/tags")["resumed"]
        assert image_tags  # the pictures drawn at each run's end
        for tag in image_tags:  # the first run's pictures at step 5 dropped
            images = get(url + f"/data/plugin/images/images?run=resumed&tag={urllib.parse.quote(tag)}")
            assert [e["step"] for e in images] == [12], tag
