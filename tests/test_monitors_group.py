"""backprop_lab.monitors.group: the monitors run as one Lightning callback log exactly what they log as separate ones.

What a user sees is compared: every scalar, histogram and Backprop-tab tensor, read back from the event files with
TensorBoard's reader, and what a checkpoint carries.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from backprop_lab.monitors import (
    BackpropViewMonitor,
    DeadReLUMonitor,
    GradientMonitor,
    MonitorGroup,
    StepRecorder,
)
from backprop_lab.monitors.common import find_callback

from conftest import PlainData, PlainModule, event_accumulator, fit


def _parts():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        seq[2].bias[:3] = -50.0  # three units of the second ReLU dead from the start
    data = PlainData(torch.randn(16, 2), torch.randn(16, 1), probe_x=torch.randn(5, 2))
    return PlainModule(seq, lr=0.1), data


def _monitors():
    return [
        GradientMonitor(root="seq", histogram_every_n_steps=3),
        DeadReLUMonitor(root="seq", probe_every_n_steps=3),
        BackpropViewMonitor(root="seq"),
    ]


def _events(log_dir) -> dict:
    """Every tag's (step, value) events, scalars, histograms and tensors, as TensorBoard reads them."""
    acc = event_accumulator(log_dir)
    tags = acc.Tags()
    out = {f"scalar {t}": [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    for t in tags["histograms"]:
        out[f"histogram {t}"] = [
            (e.step, list(e.histogram_value.bucket), e.histogram_value.sum) for e in acc.Histograms(t)
        ]
    for t in tags["tensors"]:
        out[f"tensor {t}"] = [(e.step, e.tensor_proto.SerializeToString()) for e in acc.Tensors(t)]
    return out


@pytest.mark.parametrize(
    "order",
    [
        "recorder first",  # backprop-lab's order: the monitors read the step the recorder took
        "recorder last",  # the monitors drive the recorder from their own hooks
        "no recorder",  # the monitors share one they make
    ],
)
def test_a_group_logs_what_the_separate_callbacks_log(tmp_path, order):
    module, data = _parts()
    alone = {
        "recorder first": [StepRecorder(root="seq"), *_monitors()],
        "recorder last": [*_monitors(), StepRecorder(root="seq")],
        "no recorder": _monitors(),
    }[order]
    fit(tmp_path / "alone", module, data, alone, steps=7)
    module, data = _parts()
    group = MonitorGroup([StepRecorder(root="seq"), *_monitors()])
    trainer = fit(tmp_path / "group", module, data, [group], steps=7)
    expected, got = _events(tmp_path / "alone"), _events(tmp_path / "group")
    assert {"scalar relu/dead_fraction/3", "histogram grads/0.weight", "tensor backprop/layers"} <= set(got)
    assert got == expected
    assert got["scalar relu/dead_fraction/3"][0][1] >= 3 / 8  # the three pushed below zero, at least
    # the members are found where a trainer's callbacks are looked for, and share the group's recorder
    recorder = find_callback(trainer, StepRecorder)
    assert recorder is group.callbacks[0]
    assert all(cb.recorder is recorder for cb in group.callbacks[1:])
    assert find_callback(trainer, DeadReLUMonitor) is group.callbacks[2]


def _trainer(tmp_path, callbacks, steps):
    return L.Trainer(
        max_steps=steps,
        logger=TensorBoardLogger(str(tmp_path), name="", version="", default_hp_metric=False),
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )


@pytest.mark.parametrize("saved_in, resumed_in", [("group", "group"), ("group", "alone"), ("alone", "group")])
def test_checkpoints_keep_each_members_state_under_its_own_key(tmp_path, saved_in, resumed_in):
    def callbacks(kind):
        members = [StepRecorder(root="seq"), *_monitors()]
        return [MonitorGroup(members)] if kind == "group" else members

    module, data = _parts()
    trainer = _trainer(tmp_path / "first", callbacks(saved_in), steps=4)
    trainer.fit(module, datamodule=data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    states = torch.load(path, map_location="cpu", weights_only=True)["callbacks"]
    assert {"StepRecorder", "DeadReLUMonitor", "BackpropViewMonitor"} <= set(states)  # as separate callbacks write them
    saved = find_callback(trainer, StepRecorder).history

    module, data = _parts()
    resumed = _trainer(tmp_path / "second", callbacks(resumed_in), steps=6)
    with pytest.warns(UserWarning, match="Please add the following callbacks") if resumed_in == "group" else _none():
        resumed.fit(module, datamodule=data, ckpt_path=path, weights_only=True)
    recorder = find_callback(resumed, StepRecorder)
    assert [r.step for r in recorder.history] == [r.step for r in saved] + [4, 5, 6]
    assert repr(recorder.history[:5]) == repr(saved)  # the first run's records, number for number (NaN too)
    dead = find_callback(resumed, DeadReLUMonitor)
    assert dead._logged_steps == [0, 1, 2, 3, 4, 5]
    view = find_callback(resumed, BackpropViewMonitor)
    assert list(view.history.steps) == [0, 1, 2, 3, 4, 5, 6]


class _none:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_a_member_and_a_callback_of_the_trainer_with_one_state_key_are_refused(tmp_path):
    with pytest.raises(ValueError, match="share a state_key"):
        MonitorGroup([StepRecorder(), StepRecorder()])
    module, data = _parts()
    with pytest.raises(RuntimeError, match=r"\['DeadReLUMonitor'\] is both a member and a callback"):
        fit(tmp_path, module, data, [MonitorGroup([DeadReLUMonitor(root="seq")]), DeadReLUMonitor(root="seq")], steps=1)


def test_the_group_calls_only_the_hooks_a_member_defines():
    calls = []

    class Counting(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            calls.append(batch_idx)

    group = MonitorGroup([Counting(), L.Callback()])
    assert group._calls["on_train_batch_start"] == [group.callbacks[0].on_train_batch_start]
    assert group._calls["on_train_batch_end"] == []
    group.on_train_batch_start(None, None, None, 7)
    assert calls == [7]


@pytest.mark.parametrize(
    "keys, shown",
    [(["StepRecorder", "DeadReLUMonitor", "BackpropViewMonitor"], False), (["StepRecorder", "Mine"], True)],
)
def test_a_run_silences_lightnings_resume_warning_only_where_it_names_the_groups_members(keys, shown):
    import warnings

    from lightning.pytorch.utilities import rank_zero_warn

    from backprop_lab.train import expected_warnings

    message = (
        "Be aware that when using `ckpt_path`, callbacks used to create the checkpoint need to be provided during "
        f"`Trainer` instantiation. Please add the following callbacks: {keys}."
    )  # Lightning's words (trainer/call.py, _call_callbacks_on_load_checkpoint)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with expected_warnings():
            rank_zero_warn(message)
    assert bool(caught) is shown
