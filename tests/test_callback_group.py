"""CallbackGroup: several callbacks that Lightning dispatches as one, in a real fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from backprop_lab.callback_group import CallbackGroup, find_callback, iter_callbacks


class Recorder(Callback):
    """Appends (its name, hook) to a shared list for the hooks it overrides."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    @property
    def state_key(self) -> str:
        return f"Recorder[{self.name}]"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.calls.append((self.name, "on_train_batch_start", trainer.global_step))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls.append((self.name, "on_before_optimizer_step", trainer.global_step))

    def state_dict(self):
        return {"name": self.name}

    def load_state_dict(self, state_dict):
        self.loaded = state_dict


class OnlyEnd(Callback):
    def __init__(self, calls: list):
        self.calls = calls

    def on_train_end(self, trainer, pl_module):
        self.calls.append(("end", "on_train_end", trainer.global_step))


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.lin(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(callbacks, tmp_path, steps=2):
    data = DataLoader(TensorDataset(torch.ones(4, 1), torch.zeros(4, 1)), batch_size=1)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, accelerator="cpu", callbacks=callbacks, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Tiny(), train_dataloaders=data)
    return trainer


def test_members_get_the_hooks_they_override_in_order(tmp_path):
    calls: list = []
    a, b, end = Recorder("a", calls), Recorder("b", calls), OnlyEnd(calls)
    group = CallbackGroup(a, b, end)
    trainer = _fit([group], tmp_path)
    assert calls == [
        ("a", "on_train_batch_start", 0), ("b", "on_train_batch_start", 0),
        ("a", "on_before_optimizer_step", 0), ("b", "on_before_optimizer_step", 0),
        ("a", "on_train_batch_start", 1), ("b", "on_train_batch_start", 1),
        ("a", "on_before_optimizer_step", 1), ("b", "on_before_optimizer_step", 1),
        ("end", "on_train_end", 2),
    ]  # fmt: skip
    # Only overriding members are called: OnlyEnd is not in the per-step hooks at all.
    assert group._calls["on_train_batch_start"] == [a.on_train_batch_start, b.on_train_batch_start]
    assert group._calls["on_after_backward"] == []
    assert find_callback(trainer, OnlyEnd) is end
    assert list(iter_callbacks(trainer)) == [a, b, end]


def test_state_is_kept_per_member(tmp_path):
    a, b = Recorder("a", []), Recorder("b", [])
    group = CallbackGroup(a, b)
    state = group.state_dict()
    assert state == {"Recorder[a]": {"name": "a"}, "Recorder[b]": {"name": "b"}}
    group.load_state_dict({"Recorder[b]": {"name": "restored"}})
    assert b.loaded == {"name": "restored"} and not hasattr(a, "loaded")
    assert group.state_key == CallbackGroup(Recorder("a", []), Recorder("b", [])).state_key != CallbackGroup(a).state_key


def test_only_callbacks_can_join_a_group():
    with pytest.raises(TypeError, match="CallbackGroup takes Lightning callbacks, got int"):
        CallbackGroup(Recorder("a", []), 3)


@pytest.mark.parametrize("interval, drawn", [(3600.0, [0, 5]), (0.0, [0, 1, 2, 3, 4, 5])])
def test_timed_progress_bar_redraws_by_the_clock_and_at_the_last_step(tmp_path, monkeypatch, interval, drawn):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from backprop_lab.progress import TimedProgressBar

    seen: list[int] = []
    original = TQDMProgressBar.on_train_batch_end

    def record(self, trainer, pl_module, outputs, batch, batch_idx):
        seen.append(batch_idx)
        original(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(TQDMProgressBar, "on_train_batch_end", record)
    data = DataLoader(TensorDataset(torch.ones(6, 1), torch.zeros(6, 1)), batch_size=1)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_model_summary=False, enable_checkpointing=False,
                        accelerator="cpu", callbacks=[TimedProgressBar(min_interval_s=interval)], default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(Tiny(), train_dataloaders=data)
    assert seen == drawn
