"""Batched sweeps (hydra/launcher=batched): the pieces checked against independent references, and whole sweeps
against the basic launcher's runs of the same jobs (the reference: each job trained alone).

Reference numbers: the post's sigmoid net (x = 1, y = 0.5, w1 = 0.5, w2 = −1) has L = (w2·σ(w1·x) − y)²,
∂L/∂w2 = 2(ŷ − y)·h and ∂L/∂w1 = 2(ŷ − y)·w2·h(1 − h)·x, computed below in float64 by hand. The linear net
(w = 3, x = 2, y = 10) is stable iff η < 1/x² = 0.25: η = 0.26 and above diverge.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from omegaconf import OmegaConf

from backprop_lab import functions as F
from backprop_lab.batched.events import masked_crc32c_rows
from backprop_lab.batched.functions import stacked_linear, stacked_mse_loss
from backprop_lab.batched.program import StackedSGD
from backprop_lab.config import validate

from conftest import as_resumed, compose_config, event_accumulator, read_scalars, run_cli

QUIET = "trainer.enable_progress_bar=false"


# --- the parts -------------------------------------------------------------------------------------------


def test_record_checksums_equal_tensorboards_own():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    rng = np.random.default_rng(0)
    for length in (0, 1, 7, 8, 64, 207):
        rows = rng.integers(0, 256, size=(5, length), dtype=np.uint8)
        assert masked_crc32c_rows(rows).tolist() == [masked_crc32c(row.tobytes()) for row in rows]


def test_scalar_events_written_out_are_the_bytes_of_tensorboards_own_messages():
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from backprop_lab.batched.events import scalars_event

    values = [0.0, -0.0, 1.0, -2.5, 1e-45, 1e-46, 3.5e38, 1e39, -1e300, math.inf, -math.inf, math.nan, np.float64(0.1)]
    for step in (0, 1, 127, 128, 300, 2**40):
        for start in range(0, len(values), 3):
            metrics = {f"params/w{i}": v for i, v in enumerate(values[start : start + 3])} | {"a" * 200: 1.5}
            summary = Summary(value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in metrics.items()])
            want = Event(wall_time=1796420093.25, step=step, summary=summary).SerializeToString()
            assert scalars_event(1796420093.25, step, metrics) == want, (step, metrics)


@pytest.mark.parametrize("step", [0, 1, 127, 128, 100_000])
def test_scalar_columns_write_each_copys_event_as_protobuf_does(step):
    """The relu/* events of many copies at once (one event's bytes, each copy's float32 values written in) are
    the bytes of TensorBoard's own Event message for each copy: NaN, ±inf, beyond float32, any step."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    from backprop_lab.batched.step_record import ScalarColumns

    tags = ["relu/dead_fraction/h", "relu/zero_fraction/h"]
    values = np.array([[0.0, 1.0], [math.nan, -2.5], [math.inf, 1e39], [-math.inf, 0.1]])
    which = np.array([3, 0, 7, 2])
    events = ScalarColumns(tags).events(step, which, values)
    assert list(events) == which.tolist()
    for k, row in zip(which.tolist(), values):
        got = Event.FromString(events[k])
        assert got.step == step and [v.tag for v in got.summary.value] == tags
        want = Event(
            wall_time=got.wall_time,
            step=step,
            summary=Summary(value=[Summary.Value(tag=t, simple_value=float(v)) for t, v in zip(tags, row)]),
        )
        assert events[k] == want.SerializeToString()


def _post_sigmoid_grads(w1: np.ndarray, w2: np.ndarray, x=1.0, y=0.5):
    """(L, ∂L/∂w1, ∂L/∂w2) of the post's sigmoid net, by hand, in float64."""
    h = 1 / (1 + np.exp(-w1 * x))
    y_hat = w2 * h
    d = 2 * (y_hat - y)
    return (y_hat - y) ** 2, d * w2 * h * (1 - h) * x, d * h


def _sigmoid_sweep_is_chaotic(lr: float, steps: int = 200, w1: float = 0.5, w2: float = -1.0) -> bool:
    """Whether plain gradient descent on the post's sigmoid net at ``lr`` is chaotic over ``steps`` steps: a start
    moved by one part in 10¹² (a rounding's order) ends more than 10⁻⁶ away, relatively, somewhere on the way.
    By hand, in float64: the test's own judgment of which copies no rounding-exact comparison can hold."""
    w = np.array([[w1, w2], [w1 * (1 + 1e-12), w2]])
    for _ in range(steps):
        _, g1, g2 = _post_sigmoid_grads(w[:, 0], w[:, 1])
        w = w - lr * np.stack([g1, g2], axis=1)
        if not np.all(np.isfinite(w)) or np.abs(w[0] - w[1]).max() > 1e-6 * max(np.abs(w[0]).max(), 1e-300):
            return True
    return False


def test_vmap_of_the_functions_then_backward_when_x_needs_no_gradient():
    # Issue 18: LinearFunction saved None for backward where save_for_forward saw a batched W, and backward
    # under the generated vmap rule failed (_add_batch_dim(None, ...)).
    w1 = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=torch.float64).reshape(4, 1, 1).requires_grad_()
    w2 = torch.tensor([-1.0, 0.3, 1.5, -2.0], dtype=torch.float64).reshape(4, 1, 1).requires_grad_()
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 0.5, dtype=torch.float64)
    assert not x.requires_grad

    def loss(w1, w2):
        return F.mse_loss(F.linear(F.sigmoid(F.linear(x, w1)), w2), y)

    losses = torch.func.vmap(loss)(w1, w2)
    losses.sum().backward()
    L, g1, g2 = _post_sigmoid_grads(w1.detach().numpy().ravel(), w2.detach().numpy().ravel())
    np.testing.assert_allclose(losses.detach().numpy(), L, rtol=1e-12)
    np.testing.assert_allclose(w1.grad.numpy().ravel(), g1, rtol=1e-12)
    np.testing.assert_allclose(w2.grad.numpy().ravel(), g2, rtol=1e-12)


def test_stacked_forms_give_each_copy_the_gradient_of_its_own_loss():
    w1 = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64).reshape(3, 1, 1).requires_grad_()
    w2 = torch.tensor([-1.0, 0.3, 1.5], dtype=torch.float64).reshape(3, 1, 1).requires_grad_()
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.full((1, 1), 0.5, dtype=torch.float64)
    losses = stacked_mse_loss(stacked_linear(F.sigmoid(stacked_linear(x, w1)), w2), y)
    losses.sum().backward()
    L, g1, g2 = _post_sigmoid_grads(w1.detach().numpy().ravel(), w2.detach().numpy().ravel())
    np.testing.assert_allclose(losses.detach().numpy(), L, rtol=1e-12)
    np.testing.assert_allclose(w1.grad.numpy().ravel(), g1, rtol=1e-12)
    np.testing.assert_allclose(w2.grad.numpy().ravel(), g2, rtol=1e-12)


def test_stacked_forms_pass_gradcheck_with_batches_and_widths():
    d = dict(dtype=torch.float64, requires_grad=True)
    x, w = torch.randn(1, 5, 3, **d), torch.randn(4, 2, 3, **d)  # x shared by 4 copies
    assert torch.autograd.gradcheck(stacked_linear, (x, w))
    y_hat, y = torch.randn(4, 5, 2, **d), torch.randn(5, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: stacked_mse_loss(a, y), (y_hat,))


def test_stacked_sgd_is_torch_sgd_per_copy_bit_for_bit():
    """Each copy's η, momentum and weight decay as K separate torch.optim.SGD runs; frozen copies stay put."""
    gen = torch.Generator().manual_seed(3)
    lrs, momenta, decays = [0.1, 1.0, 0.003, 2.5], [0.0, 0.9, 0.5, 0.0], [0.0, 0.01, 0.0, 0.2]
    start = torch.randn(4, 1, 1, generator=gen)
    grads = [torch.randn(4, 1, 1, generator=gen) * 3 for _ in range(6)]
    stacked = torch.nn.Parameter(start.clone())
    opt = StackedSGD([stacked], torch.tensor(lrs, dtype=torch.float64), torch.tensor(momenta), torch.tensor(decays))
    for step, g in enumerate(grads):
        stacked.grad = g.clone()
        opt.active = torch.tensor([True, True, step < 3, True])  # copy 2 frozen from step 3 on
        opt.step()
    for k in range(4):
        alone = torch.nn.Parameter(start[k].clone())
        ref = torch.optim.SGD([alone], lr=lrs[k], momentum=momenta[k], weight_decay=decays[k])
        for g in grads[: 3 if k == 2 else None]:
            alone.grad = g[k].clone()
            ref.step()
        assert torch.equal(stacked.detach()[k], alone.detach()), k


def _hydra_configs(*overrides_per_job):
    """The master config of a batched multirun and the Hydra config loader (as a sweep sees them)."""
    import backprop_lab.cli  # noqa: F401 — registers the schemas and resolvers

    # Hydra scans its plugins once a process: where an earlier test has made it scan, the launcher's
    # config is stored by importing its module (the command makes it discoverable before any scan).
    import hydra_plugins.backprop_lab_batched.batched_launcher  # noqa: F401

    GlobalHydra.instance().clear()
    initialize_config_module("backprop_lab.configs", version_base="1.3")
    master = compose("train", overrides=["hydra/launcher=batched"], return_hydra_config=True)
    return master, GlobalHydra.instance().config_loader()


def test_derived_job_configs_equal_what_hydra_composes():
    from backprop_lab.batched.groups import JobConfigs, derive_config, group_overrides

    jobs = [
        ["model=sigmoid", "optim.lr=0.001", "seed=1"],
        ["model=sigmoid", "optim.lr=1", "seed=2"],  # an int where the schema wants a float
        ["model=sigmoid", "optim.lr=100", "seed=3", "model.w1=-2.5"],  # another key: its own group
        ["model=sigmoid", "optim.lr=0.5", "seed=7"],
        ["model=linear", "optim.lr=0.5", "seed=7"],
    ]
    try:
        master, loader = _hydra_configs()
        assert group_overrides(loader, jobs) == [[0, 1, 3], [2], [4]]
        first = loader.load_sweep_config(master, jobs[0])
        for i in (1, 3):
            derived = derive_config(first, master, jobs[i], loader, i)
            composed = loader.load_sweep_config(master, jobs[i])
            composed.hydra.job.id = composed.hydra.job.num = i
            assert OmegaConf.to_container(derived, resolve=False) == OmegaConf.to_container(composed, resolve=False)
            assert derived.hydra.sweep.subdir == composed.hydra.sweep.subdir  # the job's directory name
            assert derived.optim.lr == float(jobs[i][1].split("=")[1]) and isinstance(derived.optim.lr, float)
        job_config = JobConfigs(master, loader)  # what the launcher and the check before the sweep use
        for i, job in enumerate(jobs):
            composed = loader.load_sweep_config(master, job)
            composed.hydra.job.id = composed.hydra.job.num = i
            got = OmegaConf.to_container(job_config(job, i), resolve=False)
            assert got == OmegaConf.to_container(composed, resolve=False), i
        assert len(job_config.firsts) == 3  # one composition per group
    finally:
        GlobalHydra.instance().clear()


def _as_run_job(config, output_dir: str):
    """A job's (config, Hydra config) as Hydra's run_job holds them: output_dir set, HydraConfig's copy."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = output_dir
    HydraConfig.instance().set_config(config)
    task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
    return task, HydraConfig.instance().cfg


def test_a_group_config_set_to_each_job_and_its_record_files_are_what_hydra_composes_and_writes(tmp_path):
    """GroupConfig set to each job in turn is Hydra's composition of that job, and RecordTemplate writes its
    .hydra files (config.yaml, hydra.yaml, overrides.yaml) byte for byte as run_job's OmegaConf.to_yaml does."""
    from hydra.core.hydra_config import HydraConfig

    from backprop_lab.batched.groups import GroupConfig, group_overrides
    from backprop_lab.batched.records import RecordTemplate, job_yaml

    lrs = ["0.001", "1", "1e-05", "100", "2.5e+3", "0.3"]  # ints and exponents where the schema wants floats
    jobs = [["model=sigmoid", f"optim.lr={lr}", f"seed={i}", f"model.w1={-i / 4}"] for i, lr in enumerate(lrs)]
    try:
        master, loader = _hydra_configs()
        assert group_overrides(loader, jobs) == [list(range(len(jobs)))]
        group = GroupConfig(loader.load_sweep_config(master, jobs[0]), loader)
        values, mine, tasks = [], [], []
        with group.as_hydra_config() as view:
            for i, job in enumerate(jobs):
                values.append(dict(group.set_job(job, i)))
                group.set_output_dir(str(tmp_path / f"run {i}" if i == 5 else tmp_path / f"run{i}"))
                values[-1] = dict(group.values)
                mine.append(OmegaConf.to_container(group.config, resolve=False))
                tasks.append(OmegaConf.to_container(group.task_config(), resolve=False))
                if i == 0:
                    template = RecordTemplate(group.task_config(), view, values[0])
        assert template.ok
        assert template.render_all(values) is None  # a space in the last job's directory: each job's own to_yaml
        rendered = template.render_all(values[:5])
        for i, job in enumerate(jobs):
            composed = loader.load_sweep_config(master, job)
            composed.hydra.job.id = composed.hydra.job.num = i
            task, hydra_cfg = _as_run_job(composed, values[i]["hydra.runtime.output_dir"])
            assert mine[i] == OmegaConf.to_container(composed, resolve=False), i
            assert tasks[i] == OmegaConf.to_container(task, resolve=False), i  # what the job's task receives
            if i < 5:
                assert rendered[i] == job_yaml(task, hydra_cfg, composed.hydra.overrides.task), i
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ([], None),
        (["monitor.sharpness=5"], "monitor.sharpness=5 (the sharpness monitor does not run on batched copies)"),
        (["logger=csv"], "logger=csv (batched copies log to TensorBoard only)"),
        (["trainer.gradient_clip_val=1"], "trainer.gradient_clip_val=1.0"),
        (
            ["+logger.tensorboard.prefix=run"],
            "logger.tensorboard.prefix=run (batched copies take the preset's settings)",
        ),
        (
            ["logger.tensorboard.default_hp_metric=true"],
            "logger.tensorboard.default_hp_metric=True (batched copies take the preset's settings)",
        ),
        (["logger.tensorboard.flush_every_s=5"], None),
    ],
)
def test_why_not_batched_names_the_key_a_copy_does_not_support(overrides, why):
    """The phrase the launcher's one line gives for a job that runs alone: the key and its value."""
    from backprop_lab.batched.groups import why_not_batched

    cfg = compose_config("model=sigmoid", *overrides)
    assert why_not_batched(cfg) == why
    if overrides == ["monitor.sharpness=5"]:  # the sweep's check refuses nothing: the job runs as a separate run
        validate(cfg)


def test_the_batched_sweeper_chooses_the_batched_launcher_and_refuses_what_hydra_refuses():
    """hydra/sweeper=batched: the batched launcher; a batch with a value Hydra cannot merge is refused as Hydra's
    own validation (composing every job) refuses it, with one composition per group."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from hydra.plugins.sweeper import Sweeper
    from hydra.types import HydraContext

    import hydra_plugins.backprop_lab_batched.batched_sweeper as module
    from backprop_lab.sweep import job_overrides

    try:
        master, loader = _hydra_configs()
        config = compose("train", overrides=["hydra/sweeper=batched"], return_hydra_config=True)
        assert config.hydra.launcher._target_.endswith(".BatchedLauncher")
        assert config.hydra.sweeper._target_ == f"{module.__name__}.BatchedSweeper"
        sweeper = module.BatchedSweeper()
        sweeper.config, sweeper.hydra_context = master, HydraContext(config_loader=loader, callbacks=None)
        good = job_overrides(master, loader, ["model=sigmoid", "optim.lr=0.1,1,2", "seed=0,3"])
        assert good == [
            ["model=sigmoid", f"optim.lr={lr}", f"seed={seed}"] for lr in ("0.1", "1", "2") for seed in (0, 3)
        ]
        sweeper.validate_batch_is_legal(good)
        for bad in (["optim.lr=0.1", "optim.lr=abc"], ["optim.lr=0.1", "optim.lr=null"]):
            batch = [[o] for o in bad]
            errors = []
            for validate in (Sweeper.validate_batch_is_legal, module.BatchedSweeper.validate_batch_is_legal):
                with pytest.raises(ConfigCompositionException) as error:
                    validate(sweeper, batch)
                errors.append(str(error.value))
            assert errors[0] == errors[1] == f"Error merging override {bad[1]}"
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(["optim.lr=0.1,1", "optim.lr=3"])
        assert [o.input_line for o in parsed] == ["optim.lr=0.1,1", "optim.lr=3"]
        assert job_overrides(master, loader, ["optim.lr=0.1,1", "seed=1", "optim.lr=3"]) == [["optim.lr=3", "seed=1"]]
    finally:
        GlobalHydra.instance().clear()


def test_stability_edge_draws_the_linear_bound_and_marks_diverged_runs():
    from backprop_lab.batched.edge import edge_rows, stability_edge_figure

    summaries = [
        (["model=linear", "optim.lr=0.1"], {"status": "converged", "final_loss": 1e-9}),
        (["model=linear", "optim.lr=0.01"], {"status": "finished", "final_loss": 0.5}),
        (["model=linear", "optim.lr=0.3"], {"status": "diverged", "final_loss": math.inf}),
        (["model=linear", "optim.lr=0.01", "optim.momentum=0.5"], {"status": "finished", "final_loss": 0.2}),
    ]
    jobs = [(compose_config(*overrides), summary, overrides) for overrides, summary in summaries]
    rows = edge_rows(jobs)
    assert [r["bound"] for r in rows] == [0.25, 0.25, 0.25, None]  # 1/x² at x = 2; none with momentum
    assert {r["curve"] for r in rows} == {"model=linear", "model=linear optim.momentum=0.5"}
    fig = stability_edge_figure(rows)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["η = 1/x² = 0.25"].get_xdata()) == [0.25, 0.25]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in crosses] == [[0.3]]
    assert list(lines["model=linear"].get_xdata()) == [0.01, 0.1]  # finite final losses, by η


@pytest.mark.parametrize("model", ["linear", "sigmoid", "relu"])
def test_sharpness_at_the_start_is_the_largest_eigenvalue_of_the_loss_hessian(model):
    """λ_max through the hand-written Functions against stock PyTorch's Hessian of the same loss in float64."""
    from backprop_lab.batched.program import sharpness_at_start, stability_bound

    cfg = compose_config(f"model={model}")
    x, y = float(cfg.data.x), float(cfg.data.y)
    act = {"linear": None, "sigmoid": torch.sigmoid, "relu": torch.relu}[model]

    def loss(w):
        return (w[0] * x - y) ** 2 if act is None else (w[1] * act(w[0] * x) - y) ** 2

    names = ("w",) if model == "linear" else ("w1", "w2")
    w0 = torch.tensor([float(cfg.model[n]) for n in names], dtype=torch.float64)
    want = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, w0)).max())
    assert sharpness_at_start(cfg) == pytest.approx(want, rel=1e-12)
    bound, label = stability_bound(cfg)
    if model == "linear":  # λ_max = 2x² = 8: 2/λ_max is the exact bound 1/x² = 0.25
        assert (bound, label) == (0.25, "η = 1/x²") and want == pytest.approx(8.0)
    else:
        assert bound == pytest.approx(2 / want) and "λ_max" in label
    assert stability_bound(compose_config(f"model={model}", "optim.momentum=0.9")) is None


# --- each copy against its separate run, in one process --------------------------------------------------


def _tensors(log_dir: Path) -> tuple[dict[str, dict[int, np.ndarray]], dict[str, dict]]:
    """({tag: {step: value}} of every tensor summary but the HParams record's, {tag: the Backprop tab's layout})
    of a run, read as TensorBoard reads it."""
    from tensorboard.util import tensor_util

    acc = event_accumulator(log_dir)
    tags = [t for t in acc.Tags()["tensors"] if not t.startswith("_hparams_/")]
    values = {t: {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(t)} for t in tags}
    layouts = {t: json.loads(acc.SummaryMetadata(t).plugin_data.content) for t in tags if t.startswith("backprop/")}
    return values, layouts


def _compare_tensors(run: Path, ref: Path, name: str, values: bool = True) -> None:
    """The Backprop tab's rows (rtol 1e-5, NaN where the reference has NaN) and layout, and every text (the config,
    the replay, the diagnoses) of ``run`` against ``ref``: the same tags at the same steps."""
    (got, got_layouts), (want, want_layouts) = _tensors(run), _tensors(ref)
    assert sorted(got) == sorted(want), name
    assert got_layouts == want_layouts, name
    for tag in want:
        assert sorted(got[tag]) == sorted(want[tag]), (name, tag)
        for step, value in want[tag].items():
            if value.dtype.kind == "f":
                if values:
                    np.testing.assert_allclose(got[tag][step], value, rtol=1e-5, err_msg=f"{name} {tag} {step}")
            else:
                assert got[tag][step].tolist() == value.tolist(), (name, tag, step)


def _hparams_record(run: Path) -> tuple:
    """A run's HParams record as TensorBoard's hparams plugin reads it (experiment, session start and end, the
    start and end times set to 0), the steps it is at, and the text of its ``hparams.yaml``."""
    from tensorboard.plugins.hparams import metadata

    acc = event_accumulator(run)
    tags = [t for t in acc.Tags()["tensors"] if t.startswith("_hparams_/")]
    content = {t: acc.SummaryMetadata(t).plugin_data.content for t in tags}
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    start.start_time_secs, end.end_time_secs = 0, 0
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    steps = {t: [e.step for e in acc.Tensors(t)] for t in tags}
    return experiment, start, end, steps, (run / "hparams.yaml").read_text()


def _same_scalars(
    run: Path, ref: Path, name: str, values: bool = True, resumed: tuple[dict, int] | None = None
) -> None:
    """Every scalar tag of ``run`` against ``ref`` (read as TensorBoard reads them): the same tags at the same
    steps and, with ``values``, the same values to rtol 1e-5. ``resumed``: (``run``'s scalars before its resume,
    the step it resumed at), for :func:`as_resumed`."""
    got, want = read_scalars(run), read_scalars(ref)
    if resumed is not None:
        want = as_resumed(want, *resumed)
    assert sorted(got) == sorted(want), name
    for tag in want:
        assert sorted(got[tag]) == sorted(want[tag]), (name, tag)  # the same steps
        if values:
            steps = sorted(want[tag])
            np.testing.assert_allclose(
                [got[tag][s] for s in steps], [want[tag][s] for s in steps], rtol=1e-5, err_msg=f"{name} {tag}"
            )


def _same_tab_rows(run: Path, ref: Path, name: str, tag: str) -> None:
    """The Backprop tab's layout and its rows under ``tag`` (``backprop/graph`` or ``backprop/layers``) of
    ``run`` against ``ref``: the same steps, the same values to rtol 1e-5."""
    (got, got_layout), (want, want_layout) = _tensors(run), _tensors(ref)
    assert got_layout == want_layout, name
    assert sorted(got[tag]) == sorted(want[tag]), name
    for step, row in want[tag].items():
        np.testing.assert_allclose(got[tag][step], row, rtol=1e-5, err_msg=f"{name} {step}")


def _compare_runs(run: Path, ref: Path, name: str, chaotic: bool = False) -> None:
    """Every scalar tag and every tensor summary of ``run`` against ``ref``: the same steps, the same values."""
    _same_scalars(run, ref, name, values=not chaotic)
    _compare_tensors(run, ref, name, values=not chaotic)
    if not chaotic:  # the HParams tab's record (final loss among its values) and hparams.yaml
        assert _hparams_record(run) == _hparams_record(ref), name


def _group_stopped_by_sigterm(tmp_path: Path, shared: tuple[str, ...], jobs: list[list[str]], at: int):
    """The ``jobs`` (with the ``shared`` overrides) trained as one group that a real SIGTERM stops in update ``at``;
    every copy ends ``interrupted``. Returns (the copies' configs, their run dirs, their names)."""
    from backprop_lab.batched.program import train_group

    cfgs = [compose_config("trainer.accelerator=cpu", QUIET, *shared, *job) for job in jobs]
    names = [",".join(job) for job in jobs]
    dirs = [tmp_path / "batched" / n for n in names]
    for cfg, d in zip(cfgs, dirs):
        validate(cfg)
        d.mkdir(parents=True)
    results, signum, _ = train_group(cfgs, dirs, jobs, callbacks=[_SignalAt(at, signal.SIGTERM)])
    assert signum == signal.SIGTERM and {r.status for r in results} == {"interrupted"}
    return cfgs, dirs, names


def _separate_and_batched(tmp_path: Path, model: str, jobs: list[list[str]], callbacks=(), ref_root=None):
    """Each job of ``jobs`` (overrides of batchable keys) trained alone by train() and as a copy of one
    train_group program; returns (the copies' run dirs, the separate runs' dirs, the group's results).
    ``ref_root``: where the separate runs go (default ``tmp_path / "ref"``); a job already run there is not
    run again."""
    from backprop_lab.batched.program import train_group
    from backprop_lab.summary import write_summary
    from backprop_lab.train import train

    cfgs = [compose_config("trainer.accelerator=cpu", QUIET, f"model={model}", *job) for job in jobs]
    names = [",".join([f"model={model}", *job]) if ref_root else ",".join(job) for job in jobs]
    ref_root = ref_root or tmp_path / "ref"
    refs, dirs = [ref_root / n for n in names], [tmp_path / "batched" / n for n in names]
    for cfg, ref in zip(cfgs, refs):
        validate(cfg)
        if (ref / "summary.json").exists():
            continue
        with contextlib.suppress(SystemExit):  # a signalled separate run ends the process with the shell's status
            train(cfg, run_dir=ref, callbacks=list(callbacks))
    for d in dirs:
        d.mkdir(parents=True)
    results, _, _ = train_group(cfgs, dirs, jobs, callbacks=list(callbacks))
    for d, result, job in zip(dirs, results, jobs):  # as the launcher writes it
        write_summary(d, {"overrides": job, **result.to_dict()})
    return dirs, refs, results


COPY_CASES = {
    # ReLU: dying at step 4 (η = 0.1), alive (η = 0.01, with weight decay), dead from the start (w1 = −0.5), η = 1
    "relu": [["optim.lr=0.1"], ["optim.lr=0.01", "optim.weight_decay=0.01"], ["optim.lr=0.1", "model.w1=-0.5"],
             ["optim.lr=1", "optim.momentum=0.5"]],
    # sigmoid: converged (η = 1 at step 10, η = 0.1), finished slowly, saturated (η = 100)
    "sigmoid": [["optim.lr=1"], ["optim.lr=0.1"], ["optim.lr=0.001"], ["optim.lr=100"]],
    # linear (stable iff η < 0.25): converged, finished above the start, diverged at steps 23 and 10
    "linear": [["optim.lr=0.1"], ["optim.lr=0.26"], ["optim.lr=1"], ["optim.lr=10", "optim.momentum=0.5"]],
}  # fmt: skip


def _compare_copies(dirs: list[Path], refs: list[Path]) -> None:
    """Each copy's run against its separate run: every tag and text (:func:`_compare_runs`) and summary.json's
    status, steps, diverged_at, dead-ReLU fields and final loss."""
    for run, ref in zip(dirs, refs):
        _compare_runs(run, ref, run.name)
        summary, want = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
        for key in ("status", "steps", "diverged_at", "dead_since", "final_dead_fraction"):
            assert summary[key] == want[key], (run.name, key)
        got_loss, want_loss = float(summary["final_loss"]), float(want["final_loss"])  # "inf" for a diverged run
        assert got_loss == want_loss or math.isclose(got_loss, want_loss, rel_tol=1e-5), run.name


@pytest.mark.parametrize("model", sorted(COPY_CASES))
def test_each_copy_writes_every_tag_its_separate_run_writes(tmp_path, model):
    """Every scalar (the dead-ReLU monitor's too), the Backprop tab's rows and layout, the replay and diagnoses
    texts, and summary.json's numbers of each copy equal its separate run's."""
    dirs, refs, results = _separate_and_batched(tmp_path, model, COPY_CASES[model])
    _compare_copies(dirs, refs)
    statuses = {r.status for r in results}
    assert statuses == {"relu": {"finished"}, "sigmoid": {"converged", "finished"},
                        "linear": {"converged", "finished", "diverged"}}[model]  # fmt: skip
    if model == "relu":  # the dying copy: dead since step 4, diagnosed, its probe says so too
        assert results[0].dead_since == {"h": 4} and results[0].final_dead_fraction == 1.0
        probe = read_scalars(dirs[0])["relu/probe_dead_fraction/h"]
        assert probe[0] == 0.0 and probe[5] == 1.0 and probe[200] == 1.0  # step 5: right after the update of step 4
        texts, _ = _tensors(dirs[0])
        assert "dead since step 4" in texts["diagnoses/text_summary"][200].item().decode()


# η of each net and how its separate run ends (trainer.max_steps = 200; at 12 the slow ones finish instead)
GROUP_LRS = {
    "sigmoid": ["1", "0.5", "0.1", "100"],  # converged at steps 10, 22, 118; finished (saturated)
    "linear": ["0.1", "0.26", "1", "10"],  # converged at step 8; finished above its start; diverged at 23, 10
}


@st.composite
def _lr_groups(draw):
    """A net, 2 to 4 learning rates from its list (repeats: copies ending at the same step) and max_steps."""
    model = draw(st.sampled_from(sorted(GROUP_LRS)))
    lrs = draw(st.lists(st.sampled_from(GROUP_LRS[model]), min_size=2, max_size=4))
    return model, tuple(lrs), draw(st.sampled_from([12, 200]))


@settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_lr_groups())
@example(case=("sigmoid", ("0.1", "1"), 200))  # the last copy running converges: its final pass steps no copy
@example(case=("sigmoid", ("1", "1", "1"), 200))  # every copy converges at the same step
@example(case=("linear", ("1", "1"), 200))  # every copy diverges at the same step
@example(case=("linear", ("10", "0.1", "10"), 200))  # two diverge together, the other goes on
@example(case=("sigmoid", ("0.5", "0.1", "100"), 12))  # all stop together at max_steps
def test_every_copy_of_a_drawn_group_equals_its_separate_run(tmp_path_factory, case):
    """Groups of learning rates, copies ending at the same step (converged, diverged, at max_steps) or apart:
    train_group ends, and every copy's tags, texts and summary equal its separate run's. A copy is told apart
    from a repeat of its η by its seed (the post's nets and example do not draw on it)."""
    model, lrs, max_steps = case
    jobs = [[f"optim.lr={lr}", f"seed={k}", f"trainer.max_steps={max_steps}"] for k, lr in enumerate(lrs)]
    refs_root = tmp_path_factory.getbasetemp() / "separate_runs"  # shared by the examples: each job runs once
    dirs, refs, _ = _separate_and_batched(tmp_path_factory.mktemp("group"), model, jobs, ref_root=refs_root)
    _compare_copies(dirs, refs)


def _plugin_get(logdir: Path, route: str, **query) -> dict:
    """The Backprop tab's route ``route`` (``/graph``, ``/series``, ``/runs``) over ``logdir``, answered in this
    process by the plugin TensorBoard loads, through TensorBoard's own data provider."""
    import urllib.parse

    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    from backprop_lab.tensorboard_plugin.plugin import DEFAULT_SAMPLES, PLUGIN_NAME, BackpropPlugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={PLUGIN_NAME: DEFAULT_SAMPLES})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugin = BackpropPlugin(base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer))
    response = Client(plugin.get_plugin_apps()[route]).get("/?" + urllib.parse.urlencode(query))
    assert response.status_code == 200, response.get_data(as_text=True)
    return json.loads(response.get_data(as_text=True))


def test_the_backprop_tab_shows_a_copy_as_its_separate_run(tmp_path):
    """The tab's /graph at every step worth a look and its /series, for the copies of a ReLU group (one dying at
    step 4) and for their separate runs: the same JSON, diagnoses included."""
    dirs, refs, _ = _separate_and_batched(tmp_path, "relu", [["optim.lr=0.1"], ["optim.lr=1", "optim.momentum=0.5"]])
    runs = {r["run"] for r in _plugin_get(tmp_path, "/runs")["runs"]}
    assert runs == {f"{where}/{d.name}" for where in ("batched", "ref") for d in dirs}
    for run, ref in zip(dirs, refs):
        for step in (0, 3, 4, 5, 199, 200):
            got = _plugin_get(tmp_path, "/graph", run=f"batched/{run.name}", step=step)
            want = _plugin_get(tmp_path, "/graph", run=f"ref/{ref.name}", step=step)
            assert got.pop("run") == f"batched/{run.name}" and want.pop("run") == f"ref/{ref.name}"
            assert got == want, (run.name, step)
        got = _plugin_get(tmp_path, "/series", run=f"batched/{run.name}")
        want = _plugin_get(tmp_path, "/series", run=f"ref/{ref.name}")
        got.pop("run", None), want.pop("run", None)
        assert got == want
    dying = _plugin_get(tmp_path, "/graph", run=f"batched/{dirs[0].name}", step=4)
    assert [d["kind"] for d in dying["diagnoses"]] == ["dead_unit"]


# --- whole sweeps against the basic launcher -------------------------------------------------------------


def _runs(sweep: Path) -> dict[str, Path]:
    return {p.parent.name: p.parent for p in sweep.glob("*/summary.json")}


def _csv(path: Path) -> dict[str, dict]:
    with path.open() as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def _closing(run: Path) -> list[str]:
    """What the run's closing lines in its train.log say after its first (the wall time differs): the diagnoses
    and the Backprop tab's address (not the log directory, whose sweep differs, nor the Time Series link)."""
    lines = [
        line.split("] - ", 1)[1] for line in (run / "train.log").read_text().splitlines() if "[backprop_lab]" in line
    ]
    start = max(i for i, line in enumerate(lines) if line.startswith("run "))
    return [line for line in lines[start + 1 :] if not line.startswith(("TensorBoard logs:", "and the loss"))]


def _compare_sweeps(
    basic: Path, batched: Path, chaotic: set[str] = frozenset(), missing: set[str] = frozenset()
) -> None:
    """Every run of ``batched`` against the run of the same name in ``basic``: the .hydra record, every scalar tag
    at every step (rtol 1e-5; NaN and inf where the reference has them), summary.json and summary.csv.
    ``missing``: the tags a batched copy does not log (docs/sweeps.md lists them), exactly those."""
    runs, ref_runs = _runs(batched), _runs(basic)
    assert sorted(runs) == sorted(ref_runs)
    for name, run in runs.items():
        ref = ref_runs[name]
        for record in ("config.yaml", "overrides.yaml"):
            assert (run / ".hydra" / record).read_text() == (ref / ".hydra" / record).read_text(), (name, record)
        got, want = read_scalars(run), read_scalars(ref)
        assert set(want) - set(got) == set(missing) and set(got) <= set(want), name
        want = {tag: steps for tag, steps in want.items() if tag not in missing}
        for tag in want:
            assert sorted(got[tag]) == sorted(want[tag]), (name, tag)  # the same steps
            if name in chaotic:
                continue
            steps = sorted(want[tag])
            np.testing.assert_allclose(
                [got[tag][s] for s in steps], [want[tag][s] for s in steps], rtol=1e-5, err_msg=f"{name} {tag}"
            )
        if name not in chaotic:
            assert _hparams_record(run) == _hparams_record(ref), name
        if not missing:  # the Backprop tab's rows, the replay and diagnoses texts, the closing lines
            _compare_tensors(run, ref, name, values=name not in chaotic)
            if name not in chaotic:
                assert _closing(run) == _closing(ref), name
        summary, ref_summary = (json.loads((r / "summary.json").read_text()) for r in (run, ref))
        for key in ("overrides", "status", "steps", "diverged_at", "log_dir"):
            value = summary[key] if key != "log_dir" else Path(summary[key]).name
            assert value == (ref_summary[key] if key != "log_dir" else Path(ref_summary[key]).name), (name, key)
        if name not in chaotic:
            for key in ("final_loss", "best_loss"):
                assert math.isclose(float(summary[key]), float(ref_summary[key]), rel_tol=1e-5), (name, key)
    rows, ref_rows = _csv(batched / "summary.csv"), _csv(basic / "summary.csv")
    assert sorted(rows) == sorted(ref_rows)
    skip = {"wall_time_s", "final_loss", "best_loss", *(["final_dead_fraction"] if missing else [])}
    for name, row in rows.items():
        assert {k: v for k, v in row.items() if k not in skip} == {
            k: v for k, v in ref_rows[name].items() if k not in skip
        }


def _sweep(tmp_path: Path, name: str, *args: str) -> Path:
    result = run_cli("-m", *args, QUIET, f"hydra.sweep.dir={name}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name


SIGMOID_LRS = ",".join(f"{v:.4g}" for v in np.logspace(-3, 2, 16))  # 0.001 … 100


@pytest.mark.slow
def test_batched_sigmoid_lr_sweep_writes_the_basic_launchers_runs(tmp_path):
    """16 values of η from 0.001 to 100 on the post's sigmoid net: one program, 16 runs equal to the basic
    launcher's (all of them: no copy of this sweep is chaotic, and on this machine they agree bit for bit)."""
    basic = _sweep(tmp_path, "basic", "model=sigmoid", f"optim.lr={SIGMOID_LRS}")
    batched = _sweep(tmp_path, "batched", "hydra/launcher=batched", "model=sigmoid", f"optim.lr={SIGMOID_LRS}")
    _compare_sweeps(basic, batched)
    assert len(_runs(batched)) == 16
    statuses = {r["status"] for r in _csv(batched / "summary.csv").values()}
    assert statuses == {"converged", "finished"}
    assert (batched / "sweep_summary").is_dir()  # the sweep's picture, from the summaries
    for run in _runs(batched).values():
        assert "run " in (run / "train.log").read_text()  # its closing lines


@pytest.mark.slow
def test_a_64_value_batched_sigmoid_sweep_writes_64_runs_each_equal_to_its_separate_run(tmp_path):
    """The issue's sweep: 64 values of η log-spaced from 0.001 to 100 through ``-m hydra/sweeper=batched``: 64 run
    directories, the table's summary.csv and the stability edge; each run's every scalar tag and tensor equal
    to the same job trained alone by ``train()`` (what the basic launcher's job runs) to rtol 1e-5. In float64:
    in float32 a copy's σ can round one ulp away from its separate run's (torch's vectorized kernel over the K
    copies against the scalar one over one value), and where a weight crosses zero (η ≈ 0.009, step 125) the
    update ratio |Δw|/|w| turns that into 3e-5 (docs/sweeps.md)."""
    from backprop_lab.train import train

    lrs = [f"{v:.6g}" for v in np.logspace(-3, 2, 64)]
    f64 = "trainer.precision=64-true"
    batched = _sweep(tmp_path, "batched", "hydra/sweeper=batched", "model=sigmoid", f64, f"optim.lr={','.join(lrs)}")
    runs, chaotic_lrs = _runs(batched), []
    assert len(runs) == 64 and len(_csv(batched / "summary.csv")) == 64
    assert (batched / "stability_edge.png").is_file()
    for lr in lrs:
        run = runs[f"model=sigmoid,optim.lr={lr},{f64}"]
        ref = tmp_path / "ref" / lr
        train(compose_config(QUIET, "model=sigmoid", f64, f"optim.lr={lr}"), run_dir=ref)  # as the CLI composes it
        chaotic = _sigmoid_sweep_is_chaotic(float(lr))
        _same_scalars(run, ref, lr, values=not chaotic)  # the same tags at the same steps, chaotic or not
        if not chaotic:  # a chaotic copy's texts (its diagnoses) follow its own trajectory
            _compare_tensors(run, ref, lr)
        assert (
            json.loads((run / "summary.json").read_text())["status"]
            == json.loads((ref / "summary.json").read_text())["status"]
        )
        if chaotic:
            chaotic_lrs.append(float(lr))
    assert 0 < len(chaotic_lrs) < 8 and min(chaotic_lrs) > 2, chaotic_lrs  # a few, all at a large η


@pytest.mark.slow
def test_batched_linear_sweep_with_momentum_freezes_diverging_copies_as_separate_runs_stop(tmp_path):
    """η × momentum on the linear net (stable iff η < 0.25 without momentum): converged, finished and diverged
    copies in one program, each stopping at the step its separate run stops."""
    args = ("model=linear", "optim.lr=0.01,0.1,0.24,0.26,1,10", "optim.momentum=0,0.5")
    basic = _sweep(tmp_path, "basic", *args)
    batched = _sweep(tmp_path, "batched", "hydra/launcher=batched", *args)
    _compare_sweeps(basic, batched)
    # the stability edge: without momentum, exactly the copies with η > 1/x² = 0.25 end above the starting
    # loss of 16 (at η = 0.26 the error grows 1.08× a step: 200 steps stay finite in float32; above, inf)
    rows = _csv(batched / "summary.csv")
    plain = {float(r["optim.lr"]): float(r["final_loss"]) for r in rows.values() if float(r["optim.momentum"]) == 0}
    assert {lr for lr, loss in plain.items() if loss > 16} == {lr for lr in plain if lr > 0.25}
    assert (batched / "stability_edge.png").is_file()
    assert event_accumulator(batched / "stability_edge").Tags()["images"] == ["sweep/stability_edge"]
    statuses = {r["status"] for r in _csv(batched / "summary.csv").values()}
    # "stopped": below tol at one step, above it at the final pass (momentum overshoots), as its separate run
    assert statuses == {"converged", "finished", "diverged", "stopped"}


@pytest.mark.slow
def test_batched_relu_sweep_over_every_other_batchable_key(tmp_path):
    """η × weight decay × seed × initial w1 on the ReLU net (16 jobs, one program; w1 = −0.5 starts dead): every
    tag a separate run logs, the dead-ReLU monitor's and the Backprop tab's too, equal."""
    args = ("model=relu", "optim.lr=0.1,1", "optim.weight_decay=0,0.01", "seed=0,1", "model.w1=0.5,-0.5")
    basic = _sweep(tmp_path, "basic", *args)
    batched = _sweep(tmp_path, "batched", "hydra/launcher=batched", *args)
    _compare_sweeps(basic, batched)
    assert len(_runs(batched)) == 16


@pytest.mark.slow
def test_jobs_that_cannot_be_copies_run_one_at_a_time_and_say_why(tmp_path):
    result = run_cli(
        "-m", "hydra/launcher=batched", "model=linear", "optim.lr=0.01,0.1", "logger=csv", QUIET,
        "hydra.sweep.dir=s", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "run one at a time: logger=csv (batched copies log to TensorBoard only) is not batched" in out
    assert len(_runs(tmp_path / "s")) == 2
    for run in _runs(tmp_path / "s").values():
        assert (run / "metrics.csv").is_file()


RECORDER = """
import json
from pathlib import Path

from hydra.experimental.callback import Callback


class Recorder(Callback):
    def _write(self, config, row):
        with open(Path(config.hydra.sweep.dir).parent / (Path(config.hydra.sweep.dir).name + ".jsonl"), "a") as f:
            f.write(json.dumps(row) + "\\n")

    def on_job_start(self, config, **kwargs):
        self._write(config, {"hook": "start", "num": config.hydra.job.num, "dir": config.hydra.runtime.output_dir,
                             "lr": config.optim.lr, "task": list(config.hydra.overrides.task)})

    def on_job_end(self, config, job_return, **kwargs):
        self._write(config, {"hook": "end", "num": config.hydra.job.num, "dir": config.hydra.runtime.output_dir,
                             "return_dir": job_return.hydra_cfg.hydra.runtime.output_dir,
                             "return_num": job_return.hydra_cfg.hydra.job.num, "lr": job_return.cfg.optim.lr,
                             "overrides": job_return.overrides, "value": job_return.return_value,
                             "status": job_return.status.name})
"""


@pytest.mark.slow
def test_hydra_callbacks_get_each_copys_config_and_return_as_the_basic_launcher_gives_them(tmp_path):
    """A Hydra callback with on_job_start and on_job_end: each copy's whole config and its JobReturn (its Hydra
    config made when read) as the basic launcher's jobs have them."""
    (tmp_path / "job_recorder.py").write_text(RECORDER)
    hooks = {}
    for name, launcher in (("basic", ()), ("batched", ("hydra/sweeper=batched",))):
        result = run_cli(
            "-m", *launcher, "model=sigmoid", "optim.lr=0.1,1,10", "+hydra.callbacks.rec._target_=job_recorder.Recorder",
            QUIET, f"hydra.sweep.dir={name}", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rows = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        for row in rows:
            for key in ("dir", "return_dir"):
                if key in row:
                    row[key] = str(Path(row[key]).relative_to(tmp_path / name))
        hooks[name] = sorted(rows, key=lambda r: (r["hook"], r["num"]))
    assert hooks["batched"] == hooks["basic"]
    assert [r["hook"] for r in hooks["basic"]] == ["end"] * 3 + ["start"] * 3


@pytest.mark.slow
@pytest.mark.parametrize("values", ["0.1,-1", "0.1,abc"])
def test_a_bad_value_in_a_batched_sweep_is_refused_as_the_basic_launcher_refuses_it(tmp_path, values):
    """The second job's value (a derived config, not composed) fails with the basic launcher's one line."""
    refusals = []
    for name, launcher in (
        ("basic", ()),
        ("batched", ("hydra/launcher=batched",)),
        ("sweeper", ("hydra/sweeper=batched",)),
    ):
        result = run_cli(
            "-m", *launcher, "model=sigmoid", f"optim.lr={values}", f"hydra.sweep.dir={name}", cwd=tmp_path
        )
        assert result.returncode == 2, result.stderr[-2000:]
        refusals.append(result.stderr.strip().splitlines())
        assert not list((tmp_path / name).glob("*/summary.json"))  # nothing trained
    assert refusals[0] == refusals[1] == refusals[2] and len(refusals[1]) == 1 and "job #1" in refusals[1][0]


class _SignalAt(Callback):
    """Sends this process ``signum`` at the end of update ``step`` (SIGINT: as Ctrl-C during that update)."""

    def __init__(self, step: int, signum: int = signal.SIGINT):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step + 1:
            os.kill(os.getpid(), self.signum)


def test_a_signal_stops_a_batched_program_as_it_stops_each_separate_run(tmp_path):
    """Ctrl-C in update 12: the copies still running end interrupted after that update, with the logs and summary
    their separate runs (train(), the same signal at the same update) end with; a copy converged before keeps
    its status."""
    from backprop_lab.batched.program import train_group
    from backprop_lab.train import train

    lrs = ["0.01", "0.5", "1.0"]  # η = 1.0 converges in 10 steps on the sigmoid net, the others go on
    cfgs = [compose_config("trainer.accelerator=cpu", "model=sigmoid", f"optim.lr={lr}") for lr in lrs]
    for cfg in cfgs:
        validate(cfg)
    refs = []
    for lr, cfg in zip(lrs, cfgs):
        try:
            train(cfg, run_dir=tmp_path / "ref" / lr, callbacks=[_SignalAt(12)])
        except SystemExit as stop:  # the separate run, stopped, ends the process with the shell's status
            assert stop.code == 128 + signal.SIGINT
        refs.append(json.loads((tmp_path / "ref" / lr / "summary.json").read_text()))
    dirs = [tmp_path / "batched" / lr for lr in lrs]
    for d in dirs:
        d.mkdir(parents=True)
    results, signum, _ = train_group(cfgs, dirs, [[f"optim.lr={lr}"] for lr in lrs], callbacks=[_SignalAt(12)])
    assert signum == signal.SIGINT
    assert [(r["status"], r["steps"]) for r in refs] == [("interrupted", 13), ("interrupted", 13), ("converged", 10)]
    for lr, result, ref in zip(lrs, results, refs):
        assert (result.status, result.steps) == (ref["status"], ref["steps"]), lr
        assert result.final_loss == ref["final_loss"], lr
        _compare_runs(tmp_path / "batched" / lr, tmp_path / "ref" / lr, lr)  # every tag, the Backprop tab's too


def _training(sweep: Path) -> bool:
    """Whether a copy's event file holds a ``train/loss``: the program has taken a step (its event file appears
    earlier, at start-up, with the config's text)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sweep.glob("*/events.out.tfevents.*.batched"):
        with contextlib.suppress(Exception):  # a record half written: read again on the next look
            if any(v.tag == "train/loss" for e in EventFileLoader(str(path)).Load() for v in e.summary.value):
                return True
    return False


@pytest.mark.slow
def test_an_interrupted_copys_closing_lines_say_how_to_continue_it_as_a_separate_runs_do(tmp_path):
    """Ctrl-C during a batched sweep: each copy's train.log ends with the line a separate run prints last when
    interrupted, ``to continue: backprop-lab <its overrides> resume=<its directory>``, naming its checkpoint."""
    import time

    from backprop_lab.resume import resume_command

    from conftest import start_cli

    args = ["model=sigmoid", "optim.lr=0.001,0.002", "trainer.max_steps=1000000", QUIET]
    proc = start_cli("-m", "hydra/sweeper=batched", *args, "hydra.sweep.dir=sweep", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not _training(tmp_path / "sweep"):  # past the start-up: a copy's event file holds a step's loss
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the program did not start"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    runs = _runs(tmp_path / "sweep")
    assert len(runs) == 2
    for name, run in runs.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "interrupted" and (run / "checkpoints" / "last.ckpt").is_file(), name
        last = (run / "train.log").read_text().splitlines()[-1].split("] - ", 1)[1]
        assert last == f"to continue: {resume_command(summary['overrides'], f'sweep/{name}')}", name
        assert f'resume="sweep/{name}"' in last  # the directory quoted for Hydra (its '=' and ',')


def test_a_copy_of_a_group_stopped_by_sigterm_resumes_alone_as_its_uninterrupted_run(tmp_path):
    """SIGTERM in update 12 of a ReLU group: each copy still running gets its own checkpoints/last.ckpt, which
    resume.py accepts; ``resume=<copy dir>`` continues the copy alone (train()), and every scalar tag of its
    directory (the dead-ReLU monitor's, whose state the checkpoint carries, among them) and the Backprop tab's
    rows equal those of the job trained alone without a stop."""
    from backprop_lab.checks import CHECKPOINT
    from backprop_lab.resume import check_resumable
    from backprop_lab.train import train

    jobs = [["optim.lr=0.1"], ["optim.lr=0.03", "optim.momentum=0.5", "optim.weight_decay=0.01"], ["optim.lr=1"]]
    cfgs, dirs, names = _group_stopped_by_sigterm(tmp_path, ("model=relu",), jobs, at=12)
    for cfg, job, run, name in zip(cfgs, jobs, dirs, names):
        assert (run / CHECKPOINT).is_file()
        resumed = compose_config("trainer.accelerator=cpu", QUIET, "model=relu", *job)
        resumed.resume = str(run)
        validate(resumed)
        assert check_resumable(resumed, run) == 13  # the checkpoint's step: after the update of step 12
        result = train(resumed, run_dir=run)
        ref = tmp_path / "ref" / name
        want = train(cfg, run_dir=ref)
        assert (result.status, result.steps, result.dead_since) == (want.status, want.steps, want.dead_since)
        assert result.final_loss == want.final_loss and result.final_dead_fraction == want.final_dead_fraction
        _same_scalars(run, ref, name)
        _same_tab_rows(run, ref, name, "backprop/graph")


@pytest.mark.slow
def test_the_launch_line_counts_the_jobs_as_they_then_run(tmp_path):
    # two groups of two: the clipped pair cannot be copies (one at a time), the unclipped pair is one program;
    # the count is made after why_not_batched has decided (it counted every group of two or more as batched)
    result = run_cli(
        "-m", "hydra/sweeper=batched", "model=linear", "optim.lr=0.01,0.1", "trainer.gradient_clip_val=0.05,null",
        "trainer.max_steps=2", "monitor.pictures=[]", QUIET, "hydra.sweep.dir=s", cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "Launching 4 jobs locally: 2 as 1 batched program(s), 2 one at a time" in out
    assert "run one at a time: trainer.gradient_clip_val=0.05 is not batched" in out
    assert len(_runs(tmp_path / "s")) == 4
